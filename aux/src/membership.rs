//! The membership document masters share through aux nodes: the run-time additions
//! and removals made through any master's admin API. Each aux node keeps the newest
//! version it was given (last writer wins) in memory and in `DATA_DIR/membership.json`,
//! so that masters started later, or restarted, learn it on their first probe.

use std::path::PathBuf;

use parking_lot::Mutex;
use shardcache_common::wire::MembershipDoc;

const MEMBERSHIP_FILE: &str = "membership.json";

/// The newest membership document this node has been given.
pub(crate) struct MembershipStore {
    doc: Mutex<Option<MembershipDoc>>,
    path: PathBuf,
}

impl MembershipStore {
    /// Loads `DATA_DIR/membership.json` if present; an unreadable file is logged and
    /// ignored (masters push their own copy on their next probe).
    pub(crate) fn load(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join(MEMBERSHIP_FILE);
        let doc = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(doc) => Some(doc),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring unreadable membership file");
                    None
                }
            },
            Err(_) => None,
        };
        MembershipStore {
            doc: Mutex::new(doc),
            path,
        }
    }

    pub(crate) fn get(&self) -> Option<MembershipDoc> {
        self.doc.lock().clone()
    }

    /// Keeps `doc` if it is newer than the one held; returns the held one otherwise.
    pub(crate) fn offer(&self, doc: MembershipDoc) -> Result<(), MembershipDoc> {
        let mut held = self.doc.lock();
        if let Some(current) = held.as_ref() {
            if current.version >= doc.version {
                return Err(current.clone());
            }
        }
        *held = Some(doc);
        Ok(())
    }

    /// Writes the held document to disk atomically (blocking; run off the async
    /// threads). Failure only costs the copy on disk.
    pub(crate) fn persist(&self) {
        let Some(doc) = self.get() else { return };
        let temporary = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&doc)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&temporary, bytes))
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(error) = written {
            tracing::warn!(path = %self.path.display(), %error, "could not save the membership document");
        }
    }
}
