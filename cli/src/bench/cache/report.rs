//! The report: the Markdown section, the JSON and the chart.

use std::path::Path;

use super::{BenchCacheArgs, Report, Run, Setup};
use crate::bench::plot::{BarChart, Marker, Series};
use crate::bench::support::{write_file, write_section};

pub(super) fn write_outputs(args: &BenchCacheArgs, report: &Report) -> anyhow::Result<()> {
    write_file(&args.json, &serde_json::to_string_pretty(report)?)?;
    let svg = args.json.with_extension("svg");
    crate::bench::plot::write_png(&chart(report), &svg, &args.plot, 1200)?;
    let section = render_section(report, &args.heading, &args.plot);
    println!("{section}");
    write_section(&args.output, &args.heading, &section, None)?;
    println!(
        "written to {}, {} and {}",
        args.output.display(),
        args.json.display(),
        args.plot.display()
    );
    Ok(())
}

pub(super) fn find<'a>(report: &'a Report, setup: &str, workload: &str) -> Option<&'a Run> {
    report
        .runs
        .iter()
        .find(|run| run.setup == setup && run.workload == workload)
}

/// 1 − misses ÷ memcached ×3's misses, on the same workload.
pub(super) fn misses_saved(run: &Run, memcached: Option<&Run>) -> Option<f64> {
    let reference = 1.0 - memcached?.counted.hit_ratio();
    (reference > 0.0).then(|| 1.0 - (1.0 - run.counted.hit_ratio()) / reference)
}

pub(super) fn render_section(report: &Report, heading: &str, plot: &Path) -> String {
    let memcached = Setup::Memcached.label();
    let mut out = format!(
        "{heading}\n\ncommand: `{}`\n\nRun on {}; load average at the end: {}.\n\n",
        report.command,
        report.date,
        report
            .load_average
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let settings = &report.settings;
    out.push_str(&format!(
        "Cache-aside (GET; SET on a miss), {} clients, Zipf {} over {} 16-byte keys, \
         {} warm-up then {} counted requests per window. **infinite cache** is the \
         ceiling no policy can pass: the hit ratio if every key's first request missed \
         and every later one hit (after a short warm-up, many keys are first requested \
         in the counted window). Equal RAM: shardcache runs 6 aux nodes of \
         `--capacity {}`, memcached and redis three servers of {} MiB holding three \
         copies (a GET tries the key's primary copy, then the others; a miss SETs all \
         three); the 100 B workload gets a quarter of that. **hit ratio** counts the \
         Zipf requests only; **misses saved** is 1 − misses ÷ memcached ×3's misses; \
         **scan drop** is the hit ratio of the window before a scan (2× what the 3+2 \
         cluster holds, never-seen keys) minus the window after it; **dead shards** is \
         the share of the cluster's shards (of one size, so of its bytes) whose key has \
         fewer than k shards of its newest version, or that are of an older version, at \
         the end of the counted window.\n\n",
        settings.threads,
        settings.zipf,
        settings.keys,
        settings.warm_up,
        settings.requests,
        settings.aux_capacity,
        settings.reference_memory_mib,
    ));
    out.push_str("| set-up |");
    for workload in &report.workloads {
        out.push_str(&format!(" {} |", workload.label));
    }
    out.push_str(" misses saved vs memcached ×3 (Zipf only) | scan drop | dead shards (Zipf only / wonders) |\n|---|");
    for _ in &report.workloads {
        out.push_str("---|");
    }
    out.push_str("---|---|---|\n");
    out.push_str("| infinite cache (ceiling) |");
    for ceiling in &report.ceilings {
        out.push_str(&format!(" {ceiling:.3} |"));
    }
    out.push_str(" | | |\n");
    for setup in &report.setups {
        out.push_str(&format!("| {setup} |"));
        for workload in &report.workloads {
            match find(report, setup, workload.id) {
                Some(run) => out.push_str(&format!(" {:.3} |", run.counted.hit_ratio())),
                None => out.push_str(" – |"),
            }
        }
        let zipf = find(report, setup, "zipf");
        let saved = zipf.and_then(|run| misses_saved(run, find(report, &memcached, "zipf")));
        let drop = zipf.and_then(Run::scan_drop);
        let dead = ["zipf", "wonders"]
            .iter()
            .map(|workload| {
                find(report, setup, workload)
                    .and_then(|run| run.census)
                    .map_or("–".to_owned(), |census| {
                        format!("{:.1}%", 100.0 * census.dead_fraction())
                    })
            })
            .collect::<Vec<_>>()
            .join(" / ");
        out.push_str(&format!(
            " {} | {} | {dead} |\n",
            saved.map_or("–".to_owned(), |saved| format!("{:.0}%", 100.0 * saved)),
            drop.map_or("–".to_owned(), |drop| format!("{drop:+.3}")),
        ));
    }
    let errors: u64 = report.runs.iter().map(|run| run.counted.errors).sum();
    out.push_str(&format!(
        "\nErrors (requests that failed, counted as misses): {errors}. Versions: {}.\n\n![Hit ratio at equal RAM]({})\n",
        match report.versions.is_empty() {
            true => "–".to_owned(),
            false => report.versions.join("; "),
        },
        plot.display()
    ));
    out
}

pub(super) fn chart(report: &Report) -> BarChart {
    let mut groups: Vec<String> = report
        .workloads
        .iter()
        .map(|workload| workload.label.to_owned())
        .collect();
    let has_scan = report.workloads.iter().any(|workload| workload.scan);
    let mut markers: Vec<Marker> = report
        .ceilings
        .iter()
        .enumerate()
        .map(|(group, &value)| Marker {
            group,
            value,
            label: "infinite cache (ceiling)".to_owned(),
        })
        .collect();
    if has_scan {
        groups.push("Zipf, after a 2× scan".to_owned());
    }
    let series = report
        .setups
        .iter()
        .map(|setup| {
            let mut values: Vec<Option<f64>> = report
                .workloads
                .iter()
                .map(|workload| find(report, setup, workload.id).map(|run| run.counted.hit_ratio()))
                .collect();
            if has_scan {
                values.push(
                    find(report, setup, "zipf")
                        .and_then(|run| run.after_scan)
                        .map(|after| after.hit_ratio()),
                );
            }
            Series {
                name: setup.clone(),
                values,
            }
        })
        .collect();
    markers.extend(
        report
            .workloads
            .iter()
            .enumerate()
            .filter_map(|(group, workload)| {
                let target = match workload.id {
                    "zipf" => 0.82,
                    "wonders" => 0.80,
                    _ => return None,
                };
                Some(Marker {
                    group,
                    value: target,
                    label: "target (3+2)".to_owned(),
                })
            }),
    );
    BarChart {
        title: "Hit ratio at equal RAM (cache-aside, Zipf 0.99)".to_owned(),
        subtitle: format!("{} · {}", report.command, report.date),
        x_label: "workload".to_owned(),
        y_label: "hit ratio".to_owned(),
        groups,
        series,
        markers,
        decimals: 3,
        log_scale: false,
    }
}
