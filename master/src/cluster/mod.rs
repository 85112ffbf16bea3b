//! Cluster membership and node health as one master sees them, and the placement
//! that follows from them. This file holds [`Cluster`] (its state behind locks), the
//! probe loop ([`Cluster::run`]) and publishing a new [`View`]; the layers below are:
//!
//! - `view.rs`: the immutable [`View`] and placement, [`Node`], [`NodeState`], [`Source`].
//! - `probe.rs`: one health-probe round and folding its answers into the members.
//! - `membership.rs`: run-time membership (admin add/remove, the shared membership
//!   document, DNS discovery).
//! - `report.rs`: the typed [`ClusterReport`] that `GET /cluster` shows.
//! - `clock.rs`: this master's clock against the aux nodes', from the probes.
//!
//! **Members** are aux addresses: the `--aux` list, plus the addresses `--aux-dns`
//! resolves to, plus run-time additions, minus run-time removals. The run-time
//! changes form a [`MembershipDoc`] (newest version wins) that every master keeps
//! on every aux node: a master learns a newer one from its next probe, and pushes its
//! own to nodes holding an older one. So all masters converge on one member list
//! within about one probe interval of an admin call.
//!
//! **Identity.** Each aux node reports its identity (`--node-id`, or one it generated
//! and kept on disk) on `/health`. The ring is built over identities, never over
//! addresses, so a node that returns on another address keeps its place. A member
//! whose identity has never been heard is not on the ring yet.
//!
//! **Health.** Every `--probe-interval` each member's `/health` is called with
//! `--probe-timeout`, all at once, so a hung node costs the round one timeout and
//! never stalls it. After `--suspect-after` consecutive failures a node is
//! `suspect`; after `--down-after`, `down`; one answer makes it `up` again.
//!
//! **Placement.** A key's owners are the first `k + m` nodes on its ring walk that
//! are not down. Skipping a down node gives the same owners as a ring without it
//! (see [`Ring::walk`](shardcache_common::ring::Ring::walk)), so a master that
//! thinks a node is down and one that thinks it was removed place shards alike.
//! Masters that briefly disagree on a node's state place some writes differently;
//! reads tolerate it (they fall back to the other nodes when the owners' answers are
//! inconclusive) and repair moves such shards to their owners.

mod clock;
mod membership;
mod probe;
mod report;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use shardcache_common::aux_client::AuxClient;
use shardcache_common::geometry::Geometry;
use shardcache_common::version::HybridClock;
use shardcache_common::wire::{AuxStoreSummary, MembershipDoc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) use clock::{ClockReport, ClockSample};
use membership::DnsState;

pub(crate) use report::ClusterReport;
pub(crate) use view::{Node, NodeState, ReadPlacement, Source, View};
use view::{Slot, Slots};

/// How this master probes and judges aux nodes.
#[derive(Clone, Debug)]
pub(crate) struct ClusterSettings {
    pub(crate) seeds: Vec<String>,
    /// `name:port` resolved to many addresses (a headless service, a scaled service).
    pub(crate) dns: Option<String>,
    pub(crate) dns_refresh: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) suspect_after: u32,
    pub(crate) down_after: u32,
    /// Fewest members the admin API may leave: `k + m`.
    pub(crate) min_members: usize,
    /// How far this master's clock may be from the aux nodes' before it refuses
    /// writes (see `clock.rs`).
    pub(crate) max_clock_skew: Duration,
}

/// What this master knows about one member address.
#[derive(Clone, Debug)]
struct Member {
    source: Source,
    id: Option<Arc<str>>,
    /// The node's per-start instance number from its last answer.
    instance: u64,
    failures: u32,
    state: NodeState,
    state_since: Instant,
    last_error: Option<String>,
    store: Option<AuxStoreSummary>,
    /// Its clock against ours, from its last answer that told.
    clock: Option<ClockSample>,
    /// The only geometry it stores, from its last answer, if it has one.
    geometry: Option<Geometry>,
}

