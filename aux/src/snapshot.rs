//! Snapshot files: the aux node's shard frames written to disk atomically, so a
//! restarted node can reload what it held (invariant 9: snapshots are atomic,
//! versioned, checksummed, and a corrupt or truncated snapshot is reported and
//! skipped).
//!
//! ```text
//! offset  size  field
//!      0     6  magic "SCSNAP"
//!      6     2  format version (1; big-endian, like every integer here)
//!      8     8  creation time, Unix milliseconds
//!     16     8  entry count
//!     24        entries, `entry count` times, least-recently-used first:
//!                 4  frame length n
//!                 n  frame bytes (an encoded shard frame, opaque here)
//!      …     8  xxh3-64 of every byte above (catches a corrupt or torn file)
//! ```
//!
//! Each snapshot is a file `snapshot-{seq:020}.snap`, `seq` one more than the highest
//! already in the directory, so names sort by age. A snapshot is written to a
//! temporary `.snapshot-{seq}.tmp` in the same directory, synced, renamed onto its
//! final name and the directory synced: a crash leaves either the whole new file or
//! none of it, never a half-written `.snap`. The newest [`SNAPSHOTS_KEPT`] snapshots
//! are kept, so a newest file that turns out unreadable still has one to fall back
//! on; temporary files are leftovers of a crash and are deleted, never loaded.
//!
//! A file that is corrupt, truncated or of an unknown format version is not an
//! error: [`load_newest`] reports it in [`LoadedSnapshot::skipped`] and tries the
//! next-older one. It never returns part of a file, and never panics on any bytes.
//! [`SnapshotError`] is only for real I/O failures (an unreadable directory, a full
//! disk) and for frames the format cannot hold.
//!
//! All disk work here is blocking `std::fs`; async callers run it on
//! `tokio::task::spawn_blocking`. One directory has one writer at a time (the
//! sequence number is chosen by listing the directory); a load may run alongside
//! the writer, and a file the writer deletes mid-load is merely skipped.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use shardcache_common::frame::{read_u32, read_u64};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const MAGIC: &[u8; 6] = b"SCSNAP";
const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 24;
const LENGTH_PREFIX_LEN: usize = 4;
const TRAILER_LEN: usize = 8;
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_PREFIX: &str = ".snapshot-";
const TEMP_SUFFIX: &str = ".tmp";
/// Large enough that writing a snapshot is a few big `write` calls, not one per frame.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// How many snapshot files survive a write: the new one and the one before it.
pub const SNAPSHOTS_KEPT: usize = 2;

/// What [`write_snapshot`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotWritten {
    /// The final `snapshot-….snap` file, already durable.
    pub path: PathBuf,
    pub entries: usize,
    /// Size of the whole file, header and checksum included.
    pub bytes: u64,
}

/// What [`load_newest`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedSnapshot {
    /// The file the frames came from; `None` when no valid snapshot exists.
    pub path: Option<PathBuf>,
    /// When that snapshot was written, Unix milliseconds (0 when there is none).
    pub created_at_ms: u64,
    /// Its frames, least-recently-used first. They are slices of the one buffer the
    /// file was read into, which stays allocated while any of them is alive.
    pub frames: Vec<Bytes>,
    /// Newer snapshot files that could not be loaded, newest first, each with a
    /// reason for the operator.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Why a snapshot could not be written or the snapshot directory not read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("frame {index} is {len} bytes, more than a snapshot entry can hold")]
    FrameTooLarge { index: usize, len: usize },
    #[error("snapshot sequence numbers in {} are exhausted", .0.display())]
    SequenceExhausted(PathBuf),
}

