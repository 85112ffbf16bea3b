//! Snapshot files: the aux node's shard frames written to disk atomically, so a
//! restarted node can reload what it held (ARCHITECTURE.md, invariant 9: snapshots
//! are atomic, versioned, checksummed, and a corrupt or truncated snapshot is
//! reported and skipped).
//!
//! ```text
//! offset  size  field
//!      0     6  magic "SCSNAP"
//!      6     2  format version (2; big-endian, like every integer here)
//!      8     8  creation time, Unix milliseconds
//!     16        entries, oldest first, up to the trailer:
//!                 4  frame length n
//!                 n  frame bytes (an encoded shard frame, opaque here)
//!      …     8  entry count
//!      …     8  xxh3-64 of every byte above (catches a corrupt or torn file)
//! ```
//!
//! Both directions stream: [`SnapshotWriter`] takes entries a batch at a time and
//! [`load_newest`] hands frames to a visitor one at a time, so neither ever holds
//! more than one frame (or one store segment) beyond what the store holds: a
//! snapshot as large as the store does not double the node's memory. The count is
//! in the trailer because a streaming writer learns it last. Format 1 (count in the
//! header, written before the compact store) is refused with a message saying so.
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
//! next-older one. A file is read twice: once to check its structure and checksum,
//! and only then again to hand its frames over, so a damaged file gives nothing.
//! [`SnapshotError`] is only for real I/O failures (an unreadable directory, a full
//! disk) and for frames the format cannot hold.
//!
//! All disk work here is blocking `std::fs`; async callers run it on
//! `tokio::task::spawn_blocking`. One directory has one writer at a time (the
//! sequence number is chosen by listing the directory); a load may run alongside
//! the writer, and a file the writer deletes mid-load is merely skipped.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 6] = b"SCSNAP";
const FORMAT_VERSION: u16 = 2;
const HEADER_LEN: u64 = 16;
const LENGTH_PREFIX_LEN: u64 = 4;
const TRAILER_LEN: u64 = 16;
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_PREFIX: &str = ".snapshot-";
const TEMP_SUFFIX: &str = ".tmp";
/// Large enough that writing or reading a snapshot is a few big system calls, not
/// one per frame.
const IO_BUFFER_BYTES: usize = 1 << 20;

/// How many snapshot files survive a write: the new one and the one before it.
pub(crate) const SNAPSHOTS_KEPT: usize = 2;

/// What [`SnapshotWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotWritten {
    /// The final `snapshot-….snap` file, already durable.
    pub(crate) path: PathBuf,
    pub(crate) entries: u64,
    /// Size of the whole file, header and trailer included.
    pub(crate) bytes: u64,
}

/// What [`load_newest`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LoadedSnapshot {
    /// The file the frames came from; `None` when no valid snapshot exists.
    pub(crate) path: Option<PathBuf>,
    /// When that snapshot was written, Unix milliseconds (0 when there is none).
    pub(crate) created_at_ms: u64,
    /// How many frames were handed to the visitor.
    pub(crate) entries: u64,
    /// Newer snapshot files that could not be loaded, newest first, each with a
    /// reason for the operator.
    pub(crate) skipped: Vec<(PathBuf, String)>,
}

/// Why a snapshot could not be written or the snapshot directory not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[cfg(test)]
    #[error("frame {index} is {len} bytes, more than a snapshot entry can hold")]
    FrameTooLarge { index: u64, len: usize },
    #[error("snapshot sequence numbers in {} are exhausted", .0.display())]
    SequenceExhausted(PathBuf),
}

/// A snapshot being written: entries go to a temporary file, which
/// [`finish`](Self::finish) makes the newest snapshot. Dropped unfinished, it
/// removes the temporary file.
pub(crate) struct SnapshotWriter {
    dir: PathBuf,
    path: PathBuf,
    temp_path: PathBuf,
    existing: DirListing,
    out: Option<ChecksummedWriter<BufWriter<File>>>,
    entries: u64,
}