impl Member {
    fn new(source: Source, now: Instant) -> Self {
        Member {
            source,
            id: None,
            instance: 0,
            failures: 0,
            state: NodeState::Down,
            state_since: now,
            last_error: Some("not probed yet".into()),
            store: None,
            clock: None,
            geometry: None,
        }
    }
}

/// Membership and health, shared by the data path, the repairer and the admin API.
pub(crate) struct Cluster {
    settings: ClusterSettings,
    /// A client whose timeout is the probe timeout.
    client: AuxClient,
    view: RwLock<Arc<View>>,
    members: Mutex<BTreeMap<String, Member>>,
    doc: Mutex<MembershipDoc>,
    dns: Mutex<DnsState>,
    clock: HybridClock,
    epochs: watch::Sender<u64>,
    /// `(id, ignored address)` pairs where two live addresses report one node id,
    /// as of the last publish: each is warned about once, not every probe round.
    duplicate_ids: Mutex<BTreeSet<(Arc<str>, String)>>,
    /// This master's clock against the aux nodes', as of the last probe round.
    clock_report: Mutex<ClockReport>,
    /// Addresses whose clocks are off the others' (each warned about once).
    clocks_off: Mutex<BTreeSet<String>>,
}

impl Cluster {
    pub(crate) fn new(settings: ClusterSettings, client: AuxClient) -> Self {
        let now = Instant::now();
        let members = settings
            .seeds
            .iter()
            .map(|address| (address.clone(), Member::new(Source::Configured, now)))
            .collect();
        let max_skew = settings.max_clock_skew;
        Cluster {
            clock_report: Mutex::new(clock::master_lead(&[], max_skew.as_millis() as u64)),
            clocks_off: Mutex::default(),
            clock: HybridClock::with_random_writer(max_skew),
            settings,
            client,
            view: RwLock::new(Arc::new(View::empty())),
            members: Mutex::new(members),
            doc: Mutex::new(MembershipDoc::default()),
            dns: Mutex::new(DnsState::default()),
            epochs: watch::channel(0).0,
            duplicate_ids: Mutex::default(),
        }
    }

    /// The current picture of the cluster.
    pub(crate) fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// This master's clock against the aux nodes' (see `clock.rs`).
    pub(crate) fn clock_report(&self) -> ClockReport {
        *self.clock_report.lock()
    }

    /// An error saying why, while this master's clock is proven further from the
    /// aux nodes' than `--max-clock-skew`: writes stamped by it would be refused by
    /// the aux nodes or outrank later ones for that long.
    pub(crate) fn check_clock(&self) -> Result<(), String> {
        let report = self.clock_report();
        match report.lead_ms {
            Some(lead_ms) if report.beyond_bound => Err(format!(
                "this master's clock is {} ms {} the aux nodes' (±{} ms), more than --max-clock-skew ({} ms); writes are refused until its clock is fixed",
                lead_ms.unsigned_abs(),
                if lead_ms > 0 { "ahead of" } else { "behind" },
                report.uncertainty_ms.unwrap_or(0),
                report.max_skew_ms
            )),
            _ => Ok(()),
        }
    }

    /// An error naming the aux nodes that store only another geometry than
    /// `own` (k, m), as their last answers said: this master's shards would be
    /// refused by them.
    pub(crate) fn check_geometry(&self, own: Geometry) -> Result<(), String> {
        let reported: Vec<(String, Option<Geometry>)> = self
            .members
            .lock()
            .iter()
            .map(|(address, member)| {
                let name = member.id.as_deref().unwrap_or(address).to_owned();
                (name, member.geometry)
            })
            .collect();
        geometry_mismatch(own, &reported).map_or(Ok(()), Err)
    }

    /// Whether some aux node's clock is off the others' by more than the bound.
    pub(crate) fn any_clock_off(&self) -> bool {
        !self.clocks_off.lock().is_empty()
    }

