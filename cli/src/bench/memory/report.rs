//! The report of `shardcache bench-memory`: the `## Memory` section of `BENCHMARKS.md`
//! and its chart.

use super::*;

pub(super) fn write_outputs(args: &BenchMemoryArgs, report: &Report) -> anyhow::Result<()> {
    write_file(
        &args.json,
        &serde_json::to_string_pretty(report).context("serialise the results")?,
    )?;
    println!("raw results written to {}", args.json.display());
    let svg = args.json.with_extension("svg");
    crate::bench::plot::write_png(&chart(report), &svg, &args.plot, 1200)?;
    println!(
        "chart written to {} (SVG: {})",
        args.plot.display(),
        svg.display()
    );
    let section = render_section(report, &args.plot);
    println!("\n{section}");
    write_section(&args.output, SECTION_HEADING, &section, None)?;
    println!("written to {} ({SECTION_HEADING})", args.output.display());
    Ok(())
}

pub(super) fn size_label(value_len: usize) -> String {
    match value_len {
        len if len >= 1024 && len % 1024 == 0 => format!("{} KiB", len / 1024),
        len => format!("{len} B"),
    }
}

pub(super) fn ratio(value: Option<f64>) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value:.2}"),
        _ => "n/a".to_owned(),
    }
}

/// The figure of set-up `k+m` in `result`, through `measure`.
pub(super) fn figure(
    result: &WorkloadResult,
    k: u8,
    m: u8,
    measure: fn(&ClusterRun) -> f64,
) -> Option<f64> {
    result.cluster(k, m).map(measure)
}

/// The `## Memory` section: command, date, what the columns mean, the tables.
pub(super) fn render_section(report: &Report, plot: &Path) -> String {
    let mut out = format!(
        "{SECTION_HEADING}\n\n\
         Reproduce with `{}` (run on {}, {} cores; `--scale 0.05` is a quick run).\n\n",
        report.command, report.date, report.cores
    );
    out.push_str(
        "Each set-up ran on a fresh local cluster (1 master, 6 aux nodes, \
         `--capacity` large enough that nothing is evicted, periodic snapshots off), \
         loaded through the master's `POST /data` with 16-byte keys; Redis and memcached \
         got the same keys and values, pipelined, on a fresh process per value size. \
         **RSS / user byte** is the growth of the summed `VmRSS` of all aux processes \
         (or of the one server) from a baseline to steady state (every shard \
         landed, summed RSS changing by < 1% per second), divided by the user bytes \
         (key + value lengths summed over keys). The baseline is read after a warm-up \
         load of 2% as many other keys, so that connection pools, request buffers and \
         the code the load runs are resident in both readings: the growth is what the \
         data costs, the figure to size a node by. **store-counted** is the aux nodes' \
         own count (`store.bytes` of `GET /health`) per user byte. **per-shard \
         overhead** is (RSS growth − Σ over stored shards of (key length + shard \
         payload ⌈value/k⌉)) ÷ shard count (keys × (k+m)): what each stored shard costs \
         beyond its key and payload. **3+2 ÷ 1+2** compares erasure coding with 3-way \
         replication (both survive 2 lost nodes); **redis ×3** and **memcached ×3** are \
         one server's RSS growth per user byte times 3, the copies needed for the same \
         2-failure tolerance. **target** is the goal for 3+2 RSS / user byte.\n\n",
    );
    out.push_str(
        "| value size | keys | 3+2 RSS / user byte | 3+2 store-counted / user byte | \
         3+2 per-shard overhead (B) | 4+2 RSS / user byte | 1+2 RSS / user byte | \
         3+2 ÷ 1+2 | redis ×3 | memcached ×3 | target (3+2 RSS / user byte) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for result in &report.results {
        out.push_str(&table_row(result));
    }
    out.push_str(
        "\nMore detail (the JSON has every process's RSS before and after, load and \
         settle times, and shard counts):\n\n\
         | value size | 3+2 floor: keys + payloads only | 4+2 store-counted / user byte | \
         1+2 store-counted / user byte | 4+2 per-shard overhead (B) | \
         1+2 per-shard overhead (B) | redis, 1 copy | memcached, 1 copy |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for result in &report.results {
        out.push_str(&detail_row(result));
    }
    let unsteady: Vec<String> = report
        .results
        .iter()
        .flat_map(|result| {
            let clusters = result
                .clusters
                .iter()
                .filter(|run| !run.settled)
                .map(|run| format!("{} at {}", run.setup, size_label(run.value_len)));
            let references = [&result.redis, &result.memcached]
                .into_iter()
                .filter(|run| !run.settled)
                .map(|run| format!("{} at {}", run.system, size_label(run.value_len)));
            clusters.chain(references).collect::<Vec<_>>()
        })
        .collect();
    if !unsteady.is_empty() {
        out.push_str(&format!(
            "\nNot steady within the settle timeout (read at the timeout): {}.\n",
            unsteady.join(", ")
        ));
    }
    let versions: Vec<&str> = report
        .results
        .first()
        .map(|result| {
            vec![
                result.redis.version.as_str(),
                result.memcached.version.as_str(),
            ]
        })
        .unwrap_or_default();
    if !versions.is_empty() {
        out.push_str(&format!("\nReference servers: {}.\n", versions.join("; ")));
    }
    out.push_str(&format!("\n![RSS per user byte]({})\n", plot.display()));
    out
}

