//! Named, time-limited leases that masters take from aux nodes so that one master at
//! a time runs repair (ARCHITECTURE.md, invariant 8).
//!
//! A master holds the lease when a majority of the aux nodes granted it. Leases live
//! in memory only: a restarted node grants afresh, so in rare cases two masters may
//! both believe they hold it for a while. That is safe because every repair step is
//! version-guarded; the lease only keeps masters from doing the same work twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shardcache_common::wire::{LeaseAnswer, LeaseRequest};

/// Longest lease a master may ask for, so a vanished master blocks repair briefly.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(60);

/// The leases this node has granted.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl Leases {
    /// Grants `request` if the lease is free, expired, or already held by the same
    /// holder (an extension); otherwise names the current holder.
    pub(crate) fn request(&self, request: &LeaseRequest, now: Instant) -> LeaseAnswer {
        let ttl = Duration::from_millis(request.ttl_ms).min(MAX_LEASE);
        let mut held = self.held.lock();
        if let Some((holder, until)) = held.get(&request.name) {
            if *holder != request.holder && *until > now {
                return LeaseAnswer {
                    granted: false,
                    holder: holder.clone(),
                    remaining_ms: (*until - now).as_millis() as u64,
                };
            }
        }
        held.insert(request.name.clone(), (request.holder.clone(), now + ttl));
        LeaseAnswer {
            granted: true,
            holder: request.holder.clone(),
            remaining_ms: ttl.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(leases: &Leases, holder: &str, now: Instant) -> LeaseAnswer {
        let request = LeaseRequest {
            name: "repair".into(),
            holder: holder.into(),
            ttl_ms: 1_000,
        };
        leases.request(&request, now)
    }

    #[test]
    fn one_holder_at_a_time_until_the_lease_runs_out() {
        let leases = Leases::default();
        let start = Instant::now();
        assert!(ask(&leases, "a", start).granted);
        let refused = ask(&leases, "b", start + Duration::from_millis(500));
        assert!(!refused.granted);
        assert_eq!(refused.holder, "a");
        assert!(
            ask(&leases, "a", start + Duration::from_millis(900)).granted,
            "the holder extends"
        );
        assert!(!ask(&leases, "b", start + Duration::from_millis(1_500)).granted);
        assert!(ask(&leases, "b", start + Duration::from_millis(2_000)).granted);
    }
}
