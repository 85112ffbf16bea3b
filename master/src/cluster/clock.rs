//! Clock watch: how far this master's wall clock is from the aux nodes', learned
//! from the health probes it already sends, and whether that is within
//! `--max-clock-skew`.
//!
//! Each probe answer carries the aux node's Unix time. Against the master's clock
//! read just before the probe was sent and just after its answer arrived, the node's
//! offset is its time minus the midpoint, give or take half the round trip. The
//! master's own lead is minus the median of the up nodes' offsets: one aux node with
//! a wrong clock cannot make a good master look skewed, and a master whose clock is
//! wrong sees every node off by the same amount.
//!
//! Skew is judged on what the samples prove: a lead counts as beyond the bound only
//! when it is beyond it by more than the sample's uncertainty, so a slow probe
//! cannot turn a healthy master away. What a master does with the verdict — refuse
//! writes with a 503, say `degraded` on `/health` — is the caller's; the versions
//! it reads move its hybrid clock no further ahead than the same bound
//! (`HybridClock`), and aux nodes refuse versions stamped beyond it in their future.

use serde::Serialize;

/// One probe's view of an aux node's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ClockSample {
    /// The aux node's clock minus this master's, in milliseconds.
    pub(crate) offset_ms: i64,
    /// Half the probe's round trip: the true offset is within this of `offset_ms`.
    pub(crate) uncertainty_ms: u64,
}

impl ClockSample {
    /// The sample from a probe sent at `sent_ms` and answered at `received_ms` (this
    /// master's Unix milliseconds) by a node whose clock read `aux_ms` meanwhile.
    pub(crate) fn from_probe(sent_ms: u64, received_ms: u64, aux_ms: u64) -> Self {
        let received_ms = received_ms.max(sent_ms);
        let round_trip = received_ms - sent_ms;
        let midpoint = sent_ms + round_trip / 2;
        ClockSample {
            offset_ms: clamp_i64(i128::from(aux_ms) - i128::from(midpoint)),
            uncertainty_ms: round_trip.div_ceil(2),
        }
    }

    /// Whether this sample proves the offset is beyond `max_skew_ms` either way.
    pub(crate) fn proves_beyond(&self, max_skew_ms: u64) -> bool {
        self.offset_ms.unsigned_abs() > max_skew_ms.saturating_add(self.uncertainty_ms)
    }
}

/// This master's clock against the aux nodes', as `/cluster` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ClockReport {
    /// How far this master's clock is ahead of the aux nodes' (the median node's),
    /// in milliseconds; negative when behind. `None` before any node answered.
    pub(crate) lead_ms: Option<i64>,
    /// How sure `lead_ms` is (half the round trip of the median node's probe).
    pub(crate) uncertainty_ms: Option<u64>,
    pub(crate) max_skew_ms: u64,
    /// Whether the lead is proven beyond `max_skew_ms`: writes are refused.
    pub(crate) beyond_bound: bool,
}

/// This master's lead over the aux nodes from their latest samples: minus the
/// median offset (the lower median for an even count).
pub(crate) fn master_lead(samples: &[ClockSample], max_skew_ms: u64) -> ClockReport {
    let mut sorted = samples.to_vec();
    sorted.sort_by_key(|sample| sample.offset_ms);
    let median = sorted.get(sorted.len().saturating_sub(1) / 2).copied();
    let lead = median.map(|sample| ClockSample {
        offset_ms: sample.offset_ms.saturating_neg(),
        uncertainty_ms: sample.uncertainty_ms,
    });
    ClockReport {
        lead_ms: lead.map(|lead| lead.offset_ms),
        uncertainty_ms: lead.map(|lead| lead.uncertainty_ms),
        max_skew_ms,
        beyond_bound: lead.is_some_and(|lead| lead.proves_beyond(max_skew_ms)),
    }
}