impl SnapshotWriter {
    /// Starts the next snapshot in `dir` (created if needed).
    pub(crate) fn create(dir: &Path, created_at_ms: u64) -> Result<Self, SnapshotError> {
        fs::create_dir_all(dir).map_err(io_error("create snapshot directory", dir))?;
        let existing = list_dir(dir)?;
        let seq = match existing.snapshots.last() {
            None => 1,
            Some((newest, _)) => newest
                .checked_add(1)
                .ok_or_else(|| SnapshotError::SequenceExhausted(dir.to_owned()))?,
        };
        let temp_path = dir.join(format!("{TEMP_PREFIX}{seq}{TEMP_SUFFIX}"));
        // `create` truncates: a crashed writer may have left a file of this name.
        let file = File::create(&temp_path).map_err(io_error("create snapshot", &temp_path))?;
        let mut writer = SnapshotWriter {
            dir: dir.to_owned(),
            path: dir.join(snapshot_file_name(seq)),
            temp_path,
            existing,
            out: Some(ChecksummedWriter::new(BufWriter::with_capacity(
                IO_BUFFER_BYTES,
                file,
            ))),
            entries: 0,
        };
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        header.extend_from_slice(&created_at_ms.to_be_bytes());
        writer.write(&header)?;
        Ok(writer)
    }

    /// Appends one frame (the tests' way; the node appends whole chunks of entries).
    #[cfg(test)]
    pub(crate) fn append(&mut self, frame: &[u8]) -> Result<(), SnapshotError> {
        let len = u32::try_from(frame.len()).map_err(|_| SnapshotError::FrameTooLarge {
            index: self.entries,
            len: frame.len(),
        })?;
        self.write(&len.to_be_bytes())?;
        self.write(frame)?;
        self.entries += 1;
        Ok(())
    }

    /// Appends `count` entries already in the file's entry layout (length, frame),
    /// as [`crate::store::ShardStore::snapshot_chunk`] gives them.
    pub(crate) fn append_entries(
        &mut self,
        entries: &[u8],
        count: usize,
    ) -> Result<(), SnapshotError> {
        self.write(entries)?;
        self.entries += count as u64;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let out = self.out.as_mut().expect("written before finish");
        out.write_all(bytes)
            .map_err(io_error("write snapshot", &self.temp_path))
    }

