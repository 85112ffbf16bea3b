//! Cluster membership and node health as one master sees them, and the placement
//! that follows from them.
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
//! (see [`Ring::walk`]), so a master that thinks a node is down and one that thinks
//! it was removed place shards alike. Masters that briefly disagree on a node's
//! state place some writes differently; reads tolerate it (they fall back to the
//! other nodes when the owners' answers are inconclusive) and repair moves such
//! shards to their owners.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use shardcache_common::aux_client::{AuxClient, PutOutcome};
use shardcache_common::ring::{Ring, DEFAULT_VNODES};
use shardcache_common::version::HybridClock;
use shardcache_common::wire::{AuxHealth, AuxStoreSummary, MembershipDoc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::xxh3_64;

/// How this master probes and judges aux nodes.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub seeds: Vec<String>,
    /// `name:port` resolved to many addresses (a headless service, a scaled service).
    pub dns: Option<String>,
    pub dns_refresh: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub suspect_after: u32,
    pub down_after: u32,
    pub repair_grace: Duration,
    /// Fewest members the admin API may leave: `k + m`.
    pub min_members: usize,
}

/// A node's health as this master judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    /// Missed a probe or more; still placed and asked, but not trusted to be there.
    Suspect,
    /// Missed `--down-after` probes: skipped by placement until it answers again.
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
        }
    }
}

/// Where a member address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Configured,
    Dns,
    Added,
}

/// An aux node a shard is placed on or read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: Arc<str>,
    pub address: Arc<str>,
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
        }
    }
}

/// One node on the ring, as placement sees it.
#[derive(Clone, Debug)]
struct Slot {
    node: Node,
    state: NodeState,
    state_since: Instant,
    instance: u64,
}

/// An immutable picture of the cluster: the ring and every node's state. Readers
/// take an `Arc` of it; a probe round that changes anything publishes a new one.
#[derive(Debug)]
pub struct View {
    /// Bumped whenever placement changes (a node joins, leaves, goes down or up,
    /// or restarts).
    pub epoch: u64,
    /// When placement last changed.
    pub changed_at: Instant,
    /// xxh3 of the sorted node identities: equal on masters that agree on members.
    pub ring_version: String,
    ring: Ring,
    slots: HashMap<Arc<str>, Slot>,
}

impl View {
    fn empty() -> Self {
        View {
            epoch: 0,
            changed_at: Instant::now(),
            ring_version: ring_version(&[]),
            ring: Ring::new(Vec::<String>::new(), DEFAULT_VNODES),
            slots: HashMap::new(),
        }
    }

    /// Every node that is not down, in `key`'s ring order: the first `k + m` are its
    /// owners, the rest are where a read falls back to.
    pub fn placement(&self, key: &str) -> Vec<Node> {
        self.ring
            .walk(key)
            .filter_map(|id| self.slots.get(id))
            .filter(|slot| slot.state != NodeState::Down)
            .map(|slot| slot.node.clone())
            .collect()
    }

    /// The first `count` nodes of [`placement`](Self::placement).
    pub fn owners(&self, key: &str, count: usize) -> Vec<Node> {
        let mut owners = self.placement(key);
        owners.truncate(count);
        owners
    }