/// Whether one aux node's clock is off from the median node's by more than the
/// bound (so its TTLs run early or late and it refuses good writers' versions).
pub(crate) fn node_is_off(node: ClockSample, report: &ClockReport) -> bool {
    let Some(lead) = report.lead_ms else {
        return false;
    };
    let from_median = ClockSample {
        offset_ms: node.offset_ms.saturating_add(lead),
        uncertainty_ms: node
            .uncertainty_ms
            .saturating_add(report.uncertainty_ms.unwrap_or(0)),
    };
    from_median.proves_beyond(report.max_skew_ms)
}

fn clamp_i64(value: i128) -> i64 {
    value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(offset_ms: i64, uncertainty_ms: u64) -> ClockSample {
        ClockSample {
            offset_ms,
            uncertainty_ms,
        }
    }

    #[test]
    fn a_probe_gives_the_offset_to_the_midpoint_give_or_take_half_the_round_trip() {
        // (sent, received, aux clock) -> (offset, uncertainty)
        for (sent, received, aux, offset, uncertainty) in [
            (1_000, 1_000, 1_000, 0, 0),
            (1_000, 1_010, 1_005, 0, 5),
            (1_000, 1_010, 31_005, 30_000, 5),
            (31_000, 31_002, 1_001, -30_000, 1),
            (1_000, 1_003, 1_000, -1, 2), // odd round trip: rounded so it covers
            (1_000, 990, 1_000, 0, 0),    // the clock stepped back mid-probe
            (u64::MAX, u64::MAX, 0, i64::MIN, 0),
        ] {
            assert_eq!(
                ClockSample::from_probe(sent, received, aux),
                sample(offset, uncertainty),
                "sent {sent} received {received} aux {aux}"
            );
        }
    }

    #[test]
    fn a_lead_is_beyond_the_bound_only_when_the_samples_prove_it() {
        let bound = 1_000;
        // (offsets of the nodes with their uncertainty) -> (lead, beyond)
        type Case = (&'static [(i64, u64)], Option<i64>, bool);
        let cases: &[Case] = &[
            (&[], None, false),
            (&[(0, 1), (3, 1), (-2, 1)], Some(0), false),
            // This master 30 s fast: every node looks 30 s behind.
            (
                &[(-30_000, 1), (-30_001, 1), (-29_999, 1)],
                Some(30_000),
                true,
            ),
            // 30 s slow.
            (&[(30_000, 1), (30_002, 1)], Some(-30_000), true),
            // One node's clock is off: the median ignores it.
            (
                &[(0, 1), (1, 1), (60_000, 1), (-1, 1), (2, 1)],
                Some(-1),
                false,
            ),
            // Just past the bound, but a slow probe leaves room for doubt.
            (&[(-1_200, 300)], Some(1_200), false),
            (&[(-1_200, 100)], Some(1_200), true),
            (&[(-1_000, 0)], Some(1_000), false),
        ];
        for (offsets, lead, beyond) in cases {
            let samples: Vec<_> = offsets.iter().map(|&(o, u)| sample(o, u)).collect();
            let report = master_lead(&samples, bound);
            assert_eq!(report.lead_ms, *lead, "{offsets:?}");
            assert_eq!(report.beyond_bound, *beyond, "{offsets:?}");
            assert_eq!(report.max_skew_ms, bound);
        }
    }

    #[test]
    fn a_node_is_off_when_it_is_far_from_the_median_not_from_this_master() {
        let fast_master = master_lead(&[sample(-30_000, 1), sample(-30_000, 1)], 1_000);
        assert!(!node_is_off(sample(-30_000, 1), &fast_master));
        assert!(node_is_off(sample(0, 1), &fast_master));
        let good = master_lead(&[sample(0, 1), sample(2, 1)], 1_000);
        assert!(!node_is_off(sample(900, 50), &good));
        assert!(node_is_off(sample(-5_000, 50), &good));
        assert!(!node_is_off(sample(-5_000, 50), &master_lead(&[], 1_000)));
    }
}