    /// Writes the trailer, syncs the file, renames it into place, syncs the
    /// directory, and deletes all but the newest [`SNAPSHOTS_KEPT`] snapshots and
    /// any temporary file left by a crash.
    ///
    /// On error the previous snapshots are untouched, and no new `.snap` file exists
    /// unless only the final directory sync failed (the file is then complete but
    /// may not survive a crash; the next write numbers past it either way).
    pub(crate) fn finish(mut self) -> Result<SnapshotWritten, SnapshotError> {
        let entries = self.entries;
        self.write(&entries.to_be_bytes())?;
        let out = self.out.take().expect("finished once");
        let synced = || -> io::Result<u64> {
            let (buffered, bytes) = out.finish()?;
            let file = buffered.into_inner().map_err(|error| error.into_error())?;
            file.sync_all()?;
            Ok(bytes)
        };
        let bytes = synced().map_err(io_error("write snapshot", &self.temp_path))?;
        fs::rename(&self.temp_path, &self.path)
            .map_err(io_error("rename snapshot into place", &self.path))?;
        // The rename is durable only once the directory entry is: until then a crash
        // could bring back the old directory without the new file.
        File::open(&self.dir)
            .and_then(|dir_handle| dir_handle.sync_all())
            .map_err(io_error("sync snapshot directory", &self.dir))?;
        remove_superseded(&self.existing, &self.temp_path);
        Ok(SnapshotWritten {
            path: self.path.clone(),
            entries,
            bytes,
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            // Unfinished (an error on the way): best effort, the next write cleans up
            // what this leaves.
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// Writes `frames` (oldest first) as the newest snapshot in `dir` (the tests' way;
/// the node streams through [`SnapshotWriter`]).
#[cfg(test)]
fn write_snapshot(
    dir: &Path,
    frames: &[impl AsRef<[u8]>],
    created_at_ms: u64,
) -> Result<SnapshotWritten, SnapshotError> {
    let mut writer = SnapshotWriter::create(dir, created_at_ms)?;
    for frame in frames {
        writer.append(frame.as_ref())?;
    }
    writer.finish()
}

/// Loads the newest valid snapshot in `dir`, handing each of its frames (oldest
/// first) to `visit`, and skipping (and reporting) newer files that are corrupt,
/// truncated or of an unknown format version. A missing or empty directory, or one
/// with no valid snapshot, visits nothing and returns `path: None`.
///
/// A file is checked whole before its first frame is visited; should it change
/// between the check and the visit (nothing here writes to a finished snapshot),
/// the visit stops there and the file is reported skipped after all, with the
/// frames already visited kept: each of them is a frame the file really held.
pub(crate) fn load_newest(
    dir: &Path,
    mut visit: impl FnMut(&[u8]),
) -> Result<LoadedSnapshot, SnapshotError> {
    let listing = match list_dir(dir) {
        Ok(listing) => listing,
        Err(SnapshotError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(LoadedSnapshot::default());
        }
        Err(error) => return Err(error),
    };
    let mut loaded = LoadedSnapshot::default();
    for (_, path) in listing.snapshots.into_iter().rev() {
        let checked = scan(&path, &mut |_| {});
        let read = checked.and_then(|_| scan(&path, &mut visit));
        match read {
            Ok((created_at_ms, entries)) => {
                loaded.path = Some(path);
                loaded.created_at_ms = created_at_ms;
                loaded.entries = entries;
                return Ok(loaded);
            }
            Err(reason) => loaded.skipped.push((path, reason)),
        }
    }
    Ok(loaded)
}

/// Reads a snapshot file from end to end, handing each frame to `visit`, and
/// returns `(created_at_ms, entry count)` or why the file is unusable. Every length
/// is checked against the bytes actually present before it is used.
fn scan(path: &Path, visit: &mut dyn FnMut(&[u8])) -> Result<(u64, u64), String> {
    let unreadable = |error: io::Error| match error.kind() {
        io::ErrorKind::NotFound => "removed while loading".to_string(),
        _ => format!("unreadable: {error}"),
    };
    let file = File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    let mut input = HashingReader {
        inner: BufReader::with_capacity(IO_BUFFER_BYTES, file),
        hasher: Xxh3::new(),
    };
    let version_end = MAGIC.len() as u64 + 2;
    let mut head = [0u8; 8];
    let head_len = len.min(version_end) as usize;
    input.read(&mut head[..head_len]).map_err(unreadable)?;
    if !MAGIC.starts_with(&head[..head_len.min(MAGIC.len())]) {
        return Err("not a snapshot: bad magic".into());
    }
    if len < version_end {
        return Err(format!("truncated: only {len} bytes"));
    }
    // Checked before anything else about the layout: another version may differ in
    // every field after this one.
    match u16::from_be_bytes([head[6], head[7]]) {
        FORMAT_VERSION => {}
        1 => {
            return Err(
                "format version 1, written before the compact store: this build \
                 reads version 2 only (the node starts empty and repair refills it)"
                    .into(),
            )
        }
        version => {
            return Err(format!(
                "unsupported format version {version} (this build reads version {FORMAT_VERSION})"
            ))
        }
    }
    if len < HEADER_LEN + TRAILER_LEN {
        return Err(format!("truncated: only {len} bytes"));
    }
    let created_at_ms = input.u64().map_err(unreadable)?;
    let body_end = len - TRAILER_LEN;
    let mut at = HEADER_LEN;
    let mut count = 0u64;
    let mut frame = Vec::new();
    while at < body_end {
        if body_end - at < LENGTH_PREFIX_LEN {
            return Err(truncated_at(count));
        }
        let mut prefix = [0u8; 4];
        input.read(&mut prefix).map_err(unreadable)?;
        let frame_len = u64::from(u32::from_be_bytes(prefix));
        at += LENGTH_PREFIX_LEN;
        if body_end - at < frame_len {
            return Err(truncated_at(count));
        }
        frame.resize(frame_len as usize, 0);
        input.read(&mut frame).map_err(unreadable)?;
        at += frame_len;
        visit(&frame);
        count += 1;
    }
    let announced = input.u64().map_err(unreadable)?;
    let computed = input.hasher.digest();
    let mut stored = [0u8; 8];
    input.inner.read_exact(&mut stored).map_err(unreadable)?;
    if announced != count {
        return Err(format!(
            "truncated or corrupt: the trailer announces {announced} entries, the file holds {count}"
        ));
    }
    if computed != u64::from_be_bytes(stored) {
        return Err("corrupt: checksum mismatch".into());
    }
    Ok((created_at_ms, count))
}

/// The reason for a file whose entries run past its end. A corrupt length field
/// looks the same; the file is skipped either way.
fn truncated_at(index: u64) -> String {
    format!("truncated: entry {index} runs past the end of the file")
}

/// A reader that feeds every byte it reads to an xxh3 hasher.
struct HashingReader<R> {
    inner: R,
    hasher: Xxh3,
}

impl<R: Read> HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buffer)?;
        self.hasher.update(buffer);
        Ok(())
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut raw = [0u8; 8];
        self.read(&mut raw)?;
        Ok(u64::from_be_bytes(raw))
    }
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
        Ok((self.inner, self.written + 8))
    }
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
    use xxhash_rust::xxh3::xxh3_64;

