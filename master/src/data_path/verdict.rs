//! What the shards a read saw mean — the read's verdict, a pure function of what
//! the owners answered. **This is where it is decided whether a GET answers a value,
//! 404 or 503.** [`verdict`] and [`ReadFloors`] decide; the read path only gathers
//! the answers ([`SeenVersions`]), decodes what the verdict names, and retries a
//! partial read a few times before it takes [`Verdict::Partial`] as final.
//!
//! A GET answers **503** when:
//! - fewer owners answered than a miss needs ([`ReadFloors::miss`]), or an owner
//!   failed while only partial versions were seen: the missing shards may be there;
//! - after the retries, a version newer than the newest decodable one (or the
//!   newest tombstone) is still partial, and the nodes holding any newer version,
//!   with those that failed or are down, make a write quorum: some newer write may
//!   have been acknowledged (later racing writes may have replaced some of its
//!   shards), and the older value or delete would wrongly stand for it
//!   ([`Verdict::Unsettled`]). A write still in flight on fewer nodes, or one that
//!   died half-way, never could;
//! - as many of the key's owners are down as a write needs: every shard of an
//!   acknowledged write may be on them;
//! - after the retries, only partial versions were seen and the down owners may hold
//!   enough of the missing shards (`Partial { recoverable: true }`);
//! - the newest version with `k` shards fails to decode or to verify (the read path
//!   reports that; stored data is then corrupt or inconsistent).
//!
//! It answers **404** for no version at all, a newest tombstone, or partial versions
//! that down owners cannot complete (leftovers of a write that never reached its
//! quorum); and **200** with the newest version that has `k` shards otherwise.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use shardcache_common::frame::ShardFrame;
use shardcache_common::version::Version;

use crate::cluster::Node;

/// How many owners must have answered before a read may conclude.
///
/// An acknowledged write (or delete) reached `W` owners. If up to `m` of those later
/// lose it (restarted empty, or restored from an older snapshot, possibly holding an
/// older version), `W - m` still hold it, so hearing from `n - (W - m) + 1` owners
/// guarantees seeing it: only then may the newest version seen be trusted without
/// waiting for the rest. With `k + m` owners and `W = k + 1` that is all but one,
/// so one slow or hung owner still costs nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadFloors {
    /// Answers after which a decodable newest version (or tombstone) is returned.
    pub(crate) settle: usize,
    /// Answers needed for a miss to be a 404 rather than a 503: enough to include a
    /// shard of every acknowledged write while no owner has lost data.
    pub(crate) miss: usize,
    /// The write quorum `W` the floors were derived from.
    write_quorum: usize,
}

impl ReadFloors {
    pub(crate) fn new(owners: usize, write_quorum: usize, parity_shards: usize) -> Self {
        let write_quorum = write_quorum.min(owners);
        let survivors = write_quorum.saturating_sub(parity_shards).max(1);
        ReadFloors {
            settle: owners + 1 - survivors,
            miss: owners + 1 - write_quorum,
            write_quorum,
        }
    }
}

/// What the nodes asked for one key answered, grouped by version.
#[derive(Default)]
pub(crate) struct SeenVersions {
    pub(crate) versions: BTreeMap<Version, VersionShards>,
    /// What each node that answered holds: a version, or nothing (`None`).
    pub(crate) answers: HashMap<Arc<str>, Option<Version>>,
    /// Nodes that answered (with a shard, a tombstone or "none").
    pub(crate) answered: usize,
    /// Nodes that failed or timed out.
    pub(crate) failures: usize,
    /// The key's owners that are down, so were not asked (they may hold shards).
    pub(crate) down_owners: usize,
}

/// The shards of one version that a read saw.
#[derive(Default)]
pub(crate) struct VersionShards {
    pub(crate) tombstone: bool,
    /// A tombstone frame of this version, to copy when repairing a delete.
    pub(crate) template: Option<ShardFrame>,
    /// Distinct shard indices of one write; all share its header fields.
    pub(crate) frames: Vec<ShardFrame>,
}

impl VersionShards {
    /// Shards needed to decode: `k` of the write (unknown, so never, without frames).
    fn needed(&self) -> usize {
        self.frames
            .first()
            .map_or(usize::MAX, |frame| usize::from(frame.data_shards))
    }
}

impl SeenVersions {
    /// True when a node asked failed, or answered without a shard of `version`.
    pub(crate) fn is_degraded(&self, version: Version) -> bool {
        self.failures > 0
            || self
                .answers
                .values()
                .any(|held| held.is_none_or(|held| held < version))
    }

    pub(crate) fn add_none(&mut self, node: Node) {
        self.answered += 1;
        self.answers.insert(node.id, None);
    }