/// Writes `frames` (encoded shard frames, least-recently-used first) as the newest
/// snapshot in `dir`, creating `dir` if needed, then deletes all but the newest
/// [`SNAPSHOTS_KEPT`] snapshots and any temporary file left by a crash.
///
/// On error the previous snapshots are untouched, and no new `.snap` file exists
/// unless only the final directory sync failed (the file is then complete but may
/// not survive a crash; the next write numbers past it either way).
pub fn write_snapshot(
    dir: &Path,
    frames: &[Bytes],
    created_at_ms: u64,
) -> Result<SnapshotWritten, SnapshotError> {
    // Checked before touching the disk: the length prefix is 32 bits.
    if let Some((index, frame)) = frames
        .iter()
        .enumerate()
        .find(|(_, frame)| u32::try_from(frame.len()).is_err())
    {
        return Err(SnapshotError::FrameTooLarge {
            index,
            len: frame.len(),
        });
    }
    fs::create_dir_all(dir).map_err(io_error("create snapshot directory", dir))?;
    let existing = list_dir(dir)?;
    let seq = match existing.snapshots.last() {
        None => 1,
        Some((newest, _)) => newest
            .checked_add(1)
            .ok_or_else(|| SnapshotError::SequenceExhausted(dir.to_owned()))?,
    };
    let path = dir.join(snapshot_file_name(seq));
    let temp_path = dir.join(format!("{TEMP_PREFIX}{seq}{TEMP_SUFFIX}"));
    let written = write_synced_file(&temp_path, frames, created_at_ms).and_then(|bytes| {
        fs::rename(&temp_path, &path).map_err(io_error("rename snapshot into place", &path))?;
        Ok(bytes)
    });
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(error) => {
            // Best effort: a full disk should not also keep the partial file.
            let _ = fs::remove_file(&temp_path);
            return Err(error);
        }
    };
    // The rename is durable only once the directory entry is: until then a crash
    // could bring back the old directory without the new file.
    File::open(dir)
        .and_then(|dir_handle| dir_handle.sync_all())
        .map_err(io_error("sync snapshot directory", dir))?;
    remove_superseded(&existing, &temp_path);
    Ok(SnapshotWritten {
        path,
        entries: frames.len(),
        bytes,
    })
}

/// Loads the newest valid snapshot in `dir`, skipping (and reporting) newer files
/// that are corrupt, truncated or of an unknown format version. A missing or empty
/// directory, or one with no valid snapshot, loads as no frames and `path: None`.
pub fn load_newest(dir: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let listing = match list_dir(dir) {
        Ok(listing) => listing,
        Err(SnapshotError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(LoadedSnapshot::default());
        }
        Err(error) => return Err(error),
    };
    let mut loaded = LoadedSnapshot::default();
    for (_, path) in listing.snapshots.into_iter().rev() {
        let file = match fs::read(&path) {
            Ok(contents) => Bytes::from(contents),
            // An unreadable file is as useless as a corrupt one; an older snapshot
            // serves better than none.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                loaded.skipped.push((path, "removed while loading".into()));
                continue;
            }
            Err(error) => {
                loaded.skipped.push((path, format!("unreadable: {error}")));
                continue;
            }
        };
        match parse_snapshot(&file) {
            Ok((created_at_ms, frames)) => {
                loaded.path = Some(path);
                loaded.created_at_ms = created_at_ms;
                loaded.frames = frames;
                return Ok(loaded);
            }
            Err(reason) => loaded.skipped.push((path, reason)),
        }
    }
    Ok(loaded)
}

/// Writes the whole snapshot to `path` and syncs it, returning its size in bytes.
fn write_synced_file(
    path: &Path,
    frames: &[Bytes],
    created_at_ms: u64,
) -> Result<u64, SnapshotError> {
    let write = || -> io::Result<u64> {
        // `create` truncates: a crashed writer may have left a file of this name.
        let file = File::create(path)?;
        let mut out = ChecksummedWriter::new(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file));
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_be_bytes())?;
        out.write_all(&created_at_ms.to_be_bytes())?;
        out.write_all(&(frames.len() as u64).to_be_bytes())?;
        for frame in frames {
            // Lengths were checked to fit by the caller.
            out.write_all(&(frame.len() as u32).to_be_bytes())?;
            out.write_all(frame)?;
        }
        let (buffered, bytes) = out.finish()?;
        let file = buffered.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        Ok(bytes)
    };
    write().map_err(io_error("write snapshot", path))
}