    /// Frames of assorted sizes: an empty one, small ones, and one larger than the
    /// I/O buffer so it bypasses it.
    fn sample_frames() -> Vec<Vec<u8>> {
        vec![
            b"least recently used".to_vec(),
            Vec::new(),
            (0..=255u8).collect(),
            vec![0xa5; IO_BUFFER_BYTES + 17],
            b"most recently used".to_vec(),
        ]
    }

    fn small_frames() -> Vec<Vec<u8>> {
        vec![b"a".to_vec(), Vec::new(), b"shard-frame".to_vec()]
    }

    /// Loads the newest snapshot, collecting its frames.
    fn load(dir: &Path) -> (LoadedSnapshot, Vec<Vec<u8>>) {
        let mut frames = Vec::new();
        let loaded = load_newest(dir, |frame| frames.push(frame.to_vec())).unwrap();
        assert_eq!(loaded.entries, frames.len() as u64);
        (loaded, frames)
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
    fn valid_file(frames: &[Vec<u8>], created_at_ms: u64) -> Vec<u8> {
        let scratch = tempfile::tempdir().unwrap();
        let written = write_snapshot(scratch.path(), frames, created_at_ms).unwrap();
        fs::read(written.path).unwrap()
    }

    #[test]
    fn round_trip_preserves_frames_order_and_creation_time() {
        let dir = tempfile::tempdir().unwrap();
        let frames = sample_frames();
        let written = write_snapshot(dir.path(), &frames, 1_700_000_000_123).unwrap();
        assert_eq!(written.entries, frames.len() as u64);
        assert_eq!(written.bytes, fs::metadata(&written.path).unwrap().len());
        let (loaded, read) = load(dir.path());
        assert_eq!(loaded.path.as_ref(), Some(&written.path));
        assert_eq!(loaded.created_at_ms, 1_700_000_000_123);
        assert_eq!(read, frames);
        assert!(loaded.skipped.is_empty());
    }

    #[test]
    fn entries_written_in_batches_read_back_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SnapshotWriter::create(dir.path(), 5).unwrap();
        let mut batch = Vec::new();
        for frame in small_frames() {
            batch.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            batch.extend_from_slice(&frame);
        }
        writer.append_entries(&batch, 3).unwrap();
        writer.append(b"last").unwrap();
        assert_eq!(writer.finish().unwrap().entries, 4);
        let (_, read) = load(dir.path());
        let mut expected = small_frames();
        expected.push(b"last".to_vec());
        assert_eq!(read, expected);
    }

