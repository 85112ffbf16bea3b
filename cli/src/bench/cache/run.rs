//! Running one set-up on one workload: start the system (a local cluster, or
//! three reference servers), drive its phases from `--threads` clients, and count.

use std::io::BufReader;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use shardcache_common::units::ByteSize;

use super::census::{census, store_totals};
use super::clients::{connect, CacheClient, Http, HttpCache, Replicated};
use super::requests::*;
use super::*;
use crate::bench::support::{
    free_port, key, memcached_args, program_path, redis_args, value, ChildServer,
};
use crate::harness::{ClusterSpec, LocalCluster};

/// A started system: its children, and how to open a client connection to it.
pub(super) enum Started {
    Shardcache {
        cluster: Box<LocalCluster>,
        data_shards: u8,
        _data_dir: tempfile::TempDir,
    },
    References {
        servers: Vec<ChildServer>,
        redis: bool,
    },
}

impl Started {
    fn connect(&self) -> anyhow::Result<Box<dyn CacheClient>> {
        Ok(match self {
            Started::Shardcache { cluster, .. } => {
                Box::new(HttpCache(Http::connect(cluster.masters[0].addr)?))
            }
            Started::References { servers, redis } => {
                let connections = servers
                    .iter()
                    .map(|server| connect(server.addr).map(BufReader::new))
                    .collect::<anyhow::Result<_>>()?;
                Box::new(Replicated {
                    connections,
                    redis: *redis,
                })
            }
        })
    }
}

pub(super) fn start(
    exe: &Path,
    args: &BenchCacheArgs,
    setup: &Setup,
    workload: Workload,
) -> anyhow::Result<Started> {
    match setup {
        Setup::Shardcache {
            data_shards,
            parity_shards,
            policy,
        } => {
            let data_dir = tempfile::tempdir().context("create a temp dir for the cluster")?;
            let mut spec = ClusterSpec::new(data_dir.path());
            (spec.data_shards, spec.parity_shards) = (*data_shards, *parity_shards);
            let capacity = ByteSize(args.aux_capacity.bytes() / workload.ram_divisor);
            spec.aux_args = vec![
                "--capacity".into(),
                capacity.to_string(),
                "--snapshot-interval".into(),
                "0s".into(),
            ];
            if let Some(policy) = policy {
                spec.aux_args
                    .extend(["--eviction-policy".into(), policy.clone()]);
            }
            let cluster = LocalCluster::start(exe, spec).context("start the local cluster")?;
            Ok(Started::Shardcache {
                cluster: Box::new(cluster),
                data_shards: *data_shards,
                _data_dir: data_dir,
            })
        }
        Setup::Memcached | Setup::Redis => {
            let redis = *setup == Setup::Redis;
            let (program, package) = match redis {
                true => ("redis-server", "redis-server"),
                false => ("memcached", "memcached"),
            };
            let program = program_path(program, package)?;
            // memcached needs twice its largest item (1 MiB) of memory.
            let memory_mib = (args.reference_memory_mib / workload.ram_divisor).max(2);
            let log_dir = tempfile::tempdir().context("create a temp dir for the logs")?;
            let mut servers = Vec::new();
            for copy in 0..REFERENCE_COPIES {
                let port = free_port()?;
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let server_args = match redis {
                    true => {
                        let mut server_args = redis_args(port);
                        server_args.extend([
                            "--maxmemory".to_owned(),
                            format!("{memory_mib}mb"),
                            "--maxmemory-policy".to_owned(),
                            "allkeys-lru".to_owned(),
                        ]);
                        server_args
                    }
                    false => memcached_args(port, memory_mib),
                };
                let log = log_dir.path().join(format!("server-{copy}.log"));
                servers.push(ChildServer::start(
                    &setup.label(),
                    &program,
                    &server_args,
                    addr,
                    &log,
                )?);
            }
            // The logs are only read while the servers start.
            drop(log_dir);
            Ok(Started::References { servers, redis })
        }
    }
}

pub(super) fn run_setup(
    exe: &Path,
    args: &BenchCacheArgs,
    setup: &Setup,
    workload: Workload,
    zipf: &ZipfTable,
) -> anyhow::Result<Run> {
    let started_at = Instant::now();
    let system = start(exe, args, setup, workload)?;
    let result = drive(&system, args, setup, workload, zipf, started_at);
    if result.is_err() {
        if let Started::Shardcache { cluster, .. } = &system {
            eprintln!("cluster logs:\n{}", cluster.logs(20));
        }
    }
    result
}