    /// Nodes that answered their last probe.
    pub fn up_nodes(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self
            .slots
            .values()
            .filter(|slot| slot.state == NodeState::Up)
            .map(|slot| slot.node.clone())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// Down nodes that `key`'s ring walk meets before its `owners`-th live node:
    /// the nodes that owned the key before they went down, and may hold its shards.
    pub fn down_owners(&self, key: &str, owners: usize) -> usize {
        let mut live = 0;
        let mut down = 0;
        for slot in self.ring.walk(key).filter_map(|id| self.slots.get(id)) {
            if live == owners {
                break;
            }
            match slot.state {
                NodeState::Down => down += 1,
                _ => live += 1,
            }
        }
        down
    }

    /// Every node on the ring with its state.
    pub fn node_states(&self) -> impl Iterator<Item = (&str, NodeState)> {
        self.slots.values().map(|slot| (&*slot.node.id, slot.state))
    }

    /// Every node on the ring, whatever its state.
    pub fn all_nodes(&self) -> Vec<Node> {
        self.slots.values().map(|slot| slot.node.clone()).collect()
    }

    /// Why repair must not start yet, if it must not: a suspect node may be back in a
    /// moment, and a down node gets `--repair-grace` to return before its shards are
    /// rebuilt elsewhere.
    pub fn repair_blocker(&self, grace: Duration, now: Instant) -> Option<String> {
        let mut slots: Vec<&Slot> = self.slots.values().collect();
        slots.sort_by(|a, b| a.node.id.cmp(&b.node.id));
        for slot in slots {
            let for_how_long = now.saturating_duration_since(slot.state_since);
            match slot.state {
                NodeState::Suspect => {
                    return Some(format!("node {} is suspect", slot.node.id));
                }
                NodeState::Down if for_how_long < grace => {
                    return Some(format!(
                        "node {} is down ({}s); its shards are rebuilt after the {}s grace period",
                        slot.node.id,
                        for_how_long.as_secs(),
                        grace.as_secs()
                    ));
                }
                _ => {}
            }
        }
        None
    }
}

fn ring_version(ids: &[String]) -> String {
    format!("{:016x}", xxh3_64(ids.join("\n").as_bytes()))
}

/// Membership and health, shared by the data path, the repairer and the admin API.
pub struct Cluster {
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
}

#[derive(Default)]
struct DnsState {
    addresses: BTreeSet<String>,
    resolved_at: Option<Instant>,
}

/// Why an admin membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{0}")]
    Invalid(String),
    #[error("no aux node with id or address {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Refused(String),
}

impl Cluster {
    pub fn new(settings: ClusterSettings, client: AuxClient) -> Self {
        let now = Instant::now();
        let members = settings
            .seeds
            .iter()
            .map(|address| (address.clone(), Member::new(Source::Configured, now)))
            .collect();
        Cluster {
            settings,
            client,
            view: RwLock::new(Arc::new(View::empty())),
            members: Mutex::new(members),
            doc: Mutex::new(MembershipDoc::default()),
            dns: Mutex::new(DnsState::default()),
            clock: HybridClock::with_random_writer(),
            epochs: watch::channel(0).0,
            duplicate_ids: Mutex::default(),
        }
    }