/// A writer that feeds every byte to an xxh3 hasher on its way through, so the
/// trailer checksum costs no second pass over the file.
struct ChecksummedWriter<W> {
    inner: W,
    hasher: Xxh3,
    written: u64,
}

impl<W: Write> ChecksummedWriter<W> {
    fn new(inner: W) -> Self {
        ChecksummedWriter {
            inner,
            hasher: Xxh3::new(),
            written: 0,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    /// Appends the checksum of everything written so far; returns the inner writer
    /// and the total number of bytes, checksum included.
    fn finish(mut self) -> io::Result<(W, u64)> {
        self.inner.write_all(&self.hasher.digest().to_be_bytes())?;
        Ok((self.inner, self.written + TRAILER_LEN as u64))
    }
}

/// Parses a whole snapshot file: `(created_at_ms, frames)`, or why it is unusable.
/// Every length is checked against the bytes actually present before it is used.
fn parse_snapshot(file: &Bytes) -> Result<(u64, Vec<Bytes>), String> {
    let len = file.len();
    let version_end = MAGIC.len() + 2;
    if len < version_end {
        return Err(match MAGIC.starts_with(file) {
            true => format!("truncated: only {len} bytes"),
            false => "not a snapshot: bad magic".into(),
        });
    }
    if &file[..MAGIC.len()] != MAGIC {
        return Err("not a snapshot: bad magic".into());
    }
    // Checked before anything else about the layout: another version may differ in
    // every field after this one.
    let version = u16::from_be_bytes([file[6], file[7]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported format version {version} (this build reads version {FORMAT_VERSION})"
        ));
    }
    if len < HEADER_LEN + TRAILER_LEN {
        return Err(format!("truncated: only {len} bytes"));
    }
    let created_at_ms = read_u64(file, 8);
    let count = read_u64(file, 16);
    let body_end = len - TRAILER_LEN;
    // Never trust `count` for an allocation: each entry takes at least its prefix.
    let most_entries = (body_end - HEADER_LEN) / LENGTH_PREFIX_LEN;
    let mut frames = Vec::with_capacity(
        usize::try_from(count).map_or(most_entries, |count| count.min(most_entries)),
    );
    let mut at = HEADER_LEN;
    // Ends after at most `most_entries` rounds: each consumes at least 4 bytes.
    for index in 0..count {
        if body_end - at < LENGTH_PREFIX_LEN {
            return Err(truncated_at(index, count));
        }
        let frame_len = read_u32(file, at) as usize;
        at += LENGTH_PREFIX_LEN;
        if body_end - at < frame_len {
            return Err(truncated_at(index, count));
        }
        frames.push(file.slice(at..at + frame_len));
        at += frame_len;
    }
    if at != body_end {
        return Err(format!(
            "corrupt: {} bytes left over after the {count} entries the header announces",
            body_end - at
        ));
    }
    if xxh3_64(&file[..body_end]) != read_u64(file, body_end) {
        return Err("corrupt: checksum mismatch".into());
    }
    Ok((created_at_ms, frames))
}

/// The reason for a file whose entries run past its end. A corrupt length field
/// looks the same; the file is skipped either way.
fn truncated_at(index: u64, count: u64) -> String {
    format!("truncated: entry {index} of {count} runs past the end of the file")
}

/// The snapshot files of a directory, oldest first, and its leftover temporary files.
struct DirListing {
    snapshots: Vec<(u64, PathBuf)>,
    temp_files: Vec<PathBuf>,
}

fn list_dir(dir: &Path) -> Result<DirListing, SnapshotError> {
    let mut listing = DirListing {
        snapshots: Vec::new(),
        temp_files: Vec::new(),
    };
    let entries = fs::read_dir(dir).map_err(io_error("read snapshot directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("read snapshot directory", dir))?;
        let name = entry.file_name();
        // Names this module writes are ASCII; anything else is not ours.
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = snapshot_seq(name) {
            listing.snapshots.push((seq, entry.path()));
        } else if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
            listing.temp_files.push(entry.path());
        }
    }
    listing.snapshots.sort_unstable();
    Ok(listing)
}

fn snapshot_file_name(seq: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{seq:020}{SNAPSHOT_SUFFIX}")
}

/// The sequence number in a snapshot file name, `None` for any other name.
fn snapshot_seq(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SNAPSHOT_PREFIX)?
        .strip_suffix(SNAPSHOT_SUFFIX)?;
    // `parse` alone would also accept a leading `+`.
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Deletes the snapshots a new one has pushed out of the kept set and every
/// temporary file a crashed writer left. Failures are logged, not returned: the new
/// snapshot is already durable, and the next write tries again.
fn remove_superseded(before_write: &DirListing, just_renamed: &Path) {
    let superseded = before_write
        .snapshots
        .len()
        .saturating_sub(SNAPSHOTS_KEPT - 1);
    let stale_snapshots = before_write.snapshots[..superseded]
        .iter()
        .map(|(_, path)| path);
    let stale_temp_files = before_write
        .temp_files
        .iter()
        .filter(|path| path.as_path() != just_renamed);
    for path in stale_snapshots.chain(stale_temp_files) {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove old snapshot file");
            }
        }
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |error| SnapshotError::Io {
        action,
        path: path.to_owned(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of assorted sizes: an empty one, small ones, and one larger than the
    /// write buffer so it bypasses it.
    fn sample_frames() -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"least recently used"),
            Bytes::new(),
            Bytes::from((0..=255u8).collect::<Vec<u8>>()),
            Bytes::from(vec![0xa5; WRITE_BUFFER_BYTES + 17]),
            Bytes::from_static(b"most recently used"),
        ]
    }

    fn small_frames() -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"a"),
            Bytes::new(),
            Bytes::from_static(b"shard-frame"),
        ]
    }

    fn snapshot_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Writes raw bytes as the snapshot file with sequence number `seq`.
    fn put_raw(dir: &Path, seq: u64, contents: &[u8]) -> PathBuf {
        let path = dir.join(snapshot_file_name(seq));
        fs::write(&path, contents).unwrap();
        path
    }

    /// The bytes of a valid snapshot of `frames`, written in a scratch directory.
    fn valid_file(frames: &[Bytes], created_at_ms: u64) -> Vec<u8> {
        let scratch = tempfile::tempdir().unwrap();
        let written = write_snapshot(scratch.path(), frames, created_at_ms).unwrap();
        fs::read(written.path).unwrap()
    }

    #[test]
    fn round_trip_preserves_frames_order_and_creation_time() {
        let dir = tempfile::tempdir().unwrap();
        let frames = sample_frames();
        let written = write_snapshot(dir.path(), &frames, 1_700_000_000_123).unwrap();
        assert_eq!(written.entries, frames.len());
        assert_eq!(written.bytes, fs::metadata(&written.path).unwrap().len());
        let loaded = load_newest(dir.path()).unwrap();
        assert_eq!(loaded.path.as_ref(), Some(&written.path));
        assert_eq!(loaded.created_at_ms, 1_700_000_000_123);
        assert_eq!(loaded.frames, frames);
        assert!(loaded.skipped.is_empty());
        // Slices of the one file buffer: each frame starts right after the previous
        // one and its length prefix.
        for pair in loaded.frames.windows(2) {
            let next_start = pair[0].as_ptr() as usize + pair[0].len() + LENGTH_PREFIX_LEN;
            assert_eq!(pair[1].as_ptr() as usize, next_start);
        }
    }

    #[test]
    fn the_file_layout_matches_the_documented_table() {
        let frames = small_frames();
        let file = valid_file(&frames, 0x0102_0304_0506_0708);
        assert_eq!(&file[0..6], b"SCSNAP");
        assert_eq!(&file[6..8], &[0, 1]);
        assert_eq!(&file[8..16], &0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(&file[16..24], &3u64.to_be_bytes());
        assert_eq!(&file[24..28], &1u32.to_be_bytes());
        assert_eq!(&file[28..29], b"a");
        assert_eq!(&file[29..33], &0u32.to_be_bytes());
        assert_eq!(&file[33..37], &11u32.to_be_bytes());
        assert_eq!(&file[37..48], b"shard-frame");
        assert_eq!(file.len(), 48 + 8);
        assert_eq!(&file[48..], &xxh3_64(&file[..48]).to_be_bytes());
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_snapshot(dir.path(), &[], 42).unwrap();
        assert_eq!(written.entries, 0);
        assert_eq!(written.bytes, (HEADER_LEN + TRAILER_LEN) as u64);
        let loaded = load_newest(dir.path()).unwrap();
        assert_eq!(loaded.path, Some(written.path));
        assert_eq!(loaded.created_at_ms, 42);
        assert!(loaded.frames.is_empty());
        assert!(loaded.skipped.is_empty());
    }

    #[test]
    fn no_snapshot_loads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_newest(dir.path()).unwrap(), LoadedSnapshot::default());
        let missing = dir.path().join("never-created");
        assert_eq!(load_newest(&missing).unwrap(), LoadedSnapshot::default());
        fs::write(dir.path().join("unrelated.txt"), b"not a snapshot").unwrap();
        assert_eq!(load_newest(dir.path()).unwrap(), LoadedSnapshot::default());
    }

    #[test]
    fn only_the_newest_two_snapshots_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for created_at_ms in [1, 2, 3] {
            let frame = Bytes::from(format!("written at {created_at_ms}"));
            write_snapshot(dir.path(), &[frame], created_at_ms).unwrap();
        }
        assert_eq!(
            snapshot_names(dir.path()),
            [snapshot_file_name(2), snapshot_file_name(3)]
        );
        let loaded = load_newest(dir.path()).unwrap();
        assert_eq!(loaded.created_at_ms, 3);
        assert_eq!(loaded.frames, [Bytes::from_static(b"written at 3")]);
        // Numbering continues from the highest file left, never reusing a name.
        let fourth = write_snapshot(dir.path(), &[], 4).unwrap();
        assert_eq!(fourth.path, dir.path().join(snapshot_file_name(4)));
    }

    #[test]
    fn a_truncated_newest_snapshot_falls_back_to_the_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let older = write_snapshot(dir.path(), &small_frames(), 10).unwrap();
        let newer = write_snapshot(dir.path(), &sample_frames(), 20).unwrap();
        let full = fs::read(&newer.path).unwrap();
        fs::write(&newer.path, &full[..full.len() / 2]).unwrap();
        let loaded = load_newest(dir.path()).unwrap();
        assert_eq!(loaded.path, Some(older.path));
        assert_eq!(loaded.created_at_ms, 10);
        assert_eq!(loaded.frames, small_frames());
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].0, newer.path);
        assert!(
            loaded.skipped[0].1.starts_with("truncated"),
            "{}",
            loaded.skipped[0].1
        );
    }

    #[test]
    fn a_flipped_byte_falls_back_to_the_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let older = write_snapshot(dir.path(), &small_frames(), 10).unwrap();
        let newer = write_snapshot(dir.path(), &sample_frames(), 20).unwrap();
        let mut corrupt = fs::read(&newer.path).unwrap();
        // Inside the large frame's payload: the structure stays intact, so only the
        // checksum can tell.
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0xff;
        fs::write(&newer.path, &corrupt).unwrap();
        let loaded = load_newest(dir.path()).unwrap();
        assert_eq!(loaded.path, Some(older.path));
        assert_eq!(loaded.frames, small_frames());
        assert_eq!(
            loaded.skipped,
            [(newer.path, "corrupt: checksum mismatch".to_string())]
        );
    }

    #[test]
    fn an_unknown_format_version_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let older = write_snapshot(dir.path(), &small_frames(), 10).unwrap();
        let mut future = valid_file(&small_frames(), 20);
        future[6..8].copy_from_slice(&7u16.to_be_bytes());
        let future_path = put_raw(dir.path(), 2, &future);
        let loaded = load_newest(dir.path()).unwrap();
        assert_eq!(loaded.path, Some(older.path));
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].0, future_path);
        assert!(
            loaded.skipped[0].1.contains("version 7"),
            "{}",
            loaded.skipped[0].1
        );
    }

    #[test]
    fn stale_temp_files_are_never_loaded_and_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        // A crash after writing a complete temporary file but before the rename:
        // even a valid-looking one must not be loaded.
        let complete = valid_file(&small_frames(), 99);
        fs::write(dir.path().join(".snapshot-1.tmp"), &complete).unwrap();
        fs::write(dir.path().join(".snapshot-7.tmp"), &complete[..10]).unwrap();
        assert_eq!(load_newest(dir.path()).unwrap(), LoadedSnapshot::default());
        let written = write_snapshot(dir.path(), &[Bytes::from_static(b"real")], 5).unwrap();
        assert_eq!(written.path, dir.path().join(snapshot_file_name(1)));
        assert_eq!(snapshot_names(dir.path()), [snapshot_file_name(1)]);
        let loaded = load_newest(dir.path()).unwrap();
        assert_eq!(loaded.created_at_ms, 5);
        assert_eq!(loaded.frames, [Bytes::from_static(b"real")]);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_skipped_never_loaded_half_way() {
        let dir = tempfile::tempdir().unwrap();
        let fallback = put_raw(dir.path(), 1, &valid_file(&[Bytes::from_static(b"old")], 1));
        let full = valid_file(&small_frames(), 2);
        let mut damaged_files: Vec<Vec<u8>> =
            (0..full.len()).map(|cut| full[..cut].to_vec()).collect();
        for position in 0..full.len() {
            for bit in 0..8 {
                let mut flipped = full.clone();
                flipped[position] ^= 1 << bit;
                damaged_files.push(flipped);
            }
        }
        for damaged in damaged_files {
            let damaged_path = put_raw(dir.path(), 2, &damaged);
            let loaded = load_newest(dir.path()).unwrap();
            assert_eq!(
                loaded.path.as_ref(),
                Some(&fallback),
                "{} bytes",
                damaged.len()
            );
            assert_eq!(loaded.frames, [Bytes::from_static(b"old")]);
            assert_eq!(loaded.skipped.len(), 1);
            assert_eq!(loaded.skipped[0].0, damaged_path);
            assert!(!loaded.skipped[0].1.is_empty());
        }
        put_raw(dir.path(), 2, &full);
        let loaded = load_newest(dir.path()).unwrap();
        assert_eq!(loaded.created_at_ms, 2);
        assert_eq!(loaded.frames, small_frames());
        assert!(loaded.skipped.is_empty());
    }

    #[test]
    fn parsing_never_trusts_a_huge_entry_count() {
        // A checksum-valid header announcing u64::MAX entries over an empty body.
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        file.extend_from_slice(&0u64.to_be_bytes());
        file.extend_from_slice(&u64::MAX.to_be_bytes());
        let checksum = xxh3_64(&file);
        file.extend_from_slice(&checksum.to_be_bytes());
        let reason = parse_snapshot(&Bytes::from(file)).unwrap_err();
        assert!(reason.starts_with("truncated"), "{reason}");
    }

    #[test]
    fn only_well_formed_names_are_snapshots() {
        assert_eq!(snapshot_seq(&snapshot_file_name(12)), Some(12));
        assert_eq!(snapshot_seq("snapshot-3.snap"), Some(3));
        for name in [
            "snapshot-.snap",
            "snapshot-+3.snap",
            "snapshot-3.snap.tmp",
            ".snapshot-3.tmp",
            "snapshot-99999999999999999999999.snap",
        ] {
            assert_eq!(snapshot_seq(name), None, "{name}");
        }
    }
}
