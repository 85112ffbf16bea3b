//! The cluster as `GET /cluster` shows it: ring version, placement epoch, this
//! master's clock against the aux nodes', every member with its state, store figures
//! and clock offset, and the membership document. The
//! admin API adds the parts that are not the cluster's own (geometry, read-repair
//! count, repair progress) next to these fields.

use std::time::Instant;

use serde::Serialize;
use shardcache_common::wire::MembershipDoc;

use super::{ClockReport, Cluster, Member, NodeState, Source, View};

/// This master's picture of the cluster, field for field as `GET /cluster` shows
/// it (the order of the fields is the order of the JSON keys).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ClusterReport {
    /// See [`View::ring_version`].
    pub(crate) ring_version: String,
    /// See [`View::epoch`].
    pub(crate) placement_epoch: u64,
    pub(crate) placement_changed_ms_ago: u64,
    /// This master's clock against the aux nodes'.
    pub(crate) clock: ClockReport,
    /// Every member, by address.
    pub(crate) nodes: Vec<NodeReport>,
    pub(crate) membership: MembershipDoc,
}

/// One member address as `GET /cluster` shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NodeReport {
    /// The identity it reported; `None` until it has answered a probe.
    pub(crate) id: Option<String>,
    pub(crate) address: String,
    pub(crate) source: Source,
    pub(crate) state: NodeState,
    pub(crate) state_for_ms: u64,
    /// False while it is not on the ring: never identified, or another address
    /// with its identity is used instead.
    pub(crate) on_ring: bool,
    pub(crate) consecutive_failures: u32,
    pub(crate) last_error: Option<String>,
    /// The store figures of its last answer: live shards, …
    pub(crate) shards: Option<u64>,
    pub(crate) tombstones: Option<u64>,
    pub(crate) bytes: Option<u64>,
    pub(crate) capacity_bytes: Option<u64>,
    /// Its clock minus this master's, from its last answer, give or take
    /// `clock_uncertainty_ms`.
    pub(crate) clock_offset_ms: Option<i64>,
    pub(crate) clock_uncertainty_ms: Option<u64>,
    /// Whether its clock is off the other nodes' by more than --max-clock-skew.
    pub(crate) clock_off: bool,
}

impl Cluster {
    /// The cluster as `GET /cluster` shows it (the admin API adds the rest).
    pub(crate) fn report(&self) -> ClusterReport {
        let view = self.view();
        let now = Instant::now();
        let members = self.members.lock().clone();
        let clock = self.clock_report();
        let nodes = members
            .iter()
            .map(|(address, member)| NodeReport::of(address, member, &view, &clock, now))
            .collect();
        ClusterReport {
            ring_version: view.ring_version.clone(),
            placement_epoch: view.epoch,
            placement_changed_ms_ago: millis_since(view.changed_at, now),
            clock,
            nodes,
            membership: self.doc.lock().clone(),
        }
    }
}

impl NodeReport {
    fn of(address: &str, member: &Member, view: &View, clock: &ClockReport, now: Instant) -> Self {
        let on_ring = member
            .id
            .as_ref()
            .and_then(|id| view.slots.get(id))
            .is_some_and(|slot| *slot.node.address == *address);
        let store = member.store;
        NodeReport {
            id: member.id.as_deref().map(str::to_owned),
            address: address.to_owned(),
            source: member.source,
            state: member.state,
            state_for_ms: millis_since(member.state_since, now),
            on_ring,
            consecutive_failures: member.failures,
            last_error: member.last_error.clone(),
            shards: store.map(|store| store.items),
            tombstones: store.map(|store| store.tombstones),
            bytes: store.map(|store| store.bytes),
            capacity_bytes: store.map(|store| store.capacity_bytes),
            clock_offset_ms: member.clock.map(|sample| sample.offset_ms),
            clock_uncertainty_ms: member.clock.map(|sample| sample.uncertainty_ms),
            clock_off: member
                .clock
                .is_some_and(|sample| super::clock::node_is_off(sample, clock)),
        }
    }
}

fn millis_since(then: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(then).as_millis() as u64
}
