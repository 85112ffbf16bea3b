//! The node's identity on the ring: given by `--node-id`, or generated once and kept
//! in `DATA_DIR/node-id` so that it survives restarts (ARCHITECTURE.md, invariant 7).
//!
//! Masters place shards by node identity, not by address, so a node that comes back
//! on another IP (a rescheduled pod, a recreated container) keeps its shards' place.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// File under the data directory holding the generated identity.
const NODE_ID_FILE: &str = "node-id";

/// Longest identity accepted; identities appear in logs, JSON and URLs.
const MAX_NODE_ID_LEN: usize = 128;

/// Checks that `id` is usable as a node identity.
pub(crate) fn validate(id: &str) -> Result<(), String> {
    let printable = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN || !printable {
        return Err(format!(
            "node id {id:?} is invalid: use 1 to {MAX_NODE_ID_LEN} characters of A-Z a-z 0-9 - _ . :"
        ));
    }
    Ok(())
}

/// The configured identity, else the one stored in `data_dir`, else a new random one
/// (stored for the next start).
pub(crate) fn load_or_create(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(id) = configured {
        validate(id).map_err(anyhow::Error::msg)?;
        return Ok(id.to_owned());
    }
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_owned();
            validate(&id)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("read node id from {}", path.display()))?;
            Ok(id)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("aux-{:016x}", rand::random::<u64>());
            let temporary = data_dir.join(format!(".{NODE_ID_FILE}.tmp"));
            let mut file = std::fs::File::create(&temporary)
                .with_context(|| format!("create {}", temporary.display()))?;
            writeln!(file, "{id}")?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
                .with_context(|| format!("write {}", path.display()))?;
            Ok(id)
        }
        Err(error) => Err(error).with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_identity_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(None, dir.path()).unwrap();
        assert!(first.starts_with("aux-"));
        assert_eq!(load_or_create(None, dir.path()).unwrap(), first);
        assert_eq!(
            load_or_create(Some("aux-7"), dir.path()).unwrap(),
            "aux-7",
            "a configured identity wins"
        );
    }

    #[test]
    fn odd_identities_are_refused() {
        for bad in ["", "has space", "slash/y", &"x".repeat(129)] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(validate("aux-0.aux.default.svc:7101").is_ok());
    }
}