    /// Wakes whenever placement changes (the value is the new epoch).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.epochs.subscribe()
    }

    /// Probes every `--probe-interval` until `stop`.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.settings.probe_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.probe_round().await,
                () = stop.cancelled() => return,
            }
        }
    }

    /// Rebuilds the view from the members; bumps the epoch if placement changed.
    fn publish(&self) {
        let members = self.members.lock().clone();
        let (slots, duplicates) = slots_of(&members);
        self.warn_about_new_duplicates(duplicates, &slots);
        let mut view = self.view.write();
        let placement_changed = view.placement_differs(&slots);
        if !placement_changed && !view.states_differ(&slots) {
            return;
        }
        let next = view.successor(slots, placement_changed);
        let epoch = next.epoch;
        *view = Arc::new(next);
        drop(view);
        if placement_changed {
            self.epochs.send_replace(epoch);
        }
    }
}

/// The ring's nodes: each identified member, one per identity. When two addresses
/// report one id the healthier wins (the first in address order on a tie); the
/// `(id, address)` of each live loser is returned to be warned about.
fn slots_of(members: &BTreeMap<String, Member>) -> (Slots, BTreeSet<(Arc<str>, String)>) {
    let mut slots = Slots::new();
    let mut duplicates = BTreeSet::new();
    for (address, member) in members {
        let Some(id) = &member.id else { continue };
        let candidate = Slot {
            node: Node {
                id: id.clone(),
                address: address.as_str().into(),
            },
            state: member.state,
            state_since: member.state_since,
            instance: member.instance,
        };
        match slots.get(id) {
            Some(held) if held.state.rank() <= candidate.state.rank() => {
                if held.state == NodeState::Up && candidate.state == NodeState::Up {
                    duplicates.insert((id.clone(), address.clone()));
                }
            }
            _ => {
                slots.insert(id.clone(), candidate);
            }
        }
    }
    (slots, duplicates)
}

/// The complaint about aux nodes (by name) configured for another geometry than
/// `own`, if any is. Nodes that take any geometry, or have not answered, are fine.
fn geometry_mismatch(own: Geometry, reported: &[(String, Option<Geometry>)]) -> Option<String> {
    let others: Vec<String> = reported
        .iter()
        .filter_map(|(name, geometry)| match geometry {
            Some(theirs) if *theirs != own => Some(format!("{name} stores {theirs}")),
            _ => None,
        })
        .collect();
    (!others.is_empty()).then(|| {
        format!(
            "this master writes {own} shards (--data-shards {} --parity-shards {}), but {}: give masters and aux nodes the same --data-shards and --parity-shards",
            own.data_shards,
            own.parity_shards,
            others.join(", ")
        )
    })
}

#[cfg(test)]
mod geometry_tests {
    use super::*;

    #[test]
    fn only_nodes_configured_for_another_geometry_are_a_mismatch() {
        let geometry = |data_shards, parity_shards| {
            Some(Geometry {
                data_shards,
                parity_shards,
            })
        };
        let own = geometry(3, 2).unwrap();
        let nodes = |reported: &[Option<Geometry>]| -> Vec<(String, Option<Geometry>)> {
            reported
                .iter()
                .enumerate()
                .map(|(index, geometry)| (format!("aux-{index}"), *geometry))
                .collect()
        };
        assert_eq!(geometry_mismatch(own, &nodes(&[])), None);
        assert_eq!(
            geometry_mismatch(own, &nodes(&[geometry(3, 2), None, geometry(3, 2)])),
            None
        );
        let problem = geometry_mismatch(
            own,
            &nodes(&[geometry(3, 2), geometry(2, 3), None, geometry(1, 2)]),
        )
        .unwrap();
        assert!(
            problem.starts_with("this master writes 3+2 shards"),
            "{problem}"
        );
        assert!(
            problem.contains("but aux-1 stores 2+3, aux-3 stores 1+2:"),
            "{problem}"
        );
    }
}
