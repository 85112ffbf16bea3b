//! The health-probe round: every member's `/health` at once, each answer (or
//! failure) folded into the member's state, and the warnings about two addresses
//! that report one node id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use shardcache_common::aux_client::AuxError;
use shardcache_common::unix_millis;
use shardcache_common::version::Version;
use shardcache_common::wire::AuxHealth;

use super::clock::{self, ClockSample};
use super::{Cluster, ClusterSettings, Member, NodeState, Slots};

/// One member's answer to a probe, by address, with what it said of its clock.
pub(super) type ProbeAnswer = (String, Result<AuxHealth, AuxError>, Option<ClockSample>);

impl Cluster {
    /// Resolves DNS if due, probes every member once, and publishes the new view.
    pub(crate) async fn probe_round(&self) {
        self.refresh_dns().await;
        let addresses: Vec<String> = self.members.lock().keys().cloned().collect();
        let probes = addresses.into_iter().map(|address| {
            let client = self.client.clone();
            async move {
                let sent_ms = unix_millis();
                let answer = client.health(&address).await;
                let received_ms = unix_millis();
                let clock = answer.as_ref().ok().and_then(|health| {
                    let aux_ms = health.unix_ms?;
                    Some(ClockSample::from_probe(sent_ms, received_ms, aux_ms))
                });
                (address, answer, clock)
            }
        });
        let answers = futures::future::join_all(probes).await;
        let newest_doc = self.record_probes(&answers);
        self.judge_clocks();
        self.sync_membership(&answers, newest_doc).await;
        self.publish();
    }

    /// Works out this master's lead over the aux nodes from their latest samples;
    /// logs when it crosses `--max-clock-skew` either way, and each node whose own
    /// clock is that far from the others'.
    fn judge_clocks(&self) {
        let max_skew_ms = self.settings.max_clock_skew.as_millis() as u64;
        let members = self.members.lock();
        let up_samples: Vec<ClockSample> = members
            .values()
            .filter(|member| member.state == NodeState::Up)
            .filter_map(|member| member.clock)
            .collect();
        let report = clock::master_lead(&up_samples, max_skew_ms);
        let mut previous = self.clock_report.lock();
        if report.beyond_bound != previous.beyond_bound {
            if report.beyond_bound {
                tracing::error!(
                    lead_ms = report.lead_ms,
                    uncertainty_ms = report.uncertainty_ms,
                    max_skew_ms,
                    "this master's clock is off the aux nodes' by more than --max-clock-skew; refusing writes until it is fixed"
                );
            } else {
                tracing::info!(
                    lead_ms = report.lead_ms,
                    "this master's clock is back within --max-clock-skew; writes accepted"
                );
            }
        }
        *previous = report;
        drop(previous);
        let mut off = self.clocks_off.lock();
        for (address, member) in members.iter() {
            let is_off = member
                .clock
                .is_some_and(|sample| clock::node_is_off(sample, &report));
            if is_off && off.insert(address.clone()) {
                tracing::warn!(%address, id = member.id.as_deref().unwrap_or("?"), offset_ms = member.clock.map(|c| c.offset_ms), "aux node's clock is off the other nodes' by more than --max-clock-skew: its TTLs run early or late and it refuses writes");
            } else if !is_off && off.remove(address) {
                tracing::info!(%address, "aux node's clock is back within --max-clock-skew");
            }
        }
    }

    /// Folds one round of probe answers into the members' states. Returns the node
    /// holding the newest membership document, if it is newer than ours.
    fn record_probes(&self, answers: &[ProbeAnswer]) -> Option<String> {
        let now = Instant::now();
        let our_version = self.doc.lock().version;
        let mut newest: Option<(Version, String)> = None;
        let mut members = self.members.lock();
        for (address, answer, clock) in answers {
            let Some(member) = members.get_mut(address) else {
                continue; // removed while the probe ran
            };
            let next_state = match answer {
                Ok(health) => {
                    member.heard(address, health, now);
                    member.clock = *clock;
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
        self.geometry = health.geometry;
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
