//! The report of `shardcache bench`: Markdown tables, the `## Throughput` section of
//! `BENCHMARKS.md`, JSON and the charts.

use super::*;

pub(super) fn write_outputs(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    let json = args.output.with_extension("json");
    write_file(
        &json,
        &serde_json::to_string_pretty(report).context("serialise the results")?,
    )?;
    println!("raw results written to {}", json.display());
    let svg = args.output.with_extension("svg");
    crate::bench::plot::write_stacked_png(&charts(report), &svg, &args.plot, 1200)?;
    println!(
        "chart written to {} (SVG: {})",
        args.plot.display(),
        svg.display()
    );
    let section = render_section(report, &args.plot);
    print_and_write(
        &format!(
            "# shardcache bench\n\n{}",
            section.replacen(SECTION_HEADING, "", 1).trim_start()
        ),
        &args.output,
    )?;
    write_section(
        &args.benchmarks_md,
        SECTION_HEADING,
        &section,
        Some(SECTION_BEFORE),
    )?;
    println!(
        "written to {} ({SECTION_HEADING})",
        args.benchmarks_md.display()
    );
    Ok(())
}

/// `0.43 ms`, or `≤ 1.02 ms` for a bucket's upper bound.
pub(super) fn millis(value: f64, approximate: bool) -> String {
    let prefix = if approximate { "≤ " } else { "" };
    match value {
        value if value >= 10.0 => format!("{prefix}{value:.1} ms"),
        value => format!("{prefix}{value:.2} ms"),
    }
}

