//! The health-probe round: every member's `/health` at once, each answer (or
//! failure) folded into the member's state, and the warnings about two addresses
//! that report one node id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use shardcache_common::aux_client::AuxError;
use shardcache_common::version::Version;
use shardcache_common::wire::AuxHealth;

use super::{Cluster, ClusterSettings, Member, NodeState, Slots};

/// One member's answer to a probe, by address.
pub(super) type ProbeAnswer = (String, Result<AuxHealth, AuxError>);

impl Cluster {
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
    fn record_probes(&self, answers: &[ProbeAnswer]) -> Option<String> {
        let now = Instant::now();
        let our_version = self.doc.lock().version;
        let mut newest: Option<(Version, String)> = None;
        let mut members = self.members.lock();
        for (address, answer) in answers {
            let Some(member) = members.get_mut(address) else {
                continue; // removed while the probe ran
            };
            let next_state = match answer {
                Ok(health) => {
                    member.heard(address, health, now);
                    if let Some(version) = health.membership_version {
                        if version > our_version
                            && newest.as_ref().is_none_or(|(v, _)| version > *v)
                        {
                            newest = Some((version, address.clone()));
                        }
                    }
                    NodeState::Up
                }
                Err(error) => member.missed(error, &self.settings),
            };
            member.enter(next_state, address, now);
        }
        newest.map(|(_, address)| address)
    }

    /// Logs each address that reports an id another live address already has, once
    /// while the clash lasts.
    pub(super) fn warn_about_new_duplicates(
        &self,
        duplicates: BTreeSet<(Arc<str>, String)>,
        slots: &Slots,
    ) {
        let mut known = self.duplicate_ids.lock();
        for (id, address) in duplicates.difference(&known) {
            let first = slots.get(id).map(|slot| slot.node.address.clone());
            tracing::warn!(%id, first = ?first, second = %address, "two addresses report the same node id; using the first");
        }
        *known = duplicates;
    }
}

impl Member {
    /// Takes in an answer to a probe: the node's identity, instance and store.
    fn heard(&mut self, address: &str, health: &AuxHealth, now: Instant) {
        if self.id.as_deref() != Some(health.node_id.as_str()) {
            tracing::info!(%address, id = %health.node_id, "aux node identified");
            self.id = Some(health.node_id.as_str().into());
        }
        if self.instance != 0 && self.instance != health.instance {
            // Back before any probe missed it: it may have lost its shards,
            // so placement counts as changed and repair looks again.
            tracing::info!(%address, id = %health.node_id, "aux node restarted");
            self.state_since = now;
        }
        self.instance = health.instance;
        self.failures = 0;
        self.last_error = None;
        self.store = Some(health.store);
    }

    /// Counts a failed probe; returns the state the failures so far call for.
    fn missed(&mut self, error: &AuxError, settings: &ClusterSettings) -> NodeState {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error.to_string());
        if self.failures >= settings.down_after {
            NodeState::Down
        } else if self.failures >= settings.suspect_after {
            NodeState::Suspect
        } else {
            self.state
        }
    }

    /// Moves to `next` (logging the change), if it is a change.
    fn enter(&mut self, next: NodeState, address: &str, now: Instant) {
        if next == self.state {
            return;
        }
        let id = self.id.as_deref().unwrap_or("?");
        match next {
            NodeState::Up => tracing::info!(%address, id, "aux node is up"),
            NodeState::Suspect => {
                tracing::warn!(%address, id, error = ?self.last_error, "aux node is suspect")
            }
            NodeState::Down => {
                tracing::warn!(%address, id, error = ?self.last_error, "aux node is down")
            }
        }
        self.state = next;
        self.state_since = now;
    }
}
