//! How many keys a repair pass keeps in flight: a budget that takes what the
//! clients leave (pure, table-tested; the pass feeds it and obeys it).
//!
//! Repair shares the aux nodes, the master's one thread and the per-node shard
//! batchers with client requests. Its keys move in bulk — hundreds in flight, their
//! shard reads and writes joining the same multi-gets and multi-puts — and the
//! budget decides how many: every [`TICK`] the pass hands in what the clients'
//! requests did meanwhile — how many finished, and their mean time on this master
//! from the HTTP metrics plus how long a ready task waited for the master's thread
//! (see the pass's `ClientMeter`) — and the budget moves, AIMD, on the clients'
//! **slowdown**: the larger of their mean latency over the lowest seen this pass
//! and the highest request rate seen this pass over the current one.
//!
//! - **no client traffic** (fewer than [`MIN_CLIENT_REQUESTS`] in the tick):
//!   nothing to protect, the window doubles towards its limit;
//! - **the clients hold** (slowdown at most [`RAISE_BELOW`]): additive increase
//!   by [`STEP`];
//! - **the clients suffer** (slowdown above [`LOWER_ABOVE`]): the window shrinks
//!   by [`BACK_OFF`], at most once per tick, never below [`MIN_WINDOW`]; in
//!   between it holds.
//!
//! Both baselines are taken while the window is still small (a pass starts at
//! [`MIN_WINDOW`]), so they are the clients' figures with repair barely running.
//! The two signals cover the two kinds of client: clients at a fixed rate keep
//! their rate until the cluster saturates, and show repair's cost as latency;
//! clients with a fixed number of connections (a saturating load) show it as
//! rate, and the rate sees what the master cannot time — requests waiting in the
//! kernel while other processes (the aux nodes doing repair's work) hold the
//! cores.
//!
//! Upper bounds, whatever the clients do: `--repair-concurrency` keys, and
//! [`MAX_BYTES_IN_FLIGHT`] of shard bytes, judged from the largest key the pass has
//! handled so far (what a key costs is only known once its shards are fetched).

use std::time::Duration;

use serde::Serialize;

/// How often the budget looks at client latency.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// The smallest window, and the one a pass starts with.
pub(crate) const MIN_WINDOW: usize = 16;

/// Keys added per tick while client latency holds.
pub(crate) const STEP: usize = 32;

/// Client latency within this factor of the baseline: the window grows.
pub(crate) const RAISE_BELOW: f64 = 1.15;

/// Client latency beyond this factor of the baseline: the window shrinks.
pub(crate) const LOWER_ABOVE: f64 = 1.3;

/// The factor the window shrinks by.
pub(crate) const BACK_OFF: f64 = 0.7;

/// Client requests in a tick below which there is no client signal.
pub(crate) const MIN_CLIENT_REQUESTS: u64 = 20;

/// Most shard bytes (fetched and rebuilt) the keys in flight may hold.
pub(crate) const MAX_BYTES_IN_FLIGHT: u64 = 64 << 20;

/// What client requests did during one tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ClientSample {
    /// Client requests that finished during the tick.
    pub(crate) requests: u64,
    /// The tick's length, in seconds.
    pub(crate) tick_seconds: f64,
    /// Their mean latency, in seconds.
    pub(crate) mean_seconds: f64,
}

/// The repair budget of one pass.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Budget {
    /// Keys in flight the budget allows now.
    pub(crate) window: usize,
    /// `--repair-concurrency`: the window's upper bound.
    pub(crate) limit: usize,
    /// Window the byte bound allows (from the largest key so far).
    pub(crate) byte_limit: usize,
    /// The clients' lowest mean latency seen this pass, in seconds.
    pub(crate) client_baseline_seconds: Option<f64>,
    /// The clients' highest request rate seen this pass, per second.
    pub(crate) client_peak_rate: Option<f64>,
    /// The last tick's client slowdown: the larger of mean latency over its
    /// baseline and peak rate over the tick's rate.
    pub(crate) client_slowdown: Option<f64>,
    /// Largest shard bytes one key has held so far.
    #[serde(skip)]
    largest_key_bytes: u64,
}