    #[test]
    fn the_file_layout_matches_the_documented_table() {
        let frames = small_frames();
        let file = valid_file(&frames, 0x0102_0304_0506_0708);
        assert_eq!(&file[0..6], b"SCSNAP");
        assert_eq!(&file[6..8], &[0, 2]);
        assert_eq!(&file[8..16], &0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(&file[16..20], &1u32.to_be_bytes());
        assert_eq!(&file[20..21], b"a");
        assert_eq!(&file[21..25], &0u32.to_be_bytes());
        assert_eq!(&file[25..29], &11u32.to_be_bytes());
        assert_eq!(&file[29..40], b"shard-frame");
        assert_eq!(&file[40..48], &3u64.to_be_bytes());
        assert_eq!(file.len(), 48 + 8);
        assert_eq!(&file[48..], &xxh3_64(&file[..48]).to_be_bytes());
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_snapshot(dir.path(), &[] as &[Vec<u8>], 42).unwrap();
        assert_eq!(written.entries, 0);
        assert_eq!(written.bytes, HEADER_LEN + TRAILER_LEN);
        let (loaded, read) = load(dir.path());
        assert_eq!(loaded.path, Some(written.path));
        assert_eq!(loaded.created_at_ms, 42);
        assert!(read.is_empty());
        assert!(loaded.skipped.is_empty());
    }

    #[test]
    fn no_snapshot_loads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).0, LoadedSnapshot::default());
        let missing = dir.path().join("never-created");
        assert_eq!(load(&missing).0, LoadedSnapshot::default());
        fs::write(dir.path().join("unrelated.txt"), b"not a snapshot").unwrap();
        assert_eq!(load(dir.path()).0, LoadedSnapshot::default());
    }

    #[test]
    fn only_the_newest_two_snapshots_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for created_at_ms in [1, 2, 3] {
            let frame = format!("written at {created_at_ms}").into_bytes();
            write_snapshot(dir.path(), &[frame], created_at_ms).unwrap();
        }
        assert_eq!(
            snapshot_names(dir.path()),
            [snapshot_file_name(2), snapshot_file_name(3)]
        );
        let (loaded, read) = load(dir.path());
        assert_eq!(loaded.created_at_ms, 3);
        assert_eq!(read, [b"written at 3".to_vec()]);
        // Numbering continues from the highest file left, never reusing a name.
        let fourth = write_snapshot(dir.path(), &[] as &[Vec<u8>], 4).unwrap();
        assert_eq!(fourth.path, dir.path().join(snapshot_file_name(4)));
    }

    #[test]
    fn an_unfinished_writer_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SnapshotWriter::create(dir.path(), 1).unwrap();
        writer.append(b"never finished").unwrap();
        drop(writer);
        assert!(snapshot_names(dir.path()).is_empty());
    }

    #[test]
    fn a_truncated_newest_snapshot_falls_back_to_the_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let older = write_snapshot(dir.path(), &small_frames(), 10).unwrap();
        let newer = write_snapshot(dir.path(), &sample_frames(), 20).unwrap();
        let full = fs::read(&newer.path).unwrap();
        fs::write(&newer.path, &full[..full.len() / 2]).unwrap();
        let (loaded, read) = load(dir.path());
        assert_eq!(loaded.path, Some(older.path));
        assert_eq!(loaded.created_at_ms, 10);
        assert_eq!(read, small_frames());
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
        let (loaded, read) = load(dir.path());
        assert_eq!(loaded.path, Some(older.path));
        assert_eq!(
            read,
            small_frames(),
            "nothing of the corrupt file was visited"
        );
        assert_eq!(
            loaded.skipped,
            [(newer.path, "corrupt: checksum mismatch".to_string())]
        );
    }

    #[test]
    fn other_format_versions_are_refused_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let older = write_snapshot(dir.path(), &small_frames(), 10).unwrap();
        let mut future = valid_file(&small_frames(), 20);
        future[6..8].copy_from_slice(&7u16.to_be_bytes());
        let future_path = put_raw(dir.path(), 3, &future);
        let mut first = valid_file(&small_frames(), 20);
        first[6..8].copy_from_slice(&1u16.to_be_bytes());
        let first_path = put_raw(dir.path(), 2, &first);
        let (loaded, read) = load(dir.path());
        assert_eq!(loaded.path, Some(older.path));
        assert_eq!(read, small_frames());
        assert_eq!(loaded.skipped.len(), 2);
        assert_eq!(loaded.skipped[0].0, future_path);
        assert!(
            loaded.skipped[0].1.contains("version 7"),
            "{}",
            loaded.skipped[0].1
        );
        assert_eq!(loaded.skipped[1].0, first_path);
        assert!(
            loaded.skipped[1].1.contains("format version 1"),
            "{}",
            loaded.skipped[1].1
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
        assert_eq!(load(dir.path()).0, LoadedSnapshot::default());
        let written = write_snapshot(dir.path(), &[b"real".to_vec()], 5).unwrap();
        assert_eq!(written.path, dir.path().join(snapshot_file_name(1)));
        assert_eq!(snapshot_names(dir.path()), [snapshot_file_name(1)]);
        let (loaded, read) = load(dir.path());
        assert_eq!(loaded.created_at_ms, 5);
        assert_eq!(read, [b"real".to_vec()]);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_skipped_never_loaded_half_way() {
        let dir = tempfile::tempdir().unwrap();
        let fallback = put_raw(dir.path(), 1, &valid_file(&[b"old".to_vec()], 1));
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
            let (loaded, read) = load(dir.path());
            assert_eq!(
                loaded.path.as_ref(),
                Some(&fallback),
                "{} bytes",
                damaged.len()
            );
            assert_eq!(read, [b"old".to_vec()]);
            assert_eq!(loaded.skipped.len(), 1);
            assert_eq!(loaded.skipped[0].0, damaged_path);
            assert!(!loaded.skipped[0].1.is_empty());
        }
        put_raw(dir.path(), 2, &full);
        let (loaded, read) = load(dir.path());
        assert_eq!(loaded.created_at_ms, 2);
        assert_eq!(read, small_frames());
        assert!(loaded.skipped.is_empty());
    }

    #[test]
    fn loading_never_trusts_a_huge_entry_count_or_length() {
        let dir = tempfile::tempdir().unwrap();
        // A checksum-valid file announcing u64::MAX entries over an empty body, and
        // one whose only entry claims 4 GiB.
        for body in [&[][..], &u32::MAX.to_be_bytes()[..]] {
            let mut file = Vec::new();
            file.extend_from_slice(MAGIC);
            file.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
            file.extend_from_slice(&0u64.to_be_bytes());
            file.extend_from_slice(body);
            file.extend_from_slice(&u64::MAX.to_be_bytes());
            let checksum = xxh3_64(&file);
            file.extend_from_slice(&checksum.to_be_bytes());
            let path = put_raw(dir.path(), 1, &file);
            let reason = scan(&path, &mut |_| panic!("nothing to visit")).unwrap_err();
            assert!(
                reason.starts_with("truncated") || reason.contains("announces"),
                "{reason}"
            );
        }
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