pub(super) fn table_row(result: &WorkloadResult) -> String {
    let workload = result.workload;
    let coded_rss = figure(result, 3, 2, ClusterRun::rss_per_user_byte);
    let replicated_rss = figure(result, 1, 2, ClusterRun::rss_per_user_byte);
    let coded_vs_replicated = coded_rss.zip(replicated_rss).map(|(c, r)| c / r);
    let verdict = match coded_rss {
        Some(rss) if rss <= workload.target => "met",
        Some(_) => "missed",
        None => "n/a",
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | ≤ {} ({verdict}) |\n",
        size_label(workload.value_len),
        workload.keys,
        ratio(coded_rss),
        ratio(figure(result, 3, 2, ClusterRun::store_per_user_byte)),
        figure(result, 3, 2, ClusterRun::per_shard_overhead)
            .map_or("n/a".into(), |b| format!("{b:.0}")),
        ratio(figure(result, 4, 2, ClusterRun::rss_per_user_byte)),
        ratio(replicated_rss),
        ratio(coded_vs_replicated),
        ratio(Some(result.redis.per_user_byte() * REFERENCE_COPIES)),
        ratio(Some(result.memcached.per_user_byte() * REFERENCE_COPIES)),
        workload.target,
    )
}

pub(super) fn detail_row(result: &WorkloadResult) -> String {
    let workload = result.workload;
    let floor = 5.0 * (KEY_LEN + shard_payload_len(workload.value_len, 3)) as f64
        / (KEY_LEN + workload.value_len) as f64;
    let overhead = |k, m| {
        figure(result, k, m, ClusterRun::per_shard_overhead)
            .map_or("n/a".into(), |b| format!("{b:.0}"))
    };
    format!(
        "| {} | {floor:.2} | {} | {} | {} | {} | {} | {} |\n",
        size_label(workload.value_len),
        ratio(figure(result, 4, 2, ClusterRun::store_per_user_byte)),
        ratio(figure(result, 1, 2, ClusterRun::store_per_user_byte)),
        overhead(4, 2),
        overhead(1, 2),
        ratio(Some(result.redis.per_user_byte())),
        ratio(Some(result.memcached.per_user_byte())),
    )
}

/// RSS per user byte of every system, grouped by value size.
pub(super) fn chart(report: &Report) -> BarChart {
    let groups = report
        .results
        .iter()
        .map(|result| size_label(result.workload.value_len))
        .collect();
    let mut series: Vec<Series> = SETUPS
        .iter()
        .map(|setup| Series {
            name: setup.label.to_owned(),
            values: report
                .results
                .iter()
                .map(|result| {
                    figure(
                        result,
                        setup.data_shards,
                        setup.parity_shards,
                        ClusterRun::rss_per_user_byte,
                    )
                })
                .collect(),
        })
        .collect();
    for (name, pick) in [
        (
            "redis ×3 copies",
            (|r: &WorkloadResult| &r.redis) as fn(&WorkloadResult) -> &ReferenceRun,
        ),
        ("memcached ×3 copies", |r: &WorkloadResult| &r.memcached),
    ] {
        series.push(Series {
            name: name.to_owned(),
            values: report
                .results
                .iter()
                .map(|result| Some(pick(result).per_user_byte() * REFERENCE_COPIES))
                .collect(),
        });
    }
    let markers = report
        .results
        .iter()
        .enumerate()
        .map(|(group, result)| Marker {
            group,
            value: result.workload.target,
            label: "3+2 target".into(),
        })
        .collect();
    let values = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied());
    let (min, max) = values
        .filter(|value| value.is_finite() && *value > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(min, max), v| {
            (min.min(v), max.max(v))
        });
    BarChart {
        title: "Memory per user byte (RSS growth ÷ key + value bytes; lower is better)".into(),
        subtitle: format!(
            "{} · {} · {} cores",
            report.command, report.date, report.cores
        ),
        x_label: "value size (16-byte keys)".into(),
        y_label: "RSS bytes per user byte".into(),
        groups,
        series,
        markers,
        decimals: 2,
        // Orders of magnitude apart would flatten the small bars on a linear axis.
        log_scale: max > 20.0 * min,
    }
}
