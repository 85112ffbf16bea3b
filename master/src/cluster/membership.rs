//! Run-time membership: the admin API's add and remove, the shared
//! [`MembershipDoc`] (fetched when a probe shows a newer one, adopted, and offered
//! to nodes holding an older one), DNS discovery, and the member list that follows
//! from them: configured ∪ DNS ∪ added − removed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use shardcache_common::aux_client::PutOutcome;
use shardcache_common::wire::MembershipDoc;

use crate::error::ApiError;

use super::probe::ProbeAnswer;
use super::{Cluster, Member, Source};

/// Why an admin membership change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MembershipError {
    #[error("{0}")]
    Invalid(String),
    #[error("no aux node with id or address {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Refused(String),
}

/// Membership changes asked for through the admin API fail with these statuses.
impl From<MembershipError> for ApiError {
    fn from(error: MembershipError) -> Self {
        match error {
            MembershipError::Invalid(_) => ApiError::BadRequest(error.to_string()),
            MembershipError::Unknown(_) => ApiError::NotFound(error.to_string()),
            MembershipError::Refused(_) => ApiError::Conflict(error.to_string()),
        }
    }
}

/// The addresses `--aux-dns` last resolved to, and when.
#[derive(Default)]
pub(super) struct DnsState {
    addresses: BTreeSet<String>,
    resolved_at: Option<Instant>,
}

impl Cluster {
    /// Adds `address` as a member (admin API), shares the change, probes it at once.
    pub(crate) async fn add_node(&self, address: &str) -> Result<MembershipDoc, MembershipError> {
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
    pub(crate) async fn remove_node(&self, target: &str) -> Result<MembershipDoc, MembershipError> {
        let addresses = self.addresses_of(target);
        if addresses.is_empty() {
            return Err(MembershipError::Unknown(target.to_owned()));
        }
        let remaining = self.identities_without(&addresses);
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

    /// The member addresses that are `target` or report it as their identity.
    fn addresses_of(&self, target: &str) -> Vec<String> {
        let members = self.members.lock();
        members
            .iter()
            .filter(|(address, member)| *address == target || member.id.as_deref() == Some(target))
            .map(|(address, _)| address.clone())
            .collect()
    }

    /// How many distinct known identities the members other than `addresses` have.
    fn identities_without(&self, addresses: &[String]) -> usize {
        let members = self.members.lock();
        members
            .iter()
            .filter(|(address, _)| !addresses.contains(address))
            .filter_map(|(_, member)| member.id.clone())
            .collect::<BTreeSet<_>>()
            .len()
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

    /// Adopts a newer membership document from `newest`, and offers ours to live
    /// nodes that hold an older one.
    pub(super) async fn sync_membership(&self, answers: &[ProbeAnswer], newest: Option<String>) {
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
        let behind = answers
            .iter()
            .filter_map(|(address, answer, _)| match answer {
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
        let wanted = self.wanted_members();
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

    /// Every address that should be a member, with where it comes from (a
    /// configured address counts as configured even if DNS or an admin named it too).
    fn wanted_members(&self) -> BTreeMap<String, Source> {
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
        wanted
    }

    /// Resolves `--aux-dns` when `--dns-refresh` has passed; a failed or slow lookup
    /// keeps the last answer. A changed answer changes the member list.
    pub(super) async fn refresh_dns(&self) {
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
        if self.dns_answer_changed(name, addresses) {
            self.reconcile_members();
        }
    }

    /// Records a DNS answer; true if it differs from the last one.
    fn dns_answer_changed(&self, name: &str, addresses: BTreeSet<String>) -> bool {
        let mut dns = self.dns.lock();
        dns.resolved_at = Some(Instant::now());
        let changed = dns.addresses != addresses;
        if changed {
            tracing::info!(%name, ?addresses, "aux nodes resolved");
            dns.addresses = addresses;
        }
        changed
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
}