pub(super) fn met_label(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

/// One row of the main table.
pub(super) fn phase_row(
    setup: &SetupResult,
    phase: &PhaseResult,
    bare: Option<&PhaseResult>,
) -> String {
    let latency = |pick: fn(&generators::Latency) -> f64| {
        phase.load.latency.map_or("n/a".into(), |latency| {
            millis(pick(&latency), latency.approximate)
        })
    };
    let versus_bare = bare.map_or("n/a".into(), |bare| {
        format!(
            "{:.2}",
            phase.requests_per_second / bare.requests_per_second
        )
    });
    let errors = match phase.load.error_detail.is_empty() {
        true => phase.load.errors.to_string(),
        false => format!("{} ({})", phase.load.errors, phase.load.error_detail),
    };
    format!(
        "| {} | {} | {:.0} | {versus_bare} | {} | {} | {} | {:.1} | {} | {} {:.0}%{} | {errors} |\n",
        setup.label,
        phase.operation,
        phase.requests_per_second,
        latency(|l| l.p50_ms),
        latency(|l| l.p99_ms),
        latency(|l| l.p999_ms),
        phase.server_cpu_us_per_request,
        cpu_by_kind(phase),
        phase.generator,
        phase.generator_cpu_percent,
        if phase.generator_bound() { " ⚠" } else { "" },
    )
}

/// The server CPU per request by kind of process, `master 20.1 · aux 10.2`, when
/// the set-up has more than one kind.
pub(super) fn cpu_by_kind(phase: &PhaseResult) -> String {
    if phase.server_cpu_us_per_request_by_kind.len() < 2 {
        return "–".into();
    }
    let kinds = phase.server_cpu_us_per_request_by_kind.iter();
    kinds
        .map(|(kind, us)| format!("{kind} {us:.1}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The `## Throughput` section: command, how it was measured, results, targets.
pub fn render_section(report: &Report, plot: &Path) -> String {
    let mut out = format!(
        "{SECTION_HEADING}\n\n\
         command: `{}`\n\n\
         Run on {}, {} cores; {} s per phase, {} connections, wrk with {} thread(s), \
         {} B values, {} keys.\n\n",
        report.command,
        report.date,
        report.cores,
        report.phase_seconds,
        report.concurrency,
        report.wrk_threads,
        report.value_len,
        report.keys
    );
    out.push_str(
        "Each set-up is started fresh as processes of its own; the load generator is a \
         separate process on the same machine (`wrk` with `cli/src/bench/wrk-data-api.lua` \
         for the HTTP set-ups, `redis-benchmark` and `memaslap` for the references). \
         GET reads random preloaded keys; POST (SET) writes random keys. Before and \
         after, sampled keys are read back and compared byte for byte; every response \
         of status 400 or more is an error. **× bare** is throughput over the bare server's for the \
         same request (POST for writes), in this run. **server CPU** is the user + \
         system time of every server process of the set-up (masters, aux nodes, nginx \
         and its workers; not the generator, nor the benchmark's own delay proxy), from \
         `/proc/PID/stat` before and after the phase, per request; **by kind** splits it \
         between masters, aux nodes and nginx (all of a kind summed). **generator CPU** is \
         the generator's own CPU time over its run time, in % of one core: near 100% \
         per thread (⚠) means the generator, not the server, may be the limit.\n\n",
    );
    out.push_str(
        "| set-up | request | req/s | × bare | p50 | p99 | p99.9 | server CPU µs/request | by kind | generator CPU | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let bare = find(&report.setups, "bare");
    let mut skipped = Vec::new();
    for setup in &report.setups {
        if let Some(reason) = &setup.skipped {
            skipped.push(format!("{}: {reason}", setup.label));
            continue;
        }
        if let Some(read) = &setup.read {
            out.push_str(&phase_row(setup, read, bare.and_then(|b| b.read.as_ref())));
        }
        if let Some(write) = &setup.write {
            out.push_str(&phase_row(
                setup,
                write,
                bare.and_then(|b| b.write.as_ref()),
            ));
        }
    }
    out.push_str("\n| target | measured | met? |\n|---|---|---|\n");
    let target_shape = report.value_len == 1024 && report.concurrency == 32;
    for check in &report.targets {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            check.target,
            check.measured,
            met_label(check.met)
        ));
    }
    if !target_shape {
        out.push_str(&format!(
            "\nThe targets are set for 1024 B values and 32 connections; this run used \
             {} B and {}, so read them as a guide only.\n",
            report.value_len, report.concurrency
        ));
    }
    let memaslap_window =
        generators::memaslap_window_thousands(report.keys, report.concurrency) * 1024;
    out.push_str(&format!(
        "\nShardcache set-ups: 6 aux nodes (`--capacity 1GiB`, snapshots off), 1 master \
         (2 behind nginx, one worker, upstream keep-alive); the slow aux node is reached \
         by the masters through a relay that holds every chunk both ways. Redis and \
         memcached are references only: redis-benchmark is preloaded with the same \
         number of keys, and its percentiles are the first it prints at or above each \
         (≤); memaslap sets the keys of its own window ({memaslap_window} per \
         connection) inside its run, so its GET rate counts that time, its server CPU \
         counts those sets, and its percentiles are the upper bounds of its power-of-two \
         buckets (≤).\n",
    ));
    if !skipped.is_empty() {
        out.push_str(&format!("\nSkipped: {}.\n", skipped.join("; ")));
    }
    let versions: Vec<&str> = report
        .setups
        .iter()
        .filter_map(|setup| setup.version.as_deref())
        .filter(|version| !version.is_empty())
        .collect();
    if !versions.is_empty() {
        out.push_str(&format!("\nVersions: {}.\n", versions.join("; ")));
    }
    out.push_str(&format!(
        "\n![Throughput and p99 latency]({})\n",
        plot.display()
    ));
    out
}

/// Throughput and p99 of every measured set-up, reads and writes.
pub(super) fn charts(report: &Report) -> Vec<BarChart> {
    let measured: Vec<&SetupResult> = report
        .setups
        .iter()
        .filter(|setup| setup.skipped.is_none())
        .collect();
    let series = |pick: fn(&PhaseResult) -> Option<f64>| -> Vec<Series> {
        measured
            .iter()
            .map(|setup| Series {
                name: setup.label.clone(),
                values: vec![
                    setup.read.as_ref().and_then(pick),
                    setup.write.as_ref().and_then(pick),
                ],
            })
            .collect()
    };
    let subtitle = format!(
        "shardcache bench · {} · {} cores · {} B values · {} connections · {} s per phase",
        report.date, report.cores, report.value_len, report.concurrency, report.phase_seconds
    );
    let groups = vec!["GET".to_owned(), "POST / SET".to_owned()];
    let throughput = BarChart {
        title: "Throughput (requests per second; higher is better)".into(),
        subtitle: subtitle.clone(),
        x_label: "request".into(),
        y_label: "requests per second".into(),
        groups: groups.clone(),
        series: series(|phase| Some(phase.requests_per_second)),
        markers: Vec::new(),
        decimals: 0,
        log_scale: false,
    };
    let p99 = series(PhaseResult::p99_ms);
    let values = p99.iter().flat_map(|s| s.values.iter().flatten().copied());
    let (min, max) = values
        .filter(|value| value.is_finite() && *value > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(min, max), v| {
            (min.min(v), max.max(v))
        });
    let latency = BarChart {
        title: "p99 latency (ms; lower is better)".into(),
        subtitle,
        x_label: "request".into(),
        y_label: "p99 latency, ms".into(),
        groups,
        series: p99,
        markers: Vec::new(),
        decimals: 2,
        log_scale: max > 20.0 * min,
    };
    vec![throughput, latency]
}