    /// The current picture of the cluster.
    pub fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// Wakes whenever placement changes (the value is the new epoch).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epochs.subscribe()
    }

    /// Probes every `--probe-interval` until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.settings.probe_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.probe_round().await,
                () = stop.cancelled() => return,
            }
        }
    }

    /// Resolves DNS if due, probes every member once, and publishes the new view.
    pub async fn probe_round(&self) {
        self.refresh_dns().await;
        let addresses: Vec<String> = self.members.lock().keys().cloned().collect();
        let probes = addresses.into_iter().map(|address| {
            let client = self.client.clone();
            async move {
                let answer = client.health(&address).await;
                (address, answer)
            }
        });
        let answers = futures::future::join_all(probes).await;
        let newest_doc = self.record_probes(&answers);
        self.sync_membership(&answers, newest_doc).await;
        self.publish();
    }

    /// Folds one round of probe answers into the members' states. Returns the node
    /// holding the newest membership document, if it is newer than ours.
    fn record_probes(
        &self,
        answers: &[(
            String,
            Result<AuxHealth, shardcache_common::aux_client::AuxError>,
        )],
    ) -> Option<String> {
        let now = Instant::now();
        let our_version = self.doc.lock().version;
        let mut newest: Option<(shardcache_common::version::Version, String)> = None;
        let mut members = self.members.lock();
        for (address, answer) in answers {
            let Some(member) = members.get_mut(address) else {
                continue; // removed while the probe ran
            };
            let next_state = match answer {
                Ok(health) => {
                    if member.id.as_deref() != Some(health.node_id.as_str()) {
                        tracing::info!(%address, id = %health.node_id, "aux node identified");
                        member.id = Some(health.node_id.as_str().into());
                    }
                    if member.instance != 0 && member.instance != health.instance {
                        // Back before any probe missed it: it may have lost its shards,
                        // so placement counts as changed and repair looks again.
                        tracing::info!(%address, id = %health.node_id, "aux node restarted");
                        member.state_since = now;
                    }
                    member.instance = health.instance;
                    member.failures = 0;
                    member.last_error = None;
                    member.store = Some(health.store);
                    if let Some(version) = health.membership_version {
                        if version > our_version
                            && newest.as_ref().is_none_or(|(v, _)| version > *v)
                        {
                            newest = Some((version, address.clone()));
                        }
                    }
                    NodeState::Up
                }
                Err(error) => {
                    member.failures = member.failures.saturating_add(1);
                    member.last_error = Some(error.to_string());
                    if member.failures >= self.settings.down_after {
                        NodeState::Down
                    } else if member.failures >= self.settings.suspect_after {
                        NodeState::Suspect
                    } else {
                        member.state
                    }
                }
            };
            if next_state != member.state {
                let id = member.id.as_deref().unwrap_or("?");
                match next_state {
                    NodeState::Up => tracing::info!(%address, id, "aux node is up"),
                    NodeState::Suspect => {
                        tracing::warn!(%address, id, error = ?member.last_error, "aux node is suspect")
                    }
                    NodeState::Down => {
                        tracing::warn!(%address, id, error = ?member.last_error, "aux node is down")
                    }
                }
                member.state = next_state;
                member.state_since = now;
            }
        }
        newest.map(|(_, address)| address)
    }

    /// Adopts a newer membership document from `newest`, and offers ours to live
    /// nodes that hold an older one.
    async fn sync_membership(
        &self,
        answers: &[(
            String,
            Result<AuxHealth, shardcache_common::aux_client::AuxError>,
        )],
        newest: Option<String>,
    ) {
        if let Some(address) = newest {
            match self.client.membership(&address).await {
                Ok(Some(doc)) => self.adopt(doc),
                Ok(None) => {}
                Err(error) => tracing::debug!(%address, %error, "could not fetch membership"),
            }
        }
        let doc = self.doc.lock().clone();
        if doc == MembershipDoc::default() {
            return;
        }
        let behind = answers.iter().filter_map(|(address, answer)| match answer {
            Ok(health) if health.membership_version.is_none_or(|v| v < doc.version) => {
                Some(address.clone())
            }
            _ => None,
        });
        let offers = behind.map(|address| {
            let (client, doc) = (self.client.clone(), &doc);
            async move { (client.offer_membership(&address, doc).await, address) }
        });
        for (outcome, address) in futures::future::join_all(offers).await {
            if let Err(error) = outcome {
                tracing::debug!(%address, %error, "could not share membership");
            }
        }
    }

    /// Takes `doc` if it is newer than ours and applies it to the member list.
    fn adopt(&self, doc: MembershipDoc) {
        let mut ours = self.doc.lock();
        if doc.version <= ours.version {
            return;
        }
        self.clock.observe(doc.version);
        tracing::info!(version = %doc.version, added = ?doc.added, removed = ?doc.removed, "adopted membership changes");
        *ours = doc;
        drop(ours);
        self.reconcile_members();
    }

    /// Makes the member list configured ∪ DNS ∪ added − removed.
    fn reconcile_members(&self) {
        let doc = self.doc.lock().clone();
        let dns = self.dns.lock().addresses.clone();
        let mut wanted: BTreeMap<String, Source> = BTreeMap::new();
        for address in &doc.added {
            wanted.insert(address.clone(), Source::Added);
        }
        for address in &dns {
            wanted.insert(address.clone(), Source::Dns);
        }
        for address in &self.settings.seeds {
            wanted.insert(address.clone(), Source::Configured);
        }
        for address in &doc.removed {
            wanted.remove(address);
        }
        let now = Instant::now();
        let mut members = self.members.lock();
        members.retain(|address, _| wanted.contains_key(address));
        for (address, source) in wanted {
            members
                .entry(address)
                .and_modify(|member| member.source = source)
                .or_insert_with(|| Member::new(source, now));
        }
    }

    async fn refresh_dns(&self) {
        let Some(name) = &self.settings.dns else {
            return;
        };
        let due = self
            .dns
            .lock()
            .resolved_at
            .is_none_or(|at| at.elapsed() >= self.settings.dns_refresh);
        if !due {
            return;
        }
        let lookup = tokio::time::timeout(
            self.settings.probe_timeout,
            tokio::net::lookup_host(name.as_str()),
        )
        .await;
        let addresses: BTreeSet<String> = match lookup {
            Ok(Ok(addresses)) => addresses.map(|address| address.to_string()).collect(),
            Ok(Err(error)) => {
                tracing::warn!(%name, %error, "DNS lookup of aux nodes failed; keeping the last answer");
                return;
            }
            Err(_) => {
                tracing::warn!(%name, "DNS lookup of aux nodes timed out; keeping the last answer");
                return;
            }
        };
        let changed = {
            let mut dns = self.dns.lock();
            dns.resolved_at = Some(Instant::now());
            let changed = dns.addresses != addresses;
            if changed {
                tracing::info!(%name, ?addresses, "aux nodes resolved");
                dns.addresses = addresses;
            }
            changed
        };
        if changed {
            self.reconcile_members();
        }
    }

    /// Logs each address that reports an id another live address already has, once
    /// while the clash lasts.
    fn warn_about_new_duplicates(
        &self,
        duplicates: BTreeSet<(Arc<str>, String)>,
        slots: &HashMap<Arc<str>, Slot>,
    ) {
        let mut known = self.duplicate_ids.lock();
        for (id, address) in duplicates.difference(&known) {
            let first = slots.get(id).map(|slot| slot.node.address.clone());
            tracing::warn!(%id, first = ?first, second = %address, "two addresses report the same node id; using the first");
        }
        *known = duplicates;
    }

    /// Rebuilds the view from the members; bumps the epoch if placement changed.
    fn publish(&self) {
        let members = self.members.lock().clone();
        let mut slots: HashMap<Arc<str>, Slot> = HashMap::new();
        let mut duplicates = BTreeSet::new();
        for (address, member) in &members {
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
            let rank = |state: NodeState| match state {
                NodeState::Up => 0,
                NodeState::Suspect => 1,
                NodeState::Down => 2,
            };
            match slots.get(id) {
                Some(held) if rank(held.state) <= rank(candidate.state) => {
                    if held.state == NodeState::Up && candidate.state == NodeState::Up {
                        duplicates.insert((id.clone(), address.clone()));
                    }
                }
                _ => {
                    slots.insert(id.clone(), candidate);
                }
            }
        }
        self.warn_about_new_duplicates(duplicates, &slots);
        let mut ids: Vec<String> = slots.keys().map(|id| id.to_string()).collect();
        ids.sort();
        let mut view = self.view.write();
        let same_ring = view.ring.nodes() == ids.as_slice();
        let placement_of = |slots: &HashMap<Arc<str>, Slot>| {
            let mut placement: Vec<(String, String, bool, u64)> = slots
                .values()
                .map(|slot| {
                    (
                        slot.node.id.to_string(),
                        slot.node.address.to_string(),
                        slot.state != NodeState::Down,
                        slot.instance,
                    )
                })
                .collect();
            placement.sort();
            placement
        };
        let placement_changed = placement_of(&view.slots) != placement_of(&slots);
        let states_changed = placement_changed
            || slots.iter().any(|(id, slot)| {
                view.slots.get(id).is_none_or(|held| {
                    held.state != slot.state || held.state_since != slot.state_since
                })
            });
        if !states_changed {
            return;
        }
        let ring = if same_ring {
            view.ring.clone()
        } else {
            Ring::new(ids.iter().cloned(), DEFAULT_VNODES)
        };
        let epoch = view.epoch + u64::from(placement_changed);
        *view = Arc::new(View {
            epoch,
            changed_at: if placement_changed {
                Instant::now()
            } else {
                view.changed_at
            },
            ring_version: ring_version(&ids),
            ring,
            slots,
        });
        drop(view);
        if placement_changed {
            self.epochs.send_replace(epoch);
        }
    }

    /// Adds `address` as a member (admin API), shares the change, probes it at once.
    pub async fn add_node(&self, address: &str) -> Result<MembershipDoc, MembershipError> {
        let address = normalise_address(address)?;
        let doc = self.change_doc(|doc| {
            doc.removed.remove(&address);
            doc.added.insert(address.clone());
        });
        self.share(&doc).await;
        self.probe_round().await;
        Ok(doc)
    }

    /// Removes the member with identity or address `target` (admin API).
    pub async fn remove_node(&self, target: &str) -> Result<MembershipDoc, MembershipError> {
        let addresses: Vec<String> = {
            let members = self.members.lock();
            members
                .iter()
                .filter(|(address, member)| {
                    *address == target || member.id.as_deref() == Some(target)
                })
                .map(|(address, _)| address.clone())
                .collect()
        };
        if addresses.is_empty() {
            return Err(MembershipError::Unknown(target.to_owned()));
        }
        let remaining = {
            let members = self.members.lock();
            members
                .iter()
                .filter(|(address, _)| !addresses.contains(address))
                .filter_map(|(_, member)| member.id.clone())
                .collect::<BTreeSet<_>>()
                .len()
        };
        if remaining < self.settings.min_members {
            return Err(MembershipError::Refused(format!(
                "removing {target} would leave {remaining} aux nodes; k+m = {} are needed",
                self.settings.min_members
            )));
        }
        let doc = self.change_doc(|doc| {
            for address in &addresses {
                doc.added.remove(address);
                doc.removed.insert(address.clone());
            }
        });
        self.share(&doc).await;
        self.publish();
        Ok(doc)
    }

    /// Applies `change` to our membership document under a new version.
    fn change_doc(&self, change: impl FnOnce(&mut MembershipDoc)) -> MembershipDoc {
        let doc = {
            let mut doc = self.doc.lock();
            self.clock.observe(doc.version);
            change(&mut doc);
            doc.version = self.clock.next();
            doc.clone()
        };
        self.reconcile_members();
        doc
    }

    /// Offers `doc` to every member at once (best effort; probes finish the job).
    async fn share(&self, doc: &MembershipDoc) {
        let addresses: Vec<String> = self.members.lock().keys().cloned().collect();
        let offers = addresses
            .iter()
            .map(|address| self.client.offer_membership(address, doc));
        let outcomes = futures::future::join_all(offers).await;
        let stored = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Ok(PutOutcome::Stored)))
            .count();
        tracing::info!(version = %doc.version, stored, members = addresses.len(), "membership change shared");
    }

    /// The cluster as `GET /cluster` shows it (repair progress is added by the caller).
    pub fn describe(&self) -> serde_json::Value {
        let view = self.view();
        let now = Instant::now();
        let members = self.members.lock().clone();
        let nodes: Vec<serde_json::Value> = members
            .iter()
            .map(|(address, member)| {
                let on_ring = member
                    .id
                    .as_ref()
                    .and_then(|id| view.slots.get(id))
                    .is_some_and(|slot| *slot.node.address == **address);
                serde_json::json!({
                    "id": member.id.as_deref(),
                    "address": address,
                    "source": member.source,
                    "state": member.state,
                    "state_for_ms": now.saturating_duration_since(member.state_since).as_millis() as u64,
                    "on_ring": on_ring,
                    "consecutive_failures": member.failures,
                    "last_error": member.last_error,
                    "shards": member.store.map(|store| store.items),
                    "tombstones": member.store.map(|store| store.tombstones),
                    "bytes": member.store.map(|store| store.bytes),
                    "capacity_bytes": member.store.map(|store| store.capacity_bytes),
                })
            })
            .collect();
        serde_json::json!({
            "ring_version": view.ring_version,
            "placement_epoch": view.epoch,
            "placement_changed_ms_ago": now.saturating_duration_since(view.changed_at).as_millis() as u64,
            "nodes": nodes,
            "membership": *self.doc.lock(),
        })
    }
}

