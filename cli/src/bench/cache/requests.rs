//! The requests of a phase (deterministic per phase and client, so every set-up
//! meets the same ones), the Zipf distribution they are drawn from, and the
//! infinite-cache ceiling of a workload.

use rand::{Rng, SeedableRng};

use super::run::Phase;
use super::{BenchCacheArgs, Counts, Workload};

/// Seeds of the phases, so that every set-up meets the same requests.
pub(super) const WARM_UP_SEED: u64 = 2;
pub(super) const COUNTED_SEED: u64 = 3;
pub(super) const SCAN_SEED: u64 = 4;
pub(super) const AFTER_SCAN_SEED: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Request {
    /// A Zipf rank (the key's index).
    Zipf(u64),
    /// A key never requested before or after.
    Wonder,
    /// The scan's `n`th key.
    Scan(u64),
}

/// One client's requests in one phase: requests `thread`, `thread + threads`, … of
/// it, drawn from a generator seeded by the phase and the thread.
pub(super) struct Requests<'a> {
    phase: Phase,
    zipf: &'a ZipfTable,
    rng: rand::rngs::StdRng,
    index: u64,
    step: u64,
}

impl<'a> Requests<'a> {
    pub(super) fn new(
        phase: Phase,
        zipf: &'a ZipfTable,
        seed: u64,
        thread: u64,
        threads: u64,
    ) -> Self {
        Requests {
            phase,
            zipf,
            rng: rand::rngs::StdRng::seed_from_u64(seed * 1000 + thread),
            index: thread,
            step: threads,
        }
    }
}

impl Iterator for Requests<'_> {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        let total = match self.phase {
            Phase::Zipf { requests, .. } => requests,
            Phase::Scan { keys } => keys,
        };
        if self.index >= total {
            return None;
        }
        let request = match self.phase {
            Phase::Zipf { wonders, .. } if self.rng.random::<f64>() < wonders => Request::Wonder,
            Phase::Zipf { .. } => Request::Zipf(self.zipf.sample(self.rng.random::<f64>())),
            Phase::Scan { .. } => Request::Scan(self.index),
        };
        self.index += self.step;
        Some(request)
    }
}

/// The hit ratio of an infinite cache on the counted window: every key's first
/// request misses (it is a compulsory miss), every later one hits. No policy can
/// do better. The clients' requests are taken in turn, as they roughly run.
pub(super) fn ceiling(args: &BenchCacheArgs, workload: Workload, zipf: &ZipfTable) -> f64 {
    let threads = args.threads as u64;
    let phase = |requests| Phase::Zipf {
        requests,
        wonders: workload.wonders,
    };
    let mut seen = std::collections::HashSet::new();
    let mut counts = Counts::default();
    for (seed, requests, counted) in [
        (WARM_UP_SEED, args.warm_up, false),
        (COUNTED_SEED, args.requests, true),
    ] {
        let mut clients: Vec<Requests> = (0..threads)
            .map(|thread| Requests::new(phase(requests), zipf, seed, thread, threads))
            .collect();
        let mut active = true;
        while active {
            active = false;
            for client in &mut clients {
                let Some(request) = client.next() else {
                    continue;
                };
                active = true;
                if let Request::Zipf(rank) = request {
                    let hit = !seen.insert(rank);
                    if counted {
                        counts.zipf_requests += 1;
                        counts.zipf_hits += u64::from(hit);
                    }
                }
            }
        }
    }
    counts.hit_ratio()
}

// ---------------------------------------------------------------------------
// Zipf
// ---------------------------------------------------------------------------

/// The cumulative distribution of ranks 0..n with P(rank r) ∝ 1 / (r+1)^s.
pub(super) struct ZipfTable {
    cumulative: Vec<f64>,
}

impl ZipfTable {
    pub(super) fn new(n: u64, s: f64) -> Self {
        let mut sum = 0.0;
        let mut cumulative: Vec<f64> = (1..=n)
            .map(|rank| {
                sum += 1.0 / (rank as f64).powf(s);
                sum
            })
            .collect();
        for weight in &mut cumulative {
            *weight /= sum;
        }
        ZipfTable { cumulative }
    }

    /// The rank whose share of the distribution holds `uniform` (in [0, 1)).
    pub(super) fn sample(&self, uniform: f64) -> u64 {
        let rank = self.cumulative.partition_point(|&below| below <= uniform);
        rank.min(self.cumulative.len() - 1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cache::WORKLOADS;

    #[test]
    fn zipf_ranks_follow_the_distribution() {
        let table = ZipfTable::new(4, 1.0);
        // Weights 1, 1/2, 1/3, 1/4 of 25/12.
        assert_eq!(table.sample(0.0), 0);
        assert_eq!(table.sample(0.47), 0);
        assert_eq!(table.sample(0.49), 1);
        assert_eq!(table.sample(0.999_999), 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let big = ZipfTable::new(150_000, 0.99);
        let top = (0..100_000)
            .filter(|_| big.sample(rng.random::<f64>()) < 100)
            .count();
        // The 100 most popular of 150k keys draw about 40% of requests.
        assert!((35_000..45_000).contains(&top), "{top}");
    }

    #[test]
    fn the_ceiling_counts_first_requests_as_misses() {
        let args = |warm_up, requests| BenchCacheArgs {
            keys: 10,
            zipf: 0.99,
            warm_up,
            requests,
            threads: 2,
            ..BenchCacheArgs::for_tests()
        };
        let zipf = ZipfTable::new(10, 0.99);
        // Ten keys, thousands of requests: at most ten misses.
        assert!(ceiling(&args(0, 10_000), WORKLOADS[0], &zipf) >= 0.999);
        // After a long warm-up every key was seen.
        assert_eq!(ceiling(&args(10_000, 1_000), WORKLOADS[0], &zipf), 1.0);
        // One-hit wonders are not counted, and miss anyway.
        assert_eq!(ceiling(&args(10_000, 1_000), WORKLOADS[1], &zipf), 1.0);
    }
}
