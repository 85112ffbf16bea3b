//! The throughput targets (ratios to the bare server, CPU per request, the slow-node
//! tail) judged from a run's results: **pure**.

use super::*;

pub(super) fn find<'a>(setups: &'a [SetupResult], id: &str) -> Option<&'a SetupResult> {
    setups.iter().find(|setup| setup.id == id)
}

pub(super) fn phase_of<'a>(
    setups: &'a [SetupResult],
    id: &str,
    read: bool,
) -> Option<&'a PhaseResult> {
    let setup = find(setups, id)?;
    match read {
        true => setup.read.as_ref(),
        false => setup.write.as_ref(),
    }
}

/// Judges `measured` (a value, and whether its phases were free of errors) with
/// `passes`; a phase with errors fails its target whatever the numbers.
pub(super) fn judge(
    target: &str,
    measured: Option<(f64, bool)>,
    passes: impl Fn(f64) -> bool,
    show: impl Fn(f64) -> String,
) -> TargetCheck {
    match measured {
        Some((value, clean)) => TargetCheck {
            target: target.to_owned(),
            measured: match clean {
                true => show(value),
                false => format!("{} (with errors)", show(value)),
            },
            met: Some(clean && passes(value)),
        },
        None => TargetCheck {
            target: target.to_owned(),
            measured: "not measured".into(),
            met: None,
        },
    }
}

pub(super) fn times(value: f64) -> String {
    format!("{value:.2}×")
}

pub(super) fn micros(value: f64) -> String {
    format!("{value:.1} µs")
}

pub(super) fn clean(phase: &PhaseResult) -> bool {
    phase.load.errors == 0
}

/// `id`'s phase throughput over the bare server's, and whether both were clean.
pub(super) fn ratio_to_bare(setups: &[SetupResult], id: &str, read: bool) -> Option<(f64, bool)> {
    let phase = phase_of(setups, id, read)?;
    let bare = phase_of(setups, "bare", read)?;
    Some((
        phase.requests_per_second / bare.requests_per_second,
        clean(phase) && clean(bare),
    ))
}

/// This run's results against the targets (1 KiB values, 32 connections).
pub fn check_targets(setups: &[SetupResult], slow_aux_delay: Duration) -> Vec<TargetCheck> {
    let cpu = |read: bool| {
        phase_of(setups, "3+2", read).map(|phase| (phase.server_cpu_us_per_request, clean(phase)))
    };
    let slow_p99 = phase_of(setups, "slow-aux", true)
        .zip(phase_of(setups, "3+2", true))
        .and_then(|(slow, healthy)| {
            let ratio = slow.p99_ms()? / healthy.p99_ms()?;
            Some((ratio, clean(slow) && clean(healthy)))
        });
    vec![
        judge(
            "3+2 GET ≥ 0.40× bare GET",
            ratio_to_bare(setups, "3+2", true),
            |ratio| ratio >= 0.40,
            times,
        ),
        judge(
            "3+2 POST ≥ 0.30× bare POST",
            ratio_to_bare(setups, "3+2", false),
            |ratio| ratio >= 0.30,
            times,
        ),
        judge(
            "3+2 server CPU ≤ 25 µs per GET",
            cpu(true),
            |micros| micros <= 25.0,
            micros,
        ),
        judge(
            "3+2 server CPU ≤ 40 µs per POST",
            cpu(false),
            |micros| micros <= 40.0,
            micros,
        ),
        judge(
            "nginx → 3+2 GET ≥ 0.30× bare GET",
            ratio_to_bare(setups, "nginx", true),
            |ratio| ratio >= 0.30,
            times,
        ),
        judge(
            &format!(
                "one aux {} slow: GET p99 ≤ 1.3× healthy 3+2 GET p99",
                HumanDuration(slow_aux_delay)
            ),
            slow_p99,
            |ratio| ratio <= 1.3,
            times,
        ),
    ]
}