impl Budget {
    /// A pass's budget under `limit` (`--repair-concurrency`).
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Budget {
            window: MIN_WINDOW.min(limit),
            limit,
            byte_limit: limit,
            client_baseline_seconds: None,
            client_peak_rate: None,
            client_slowdown: None,
            largest_key_bytes: 0,
        }
    }

    /// Keys that may be in flight now: the window under the byte bound.
    pub(crate) fn allowed(&self) -> usize {
        self.window.min(self.byte_limit).max(1)
    }

    /// A key finished having held `bytes` of shards.
    pub(crate) fn key_done(&mut self, bytes: u64) {
        if bytes > self.largest_key_bytes {
            self.largest_key_bytes = bytes;
            self.byte_limit = (MAX_BYTES_IN_FLIGHT / bytes).clamp(1, self.limit as u64) as usize;
        }
    }

    /// Moves the window after a tick in which the clients did `sample`.
    pub(crate) fn tick(&mut self, sample: ClientSample) {
        let floor = MIN_WINDOW.min(self.limit);
        if sample.requests < MIN_CLIENT_REQUESTS
            || sample.mean_seconds <= 0.0
            || sample.tick_seconds <= 0.0
        {
            self.client_slowdown = None;
            self.window = (self.window * 2).clamp(floor, self.limit);
            return;
        }
        let rate = sample.requests as f64 / sample.tick_seconds;
        let baseline = lowest(self.client_baseline_seconds, sample.mean_seconds);
        let peak = rate.max(self.client_peak_rate.unwrap_or(rate));
        (self.client_baseline_seconds, self.client_peak_rate) = (Some(baseline), Some(peak));
        let slowdown = (sample.mean_seconds / baseline).max(peak / rate);
        self.client_slowdown = Some(slowdown);
        self.window = if slowdown <= RAISE_BELOW {
            self.window + STEP
        } else if slowdown > LOWER_ABOVE {
            (self.window as f64 * BACK_OFF) as usize
        } else {
            self.window
        }
        .clamp(floor, self.limit);
    }
}

fn lowest(so_far: Option<f64>, now: f64) -> f64 {
    so_far.map_or(now, |so_far| so_far.min(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 100 ms tick with `requests` requests of `mean_ms` on average.
    fn clients(requests: u64, mean_ms: f64) -> ClientSample {
        ClientSample {
            requests,
            tick_seconds: 0.1,
            mean_seconds: mean_ms / 1e3,
        }
    }

    #[test]
    fn without_clients_the_window_doubles_to_its_limit() {
        let mut budget = Budget::new(1000);
        let mut windows = Vec::new();
        for _ in 0..8 {
            budget.tick(clients(3, 1.0)); // too few requests to mean anything
            windows.push(budget.window);
        }
        assert_eq!(windows, [32, 64, 128, 256, 512, 1000, 1000, 1000]);
        assert_eq!(budget.client_slowdown, None);
    }

    #[test]
    fn the_window_follows_the_clients_latency_against_its_lowest() {
        // (client mean ms, window after the tick)
        let mut budget = Budget::new(200);
        for (mean_ms, window) in [
            (2.0, 48),   // the baseline: 2 ms
            (2.2, 80),   // 1.1×: holds, grow
            (2.5, 80),   // 1.25×: between the bounds, keep
            (3.0, 56),   // 1.5×: back off
            (3.0, 39),   // still: back off again
            (1.8, 71),   // a new, lower baseline
            (1.9, 103),  // 1.06×
            (1.9, 135),  //
            (1.9, 167),  //
            (1.9, 199),  //
            (1.9, 200),  // the limit
            (20.0, 140), // 11×: one back-off per tick, however bad
        ] {
            budget.tick(clients(500, mean_ms));
            assert_eq!(budget.window, window, "after a tick at {mean_ms} ms");
        }
        let baseline = budget.client_baseline_seconds.expect("clients were seen");
        assert!((baseline - 0.0018).abs() < 1e-12, "{baseline}");
    }

    #[test]
    fn the_window_follows_the_clients_rate_against_its_highest() {
        // Closed-loop clients: a latency the master cannot see shows as a lower rate.
        // (requests in the tick, window after the tick); the latency stays 2 ms.
        let mut budget = Budget::new(200);
        for (requests, window) in [
            (1000, 48), // the peak: 10,000/s
            (950, 80),  // 1.05× below it: grow
            (800, 80),  // 1.25×: keep
            (700, 56),  // 1.43×: back off
            (1100, 88), // a new peak
        ] {
            budget.tick(clients(requests, 2.0));
            assert_eq!(budget.window, window, "after a tick of {requests} requests");
        }
        let slowdown = budget.client_slowdown.expect("clients were seen");
        assert!((slowdown - 1.0).abs() < 1e-9, "{slowdown}");
    }

    #[test]
    fn the_window_never_leaves_its_floor_and_limit() {
        let mut budget = Budget::new(1000);
        budget.tick(clients(500, 1.0));
        for _ in 0..20 {
            budget.tick(clients(500, 10.0));
        }
        assert_eq!(budget.window, MIN_WINDOW);
        let mut tiny = Budget::new(4);
        assert_eq!(tiny.window, 4, "a limit below the floor is the window");
        tiny.tick(clients(0, 0.0));
        tiny.tick(clients(500, 1.0));
        assert_eq!(tiny.window, 4);
    }

    #[test]
    fn large_keys_bound_the_keys_in_flight_by_bytes() {
        let mut budget = Budget::new(1000);
        for _ in 0..6 {
            budget.tick(clients(0, 0.0));
        }
        assert_eq!(budget.allowed(), 1000);
        budget.key_done(3 << 10); // 1 KiB values: no bound below the limit
        assert_eq!(budget.allowed(), 1000);
        budget.key_done(176 << 10); // 64 KiB values: 8 shards of ~22 KiB
        assert_eq!(budget.allowed(), 372);
        budget.key_done(1 << 10); // a smaller key changes nothing
        assert_eq!(budget.allowed(), 372);
        budget.key_done(1 << 30); // a huge one still goes, alone
        assert_eq!(budget.allowed(), 1);
    }
}