    pub(crate) fn add_failure(&mut self) {
        self.failures += 1;
    }

    pub(crate) fn add(&mut self, node: Node, frame: ShardFrame) {
        self.answered += 1;
        self.answers.insert(node.id, Some(frame.version));
        let shards = self.versions.entry(frame.version).or_default();
        if frame.tombstone {
            shards.tombstone = true;
            shards.template.get_or_insert(frame);
            return;
        }
        let same_write = |held: &ShardFrame| {
            (
                held.value_len,
                held.value_checksum,
                held.data_shards,
                held.parity_shards,
            ) == (
                frame.value_len,
                frame.value_checksum,
                frame.data_shards,
                frame.parity_shards,
            )
        };
        let duplicate = shards
            .frames
            .iter()
            .any(|held| held.shard_index == frame.shard_index);
        if !duplicate && shards.frames.first().is_none_or(same_write) {
            shards.frames.push(frame);
        }
    }

    /// Whether the newest version seen so far can be answered with: a tombstone, or
    /// enough shards to decode. A miss is never settled early: owners that lost their
    /// data (restarted empty) answer "none" fastest, so a miss waits for every owner.
    pub(crate) fn newest_is_settled(&self) -> bool {
        self.versions
            .last_key_value()
            .is_some_and(|(_, shards)| shards.tombstone || shards.frames.len() >= shards.needed())
    }
}

/// What a read's answers mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Decode this version: the newest with `k` shards, no tombstone above it.
    Decode(Version),
    /// Deleted: a tombstone is the newest version.
    Deleted(Version),
    /// No value: never written, or expired.
    Absent,
    /// Every needed owner answered, but no version had `k` shards. `recoverable`
    /// when down owners may hold enough of the missing shards to make one decodable.
    Partial { recoverable: bool },
    /// Too little was heard to tell a miss from a value on nodes that did not
    /// answer; the reason names the counts.
    Unavailable(String),
    /// A write newer than the newest readable version (or delete) may have been
    /// acknowledged, but none of it is readable yet: writes racing past it, or its
    /// shards on nodes that failed or are down. Retried like a partial read (racing
    /// writes land within milliseconds), then unavailable.
    Unsettled(String),
}

impl Verdict {
    /// Whether the nodes beyond the owners should be asked too: the owners could not
    /// say, or said "absent" while shards may still sit under an older placement.
    pub(crate) fn is_inconclusive(&self, placement_changed_recently: bool) -> bool {
        match self {
            Verdict::Partial { .. } | Verdict::Unavailable(_) | Verdict::Unsettled(_) => true,
            Verdict::Absent => placement_changed_recently,
            Verdict::Decode(_) | Verdict::Deleted(_) => false,
        }
    }
}