/// Checks an admin-supplied address: `host:port` with a numeric port.
fn normalise_address(address: &str) -> Result<String, MembershipError> {
    let address = address.trim();
    let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0)
    }) && !address.contains(['/', ' ', '?', '#']);
    if !valid {
        return Err(MembershipError::Invalid(format!(
            "address {address:?} is not host:port"
        )));
    }
    Ok(address.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        assert_eq!(
            normalise_address(" 10.0.0.1:7101 ").unwrap(),
            "10.0.0.1:7101"
        );
        assert!(normalise_address("aux-0.aux.default.svc:7101").is_ok());
        for bad in [
            "",
            "10.0.0.1",
            ":7101",
            "host:0",
            "host:99999",
            "a/b:1",
            "http://x:1",
        ] {
            assert!(normalise_address(bad).is_err(), "{bad:?}");
        }
    }

    fn slot(id: &str, state: NodeState, since: Instant) -> (Arc<str>, Slot) {
        let node = Node {
            id: id.into(),
            address: format!("{id}:1").into(),
        };
        (
            id.into(),
            Slot {
                node,
                state,
                state_since: since,
                instance: 1,
            },
        )
    }

    fn view_of(slots: Vec<(Arc<str>, Slot)>) -> View {
        let ids: Vec<String> = slots.iter().map(|(id, _)| id.to_string()).collect();
        View {
            epoch: 1,
            changed_at: Instant::now(),
            ring_version: ring_version(&ids),
            ring: Ring::new(ids, DEFAULT_VNODES),
            slots: slots.into_iter().collect(),
        }
    }

    #[test]
    fn placement_skips_down_nodes_like_a_ring_without_them() {
        let now = Instant::now();
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let with_down = view_of(
            names
                .iter()
                .map(|id| {
                    slot(
                        id,
                        if *id == "c" {
                            NodeState::Down
                        } else {
                            NodeState::Up
                        },
                        now,
                    )
                })
                .collect(),
        );
        let without = view_of(
            names
                .iter()
                .filter(|id| **id != "c")
                .map(|id| slot(id, NodeState::Up, now))
                .collect(),
        );
        for i in 0..2000 {
            let key = format!("key-{i}");
            assert_eq!(with_down.owners(&key, 5), without.owners(&key, 5));
            assert_eq!(with_down.placement(&key).len(), 6);
        }
    }

    #[test]
    fn down_owners_are_the_down_nodes_among_a_keys_former_owners() {
        let now = Instant::now();
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let all_up = view_of(
            names
                .iter()
                .map(|id| slot(id, NodeState::Up, now))
                .collect(),
        );
        let down = ["c", "f"];
        let two_down = view_of(
            names
                .iter()
                .map(|id| {
                    let state = match down.contains(id) {
                        true => NodeState::Down,
                        false => NodeState::Up,
                    };
                    slot(id, state, now)
                })
                .collect(),
        );
        let down_among = |nodes: Vec<Node>| {
            nodes
                .iter()
                .filter(|node| down.contains(&&*node.id))
                .count()
        };
        for i in 0..2000 {
            let key = format!("key-{i}");
            let counted = two_down.down_owners(&key, 5);
            // Every node that owned the key while all were up may hold a shard...
            assert!(counted >= down_among(all_up.owners(&key, 5)), "{key}");
            // ...and so may one that took over from a node that went down first:
            // the count is the down nodes among the first 5 + counted of the walk.
            assert_eq!(
                down_among(all_up.owners(&key, 5 + counted)),
                counted,
                "{key}"
            );
            assert_eq!(all_up.down_owners(&key, 5), 0);
        }
    }

    #[test]
    fn repair_waits_for_suspects_and_for_the_grace_period() {
        let start = Instant::now();
        let grace = Duration::from_secs(30);
        let suspect = view_of(vec![
            slot("a", NodeState::Up, start),
            slot("b", NodeState::Suspect, start),
        ]);
        assert!(suspect
            .repair_blocker(grace, start)
            .unwrap()
            .contains("suspect"));
        let down = view_of(vec![
            slot("a", NodeState::Up, start),
            slot("b", NodeState::Down, start),
        ]);
        assert!(down
            .repair_blocker(grace, start + Duration::from_secs(29))
            .is_some());
        assert!(down
            .repair_blocker(grace, start + Duration::from_secs(30))
            .is_none());
    }
}