pub(super) fn drive(
    system: &Started,
    args: &BenchCacheArgs,
    setup: &Setup,
    workload: Workload,
    zipf: &ZipfTable,
    started_at: Instant,
) -> anyhow::Result<Run> {
    let wonders = AtomicU64::new(WONDER_BASE);
    let zipf_phase = |requests: u64| Phase::Zipf {
        requests,
        wonders: workload.wonders,
    };
    let phase = |name: &str, phase: Phase, seed: u64| {
        run_phase(system, args, workload, zipf, &wonders, name, phase, seed)
    };
    phase("warm-up", zipf_phase(args.warm_up), WARM_UP_SEED)?;
    let counted = phase("counted", zipf_phase(args.requests), COUNTED_SEED)?;
    let census = match system {
        Started::Shardcache {
            cluster,
            data_shards,
            ..
        } => Some(census(cluster, *data_shards, total_shards(cluster))?),
        Started::References { .. } => None,
    };
    let after_scan = match workload.scan {
        true => {
            let scan = Phase::Scan {
                keys: scan_keys(args, workload),
            };
            phase("scan", scan, SCAN_SEED)?;
            Some(phase(
                "after the scan",
                zipf_phase(args.requests),
                AFTER_SCAN_SEED,
            )?)
        }
        false => None,
    };
    let (store_bytes, evictions) = match system {
        Started::Shardcache { cluster, .. } => {
            let (bytes, evictions) = store_totals(cluster)?;
            (Some(bytes), Some(evictions))
        }
        Started::References { .. } => (None, None),
    };
    Ok(Run {
        setup: setup.label(),
        workload: workload.id,
        counted,
        after_scan,
        census,
        store_bytes,
        evictions,
        seconds: started_at.elapsed().as_secs_f64(),
    })
}

/// Twice the values of the workload's size the 3+2 cluster can hold (payloads
/// only: an upper bound on what fits, so the scan surely sweeps the cache).
pub(super) fn scan_keys(args: &BenchCacheArgs, workload: Workload) -> u64 {
    let ram = AUX_NODES as f64 * (args.aux_capacity.bytes() / workload.ram_divisor) as f64;
    (SCAN_FACTOR * ram * 3.0 / 5.0 / workload.value_len as f64) as u64
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Phase {
    Zipf { requests: u64, wonders: f64 },
    Scan { keys: u64 },
}

/// Runs one phase on `--threads` clients and adds up what they counted.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_phase(
    system: &Started,
    args: &BenchCacheArgs,
    workload: Workload,
    zipf: &ZipfTable,
    wonders: &AtomicU64,
    name: &str,
    phase: Phase,
    seed: u64,
) -> anyhow::Result<Counts> {
    let threads = args.threads as u64;
    let total = match phase {
        Phase::Zipf { requests, .. } => requests,
        Phase::Scan { keys } => keys,
    };
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let every = (total / 5).max(1);
    let results: Vec<anyhow::Result<Counts>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let done = &done;
                scope.spawn(move || -> anyhow::Result<Counts> {
                    let mut client = system.connect()?;
                    let mut counts = Counts::default();
                    for request in Requests::new(phase, zipf, seed, thread, threads) {
                        ensure!(
                            started.elapsed() < PHASE_TIMEOUT,
                            "the {name} phase took longer than {PHASE_TIMEOUT:?}"
                        );
                        let (key_index, counted) = match request {
                            Request::Zipf(rank) => (rank, true),
                            Request::Wonder => (wonders.fetch_add(1, Ordering::Relaxed), false),
                            Request::Scan(index) => (SCAN_BASE + index, false),
                        };
                        let key = key(key_index);
                        let hit = match client.get(&key) {
                            Ok(hit) => hit,
                            Err(_) => {
                                counts.errors += 1;
                                client = system.connect()?;
                                false
                            }
                        };
                        if !hit
                            && client
                                .set(&key, &value(key_index, workload.value_len))
                                .is_err()
                        {
                            counts.errors += 1;
                            client = system.connect()?;
                        }
                        match counted {
                            true => {
                                counts.zipf_requests += 1;
                                counts.zipf_hits += u64::from(hit);
                            }
                            false => counts.wonder_requests += 1,
                        }
                        let count = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if count.is_multiple_of(every) {
                            println!(
                                "    {name}: {count}/{total} requests ({:.1} s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Ok(counts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    let mut counts = Counts::default();
    for result in results {
        counts.add(result?);
    }
    Ok(counts)
}

/// k+m of a running cluster.
fn total_shards(cluster: &LocalCluster) -> u8 {
    cluster.spec.data_shards + cluster.spec.parity_shards
}