/// The verdict on what `seen` holds: the newest decodable version, unless a newer
/// tombstone says the key was deleted; otherwise a miss, a partial read or
/// unavailable, as the module docs list.
pub(crate) fn verdict(seen: &SeenVersions, floors: ReadFloors) -> Verdict {
    // The most shards any undecodable version has, and how many it needs.
    let mut partial: Option<(usize, usize)> = None;
    // Whether the owners that did not answer may hold the rest of a partial version.
    let may_complete =
        |(most, needed): (usize, usize)| seen.failures > 0 || most + seen.down_owners >= needed;
    // Whether some write newer than `version` may have been acknowledged: `W` nodes
    // stored it, and each is one that holds a newer version now (the newer write's
    // own shard, or a later racing write's that replaced it) or one that did not
    // answer or is down. Counting every newer holder, not only one version's, is
    // what keeps writers racing past an acknowledged write from hiding it.
    let newer_may_be_acknowledged = |version: &Version| {
        let newer_holders = seen
            .answers
            .values()
            .filter(|held| held.is_some_and(|held| held > *version))
            .count();
        newer_holders > 0 && newer_holders + seen.failures + seen.down_owners >= floors.write_quorum
    };
    for (version, shards) in seen.versions.iter().rev() {
        let settles = shards.tombstone || shards.frames.len() >= shards.needed();
        if !settles {
            let (most, needed) = partial.unwrap_or((0, shards.needed()));
            partial = Some((most.max(shards.frames.len()), needed));
            continue;
        }
        // An older value or an older delete is only the answer when no newer
        // version seen in part may have been acknowledged.
        if newer_may_be_acknowledged(version) {
            return Verdict::Unsettled(format!(
                "a newer version than {version} has too few shards to read, and {} failed \
                 and {} of its owners are down",
                seen.failures, seen.down_owners
            ));
        }
        return match shards.tombstone {
            true => Verdict::Deleted(*version),
            false => Verdict::Decode(*version),
        };
    }
    // Nothing decodable. Owners that did not answer may hold what is missing;
    // and when as many of the key's owners are down as a write needs, every
    // shard of an acknowledged write may be on them.
    if (partial.is_some() && seen.failures > 0)
        || seen.answered < floors.miss
        || seen.down_owners >= floors.write_quorum
    {
        return Verdict::Unavailable(format!(
            "{} answered, {} failed, {} of its owners down",
            seen.answered, seen.failures, seen.down_owners
        ));
    }
    match partial {
        Some(partial) => Verdict::Partial {
            recoverable: may_complete(partial),
        },
        None => Verdict::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn read_floors_tolerate_m_lost_owners_and_one_slow_one() {
        // 3+2, W=4: trust the newest version after 4 answers; a miss needs 2.
        let floors = ReadFloors::new(5, 4, 2);
        assert_eq!((floors.settle, floors.miss), (4, 2));
        // 1+2 replication, W=2: all 3 owners before trusting; a miss needs 2.
        let floors = ReadFloors::new(3, 2, 2);
        assert_eq!((floors.settle, floors.miss), (3, 2));
        // W = k+m: every owner has every acknowledged write.
        let floors = ReadFloors::new(5, 5, 2);
        assert_eq!((floors.settle, floors.miss), (3, 1));
    }

    fn version(timestamp: u64) -> Version {
        Version {
            timestamp,
            writer: 1,
        }
    }

    fn frame(timestamp: u64, index: u8, tombstone: bool) -> ShardFrame {
        ShardFrame {
            key: "k".into(),
            version: version(timestamp),
            tombstone,
            shard_index: index,
            data_shards: 3,
            parity_shards: 2,
            expiry_ms: 0,
            value_len: if tombstone { 0 } else { 3 },
            value_checksum: 0,
            payload: if tombstone {
                Bytes::new()
            } else {
                Bytes::from_static(b"x")
            },
        }
    }

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            address: id.into(),
        }
    }

    #[test]
    fn the_newest_version_settles_only_once_decodable_or_deleted() {
        let mut seen = SeenVersions::default();
        assert!(
            !seen.newest_is_settled(),
            "nothing seen is never settled early"
        );
        seen.add(node("n"), frame(1, 0, false));
        seen.add(node("n"), frame(1, 1, false));
        seen.add(node("n"), frame(1, 1, false));
        assert!(
            !seen.newest_is_settled(),
            "a duplicate index does not count twice"
        );
        seen.add(node("n"), frame(1, 2, false));
        assert!(seen.newest_is_settled());
        seen.add(node("n"), frame(2, 0, false));
        assert!(
            !seen.newest_is_settled(),
            "a newer partial version is not settled"
        );
        seen.add(node("n"), frame(3, 4, true));
        assert!(seen.newest_is_settled(), "a newer tombstone is");
        assert_eq!(seen.answered, 6);
    }

    /// One answer of an owner: a shard `(version, index)`, a tombstone of a
    /// version, "none", or a failure.
    #[derive(Clone, Copy)]
    enum Answer {
        Shard(u64, u8),
        Tombstone(u64),
        None,
        Failed,
    }
    use Answer::*;

    fn seen(answers: &[Answer], down_owners: usize) -> SeenVersions {
        let mut seen = SeenVersions {
            down_owners,
            ..SeenVersions::default()
        };
        for (n, answer) in answers.iter().enumerate() {
            let node = node(&format!("aux-{n}"));
            match *answer {
                Shard(timestamp, index) => seen.add(node, frame(timestamp, index, false)),
                Tombstone(timestamp) => seen.add(node, frame(timestamp, 0, true)),
                None => seen.add_none(node),
                Failed => seen.add_failure(),
            }
        }
        seen
    }

    /// Every case the module docs name, for 3+2 with W = 4 (a miss needs 2 answers).
    #[test]
    fn verdicts_follow_the_documented_table() {
        let floors = ReadFloors::new(5, 4, 2);
        let unavailable = |text: &str| Verdict::Unavailable(text.to_owned());
        let unsettled = |text: &str| Verdict::Unsettled(text.to_owned());
        let cases: Vec<(&str, Vec<Answer>, usize, Verdict)> = vec![
            (
                "every owner has the value",
                vec![
                    Shard(5, 0),
                    Shard(5, 1),
                    Shard(5, 2),
                    Shard(5, 3),
                    Shard(5, 4),
                ],
                0,
                Verdict::Decode(version(5)),
            ),
            (
                "k shards and two failures still decode",
                vec![Shard(5, 0), Failed, Shard(5, 2), Failed, Shard(5, 4)],
                0,
                Verdict::Decode(version(5)),
            ),
            (
                "a newer tombstone deletes",
                vec![
                    Shard(5, 0),
                    Shard(5, 1),
                    Shard(5, 2),
                    Tombstone(6),
                    Tombstone(6),
                ],
                0,
                Verdict::Deleted(version(6)),
            ),
            (
                "an older tombstone loses to a newer value",
                vec![Tombstone(4), Shard(5, 1), Shard(5, 2), Shard(5, 3), None],
                0,
                Verdict::Decode(version(5)),
            ),
            (
                "a newer partial version nobody can complete falls back to an older one",
                vec![Shard(6, 0), Shard(5, 1), Shard(5, 2), Shard(5, 3), None],
                0,
                Verdict::Decode(version(5)),
            ),
            (
                "a newer partial version too small to be acknowledged, with a failure",
                vec![Shard(6, 0), Shard(5, 1), Shard(5, 2), Shard(5, 3), Failed],
                0,
                Verdict::Decode(version(5)),
            ),
            (
                "a newer partial version that down owners may make a quorum",
                vec![
                    Shard(6, 0),
                    Shard(6, 1),
                    Shard(5, 2),
                    Shard(5, 3),
                    Shard(5, 4),
                ],
                2,
                unsettled(
                    "a newer version than 0000000000000005-0000000000000001 has too few \
                     shards to read, and 0 failed and 2 of its owners are down",
                ),
            ),
            (
                "an older tombstone under a newer partial version that may be acknowledged",
                vec![Tombstone(5), Shard(6, 1), Shard(6, 2), Failed, Failed],
                0,
                unsettled(
                    "a newer version than 0000000000000005-0000000000000001 has too few \
                     shards to read, and 2 failed and 0 of its owners are down",
                ),
            ),
            (
                "an older tombstone under a newer partial version too small to be acknowledged",
                vec![Tombstone(5), Shard(6, 1), Tombstone(5), Tombstone(5), None],
                0,
                Verdict::Deleted(version(5)),
            ),
            (
                "racing newer writes, each partial, may together hide an acknowledged one",
                vec![Tombstone(4), Shard(6, 1), Shard(6, 2), Shard(7, 3), Failed],
                0,
                unsettled(
                    "a newer version than 0000000000000004-0000000000000001 has too few \
                     shards to read, and 1 failed and 0 of its owners are down",
                ),
            ),
            (
                "racing newer writes on every owner: unsettled, so the read retries",
                vec![
                    Tombstone(4),
                    Shard(6, 1),
                    Shard(6, 2),
                    Shard(7, 3),
                    Shard(7, 4),
                ],
                0,
                unsettled(
                    "a newer version than 0000000000000004-0000000000000001 has too few \
                     shards to read, and 0 failed and 0 of its owners are down",
                ),
            ),
            (
                "nothing anywhere is absent",
                vec![None; 5],
                0,
                Verdict::Absent,
            ),
            (
                "nothing, with enough answers for a miss, is absent",
                vec![None, None, Failed, Failed, Failed],
                0,
                Verdict::Absent,
            ),
            (
                "too few answers for a miss",
                vec![None, Failed, Failed, Failed, Failed],
                0,
                unavailable("1 answered, 4 failed, 0 of its owners down"),
            ),
            (
                "as many owners down as a write needs",
                vec![None],
                4,
                unavailable("1 answered, 0 failed, 4 of its owners down"),
            ),
            (
                "partial versions and a failed owner",
                vec![Shard(5, 0), Shard(5, 1), None, None, Failed],
                0,
                unavailable("4 answered, 1 failed, 0 of its owners down"),
            ),
            (
                "partial, and down owners may hold the rest",
                vec![Shard(5, 0), Shard(5, 1), None],
                2,
                Verdict::Partial { recoverable: true },
            ),
            (
                "partial leftovers that down owners cannot complete",
                vec![Shard(5, 0), None, None, None, None],
                0,
                Verdict::Partial { recoverable: false },
            ),
        ];
        for (case, answers, down_owners, expected) in cases {
            assert_eq!(
                verdict(&seen(&answers, down_owners), floors),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn inconclusive_verdicts_ask_beyond_the_owners() {
        assert!(Verdict::Partial { recoverable: false }.is_inconclusive(false));
        assert!(Verdict::Unavailable(String::new()).is_inconclusive(false));
        assert!(!Verdict::Absent.is_inconclusive(false));
        assert!(
            Verdict::Absent.is_inconclusive(true),
            "shards may not have moved yet"
        );
        assert!(!Verdict::Decode(version(1)).is_inconclusive(true));
        assert!(!Verdict::Deleted(version(1)).is_inconclusive(true));
    }
}
