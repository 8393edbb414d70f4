//! The segmented, checksummed, group-committed log of one topic partition.
//!
//! # Why our own log
//!
//! It is written the way Kafka's log and BookKeeper's journal are: append-only
//! segment files, every record length-prefixed and crc32c-checksummed, sparse
//! indexes, and group commit (many appends, one write, one fdatasync). The
//! Rust crates that exist do not fit: the LSM engines (fjall, rocksdb) write
//! each byte several times (WAL, then flush, then compactions) for a workload
//! that only ever appends and reads sequentially, and the log-shaped crates
//! (sled, commitlog, okaywal) are unmaintained.
//!
//! # Layout
//!
//! A directory per partition holding `{base_offset:020}.log` segments (see
//! `record.rs` for the frame format). The newest segment is the active one;
//! when appending a batch would take it past `segment_bytes` a new one is
//! started at the next offset and the old one is sealed: its sparse
//! `.index` (offset -> byte) and `.timeindex` (publish time -> offset) are
//! written and fsynced beside it (see `index.rs`). Creating, rolling and
//! deleting segment files fsyncs the directory.
//!
//! Offsets are contiguous from 0; publish times are milliseconds since the
//! epoch, made non-decreasing. Appends go through one writer task and one
//! dedicated I/O thread per open log (see `writer.rs`); an append resolves
//! only after the fdatasync that covers it, and readers only see records
//! below the high watermark, which advances after each fsync.
//!
//! # Recovery
//!
//! On open, the active segment is scanned from its start and every record
//! verified. A torn tail (an incomplete record, or a bad record with no
//! valid record anywhere after it, e.g. zeros) is what a crash during a
//! write leaves; it was never acknowledged, and it is truncated. A bad record
//! with a valid record after it is not a crash artifact: open fails with
//! [`LogError::Corrupt`] naming the file and the byte position, and nothing
//! is dropped silently. Sealed segments are trusted through their checksummed
//! index files (scanned strictly if those are missing or stale) and every
//! record read from any segment has its checksum verified: a bad one is an
//! error, never data.
//!
//! ## When open reports `Corrupt`
//!
//! Stop the gateway, copy the partition directory somewhere safe, then
//! choose what to lose:
//!
//! * Truncate the segment at the reported position
//!   (`truncate -s POSITION DIR/000…BASE.log`) and delete its `.index` and
//!   `.timeindex`. This loses the damaged record and every later record *of
//!   that segment*. If it was the newest segment, new appends continue at
//!   the next offset after what remains; if it was sealed, the offsets it lost
//!   become a gap that readers step over (as Kafka consumers do after
//!   compaction).
//! * Or move the whole segment aside (`mkdir -p DIR/quarantine && mv
//!   DIR/000…BASE.* DIR/quarantine/`). This loses all of that segment's
//!   records; the log then starts later (oldest segment) or has a gap (a
//!   middle one). Do not do this to the newest segment: appends would reuse
//!   the offsets it held, which consumers may already have seen. Truncate it
//!   instead.
//!
//! # Memory
//!
//! Appends wait on a bounded queue. Reads go through positional reads into a
//! window of about `max_bytes` (at least 4 KiB, at most 1 MiB a refill), so a
//! reader streams a backlog of any size; indexes hold one entry per
//! `index_interval_bytes`, never one per record.

mod index;
mod record;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gateway_api::NewMessage;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use segment::{ReadBudget, ReadPlan, Recovery, Segment};
use writer::{Command, Writer};

/// Tuning of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when appending would take the active one past
    /// this; bounds what retention deletes at a time and what open scans.
    pub segment_bytes: u64,
    /// One sparse index entry per this many bytes: a lookup reads at most
    /// this much before the record it wants.
    pub index_interval_bytes: u32,
    /// Most bytes one group commit writes, so one fsync does not stall the
    /// appends behind it for long.
    pub max_batch_bytes: usize,
    /// Larger records are refused on append and treated as corrupt on read,
    /// so a damaged length never makes us allocate gigabytes.
    pub max_record_bytes: usize,
    /// Appends that may wait for the writer; beyond it appenders wait
    /// (backpressure) instead of growing memory.
    pub queue_depth: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            index_interval_bytes: 4096,
            max_batch_bytes: 4 << 20,
            max_record_bytes: 8 << 20,
            queue_depth: 4096,
        }
    }
}

impl LogConfig {
    /// Checks the limits the on-disk format relies on: positions and
    /// relative offsets within a segment fit in `u32`.
    fn validate(&self) -> Result<(), LogError> {
        let invalid = |reason: &str| Err(LogError::InvalidConfig(reason.to_string()));
        if self.segment_bytes == 0 || self.segment_bytes > u64::from(u32::MAX) {
            return invalid("segment_bytes must be between 1 and 4 GiB - 1");
        }
        if self.max_record_bytes < record::MIN_FRAME_LEN || self.max_record_bytes > (1 << 30) {
            return invalid("max_record_bytes must be between 29 bytes and 1 GiB");
        }
        if self.max_batch_bytes == 0 || self.queue_depth == 0 || self.index_interval_bytes == 0 {
            return invalid("max_batch_bytes, queue_depth and index_interval_bytes must be > 0");
        }
        Ok(())
    }

    /// The largest record body accepted from disk.
    fn max_body(&self) -> u64 {
        (self.max_record_bytes - record::HEADER_LEN) as u64
    }
}

/// When sealed segments may be deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub max_age: Option<Duration>,
}

/// A stored record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its position in the partition, contiguous from 0.
    pub offset: u64,
    /// When the log stored it, ms since the epoch; non-decreasing by offset.
    pub publish_time: u64,
    /// Producer-set event time, ms since the epoch.
    pub event_time: Option<u64>,
    /// Partition key.
    pub key: Option<Bytes>,
    /// Properties in publish order; keys may repeat.
    pub properties: Vec<(String, String)>,
    /// The body.
    pub payload: Bytes,
}

/// Counters of the writer, for metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Group commits (one write + one fdatasync each) since open.
    pub group_commits: u64,
    /// Records made durable since open.
    pub records: u64,
    /// Frame bytes made durable since open.
    pub bytes: u64,
}

/// What went wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system refused an operation.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A segment holds bytes that are not a valid record where one must be.
    #[error("corrupt log segment {path} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad record in it.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The record is larger than `max_record_bytes`.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Its encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The log was closed or deleted.
    #[error("the partition log is closed")]
    Closed,
    /// An earlier write or fsync failed; the log takes no more appends.
    #[error("the partition log stopped after a failed write ({reason}); reopen it to recover")]
    Failed {
        /// The error that stopped it.
        reason: String,
    },
    /// The configuration breaks a limit of the format.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
}

impl LogError {
    fn io(path: impl AsRef<Path>, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// The state shared by the handles, the readers and the writer task.
pub(crate) struct Inner {
    /// The partition directory.
    dir: PathBuf,
    /// Limits and tuning.
    config: LogConfig,
    /// Segments, oldest first; the last is the active one. Locked only for
    /// short bookkeeping, never across I/O.
    segments: RwLock<Vec<Segment>>,
    /// The high watermark: offset of the next durable record. Readers and
    /// subscribers watch it.
    high_watermark: watch::Sender<u64>,
    /// Oldest retained offset; moves forward when retention deletes.
    start_offset: AtomicU64,
    /// Bytes of all segments.
    size_bytes: AtomicU64,
    /// Group commits done, for [`LogStats`].
    group_commits: AtomicU64,
    /// Records committed, for [`LogStats`].
    committed_records: AtomicU64,
    /// Bytes committed, for [`LogStats`].
    committed_bytes: AtomicU64,
    /// Set once when a write or fsync failed; appends then get `Failed`.
    failed: OnceLock<String>,
}

impl Inner {
    fn read_state(&self) -> RwLockReadGuard<'_, Vec<Segment>> {
        // A panic while holding the lock cannot leave the segment list half
        // edited (each edit is one push, remove or field update).
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, Vec<Segment>> {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The error for an append the writer will not take.
    fn stopped_error(&self) -> LogError {
        match self.failed.get() {
            Some(reason) => LogError::Failed {
                reason: reason.clone(),
            },
            None => LogError::Closed,
        }
    }
}

/// What a handle holds: the queue to the writer and the shared state.
struct Handle {
    /// The shared state.
    inner: Arc<Inner>,
    /// The bounded queue to the writer. When the last handle drops, the
    /// writer sees the queue close and stops.
    tx: mpsc::Sender<Command>,
    /// Set by `close`, so later appends fail fast with `Closed`.
    closed: AtomicBool,
    /// The writer task, awaited by `close`.
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// The durable log of one topic partition. Cheap to clone; every clone is
/// the same log.
#[derive(Clone)]
pub struct PartitionLog {
    /// Shared by the clones.
    handle: Arc<Handle>,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.handle.inner.dir)
            .field("start_offset", &self.start_offset())
            .field("next_offset", &self.next_offset())
            .finish()
    }
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir`, recovering it as the
    /// module docs describe, and starts its writer task.
    pub async fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<PartitionLog, LogError> {
        config.validate()?;
        let dir = dir.into();
        let recovered = {
            let (dir, config) = (dir.clone(), config.clone());
            tokio::task::spawn_blocking(move || recover_dir(&dir, &config))
                .await
                .map_err(|e| LogError::Failed {
                    reason: format!("recovery task panicked: {e}"),
                })??
        };
        let start_offset = recovered.first().map_or(0, |s| s.base_offset);
        let next_offset = recovered.last().map_or(0, |s| s.end_offset);
        let size: u64 = recovered.iter().map(|s| s.size).sum();
        let last_publish_time = recovered
            .iter()
            .map(|s| s.max_publish_time)
            .max()
            .unwrap_or(0);
        let (high_watermark, _) = watch::channel(next_offset);
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let inner = Arc::new(Inner {
            dir,
            config,
            segments: RwLock::new(Vec::new()),
            high_watermark,
            start_offset: AtomicU64::new(start_offset),
            size_bytes: AtomicU64::new(size),
            group_commits: AtomicU64::new(0),
            committed_records: AtomicU64::new(0),
            committed_bytes: AtomicU64::new(0),
            failed: OnceLock::new(),
        });
        let writer = match recovered.last() {
            Some(active) => Writer::new(inner.clone(), rx, active, last_publish_time)?,
            None => {
                return Err(LogError::Failed {
                    reason: "recovery produced no segment".into(),
                })
            }
        };
        *inner.write_state() = recovered;
        let task = tokio::spawn(writer.run());
        Ok(PartitionLog {
            handle: Arc::new(Handle {
                inner,
                tx,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(task)),
            }),
        })
    }

    /// Appends `message`; resolves with (offset, publish time in ms) once
    /// the fdatasync covering it returned. Waits while the queue is full.
    pub async fn append(&self, message: NewMessage) -> Result<(u64, u64), LogError> {
        let inner = &self.handle.inner;
        if self.handle.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        if let Some(reason) = inner.failed.get() {
            return Err(LogError::Failed {
                reason: reason.clone(),
            });
        }
        let size = record::frame_len(&message);
        if size > inner.config.max_record_bytes {
            return Err(LogError::RecordTooLarge {
                size,
                limit: inner.config.max_record_bytes,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.handle
            .tx
            .send(Command::Append { message, reply })
            .await
            .map_err(|_| inner.stopped_error())?;
        answer.await.map_err(|_| inner.stopped_error())?
    }

    /// The oldest retained offset.
    pub fn start_offset(&self) -> u64 {
        self.handle.inner.start_offset.load(Ordering::Acquire)
    }

    /// The high watermark: the offset the next durable record gets.
    pub fn next_offset(&self) -> u64 {
        *self.handle.inner.high_watermark.borrow()
    }

    /// The high watermark now, and a notification after each group commit.
    pub fn subscribe_appends(&self) -> watch::Receiver<u64> {
        self.handle.inner.high_watermark.subscribe()
    }

    /// Bytes held by all segments.
    pub fn size_bytes(&self) -> u64 {
        self.handle.inner.size_bytes.load(Ordering::Relaxed)
    }

    /// Writer counters since open.
    pub fn stats(&self) -> LogStats {
        let inner = &self.handle.inner;
        LogStats {
            group_commits: inner.group_commits.load(Ordering::Relaxed),
            records: inner.committed_records.load(Ordering::Relaxed),
            bytes: inner.committed_bytes.load(Ordering::Relaxed),
        }
    }

    /// Records from `from` (raised to the start offset) below the high
    /// watermark: at most `max_records`, and no more than `max_bytes` of
    /// frames except that one record is returned even if it alone is larger.
    /// Empty when nothing is available. Every record's checksum is verified.
    pub async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let inner = &self.handle.inner;
        let mut budget = ReadBudget {
            from: from.max(self.start_offset()),
            max_records,
            max_bytes,
            max_body: inner.config.max_body(),
            used_bytes: 0,
            out: Vec::new(),
        };
        while !budget.full() {
            let Some((plan, end_offset)) = self.plan(budget.from) else {
                break;
            };
            let (returned, stopped) = tokio::task::spawn_blocking(move || {
                let stopped = segment::read_into(&plan, &mut budget);
                (budget, stopped)
            })
            .await
            .map_err(|e| LogError::Failed {
                reason: format!("read task panicked: {e}"),
            })?;
            budget = returned;
            if stopped? {
                break;
            }
            budget.from = budget.from.max(end_offset);
        }
        Ok(budget.out)
    }

    /// Where to read `from` in: the first segment holding durable records at
    /// or after it, the indexed position to start at, and the offset where
    /// that segment's durable records end.
    fn plan(&self, from: u64) -> Option<(ReadPlan, u64)> {
        let state = self.handle.inner.read_state();
        let i = state.partition_point(|s| s.end_offset <= from);
        let seg = state.get(i)?;
        if seg.end_offset == seg.base_offset {
            return None;
        }
        let start_pos = if from <= seg.base_offset {
            0
        } else {
            u64::from(seg.index.floor((from - seg.base_offset) as u32).1)
        };
        Some((
            ReadPlan {
                file: seg.file.clone(),
                path: seg.path.clone(),
                start_pos,
                end_pos: seg.size,
            },
            seg.end_offset,
        ))
    }

    /// The first offset whose publish time is at or after `publish_time_ms`,
    /// `None` if every durable record is older.
    pub async fn offset_for_timestamp(
        &self,
        publish_time_ms: u64,
    ) -> Result<Option<u64>, LogError> {
        let start = {
            let state = self.handle.inner.read_state();
            let Some(seg) = state
                .iter()
                .find(|s| s.end_offset > s.base_offset && s.max_publish_time >= publish_time_ms)
            else {
                return Ok(None);
            };
            seg.base_offset + u64::from(seg.index.time_floor(publish_time_ms).unwrap_or(0))
        };
        let mut from = start;
        loop {
            let batch = self.read(from, 1024, 1 << 20).await?;
            let Some(last) = batch.last() else {
                return Ok(None);
            };
            if let Some(r) = batch.iter().find(|r| r.publish_time >= publish_time_ms) {
                return Ok(Some(r.offset));
            }
            from = last.offset + 1;
        }
    }

    /// Deletes sealed segments, oldest first, while all of the oldest one's
    /// records are below `keep_from` and `policy` is exceeded (total size
    /// over `max_bytes`, or its newest record older than `max_age`). The
    /// active segment is never deleted. Returns how many were deleted.
    pub async fn enforce_retention(
        &self,
        policy: RetentionPolicy,
        keep_from: u64,
    ) -> Result<u64, LogError> {
        let inner = self.handle.inner.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut removed = Vec::new();
        {
            let mut state = inner.write_state();
            let mut total: u64 = state.iter().map(|s| s.size).sum();
            while state.len() > 1 {
                let oldest = &state[0];
                let too_big = policy.max_bytes.is_some_and(|max| total > max);
                let too_old = policy.max_age.is_some_and(|age| {
                    oldest
                        .max_publish_time
                        .saturating_add(age.as_millis() as u64)
                        < now
                });
                if oldest.end_offset > keep_from || !(too_big || too_old) {
                    break;
                }
                let seg = state.remove(0);
                total -= seg.size;
                removed.push(seg);
            }
            if let Some(first) = state.first() {
                inner
                    .start_offset
                    .store(first.base_offset, Ordering::Release);
            }
        }
        if removed.is_empty() {
            return Ok(0);
        }
        let freed: u64 = removed.iter().map(|s| s.size).sum();
        inner.size_bytes.fetch_sub(freed, Ordering::Relaxed);
        let count = removed.len() as u64;
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            for seg in &removed {
                // The .log first: index files without a log are ignored and
                // cleaned up on open, a log without index files is rescanned.
                remove_if_exists(&seg.path)?;
                remove_if_exists(&index::index_path(&inner.dir, seg.base_offset))?;
                remove_if_exists(&index::time_index_path(&inner.dir, seg.base_offset))?;
                tracing::debug!(path = %seg.path.display(), "retention deleted segment");
            }
            segment::sync_dir(&inner.dir)
        })
        .await
        .map_err(|e| LogError::Failed {
            reason: format!("retention task panicked: {e}"),
        })??;
        Ok(count)
    }

    /// Drains queued appends (each resolves after its fsync), stops the
    /// writer, and makes later appends fail with [`LogError::Closed`].
    /// Closing twice is harmless.
    pub async fn close(&self) -> Result<(), LogError> {
        self.handle.closed.store(true, Ordering::Release);
        let (done, stopped) = oneshot::channel();
        if self.handle.tx.send(Command::Close { done }).await.is_ok() {
            let _ = stopped.await;
        }
        let task = self.handle.writer.lock().await.take();
        if let Some(task) = task {
            task.await.map_err(|e| LogError::Failed {
                reason: format!("writer task panicked: {e}"),
            })?;
        }
        match self.handle.inner.failed.get() {
            Some(reason) => Err(LogError::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Closes the log and removes its directory (topic deletion).
    pub async fn delete(self) -> Result<(), LogError> {
        // A failed log is still deleted: its data is being thrown away.
        match self.close().await {
            Ok(()) | Err(LogError::Failed { .. }) => {}
            Err(e) => return Err(e),
        }
        let dir = self.handle.inner.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LogError::io(&dir, source)),
            }
            match dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => segment::sync_dir(parent),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| LogError::Failed {
            reason: format!("delete task panicked: {e}"),
        })?
    }
}

fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::io(path, source)),
    }
}

/// Brings the directory to a consistent state and loads its segments, oldest
/// first; creates the first segment of a new log. Blocking.
fn recover_dir(dir: &Path, config: &LogConfig) -> Result<Vec<Segment>, LogError> {
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| LogError::io(dir, source))?;
    if created {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            segment::sync_dir(parent)?;
        }
    }
    let mut bases = Vec::new();
    let mut index_files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| LogError::io(dir, source))? {
        let entry = entry.map_err(|source| LogError::io(dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_file_name(name) {
            bases.push(base);
        } else if let Some(stem) = name
            .strip_suffix(".index")
            .or_else(|| name.strip_suffix(".timeindex"))
        {
            if let Ok(base) = stem.parse::<u64>() {
                index_files.push((base, entry.path()));
            }
        }
    }
    bases.sort_unstable();

    let mut changed = false;
    // Index files of no segment (left by an interrupted deletion) or of the
    // active segment (left by an interrupted roll, and stale once it grows).
    for (base, path) in &index_files {
        if bases.last() == Some(base) || bases.binary_search(base).is_err() {
            remove_if_exists(path)?;
            changed = true;
        }
    }

    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
    let interval = config.index_interval_bytes;
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::file_name(base));
        let seg = if i + 1 == bases.len() {
            segment::recover(
                path,
                base,
                Recovery::TruncateTornTail,
                config.max_body(),
                interval,
            )?
        } else {
            load_sealed(dir, path, base, config)?
        };
        if let Some(prev) = segments.last() {
            if seg.base_offset < prev.end_offset {
                return Err(LogError::Corrupt {
                    path: seg.path.clone(),
                    position: 0,
                    reason: format!(
                        "segment starts at offset {} but the one before ends at {}",
                        seg.base_offset, prev.end_offset
                    ),
                });
            }
            if seg.base_offset > prev.end_offset {
                tracing::warn!(
                    path = %seg.path.display(),
                    missing_from = prev.end_offset,
                    missing_to = seg.base_offset,
                    "offsets missing between segments; readers step over them"
                );
            }
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        let path = dir.join(segment::file_name(0));
        let file = segment::open_file(&path, true)?;
        changed = true;
        segments.push(Segment {
            base_offset: 0,
            path,
            file: Arc::new(file),
            size: 0,
            end_offset: 0,
            max_publish_time: 0,
            index: Default::default(),
        });
    }
    if changed {
        segment::sync_dir(dir)?;
    }
    Ok(segments)
}

/// Loads a sealed segment through its index files, or scans it strictly
/// (and rewrites them) when they cannot be trusted.
fn load_sealed(
    dir: &Path,
    path: PathBuf,
    base: u64,
    config: &LogConfig,
) -> Result<Segment, LogError> {
    let file = segment::open_file(&path, false)?;
    let size = file
        .metadata()
        .map_err(|source| LogError::io(&path, source))?
        .len();
    let loaded = index::load_files(dir, base, size)
        .map_err(|source| LogError::io(index::index_path(dir, base), source))?;
    if let Some((index, info)) = loaded {
        return Ok(Segment {
            base_offset: base,
            path,
            file: Arc::new(file),
            size,
            end_offset: info.end_offset,
            max_publish_time: info.max_publish_time,
            index,
        });
    }
    tracing::info!(path = %path.display(), "index files missing or stale; scanning the sealed segment");
    let seg = segment::recover(
        path,
        base,
        Recovery::Strict,
        config.max_body(),
        config.index_interval_bytes,
    )?;
    index::write_files(dir, base, &seg.index, seg.seal_info())
        .map_err(|source| LogError::io(index::index_path(dir, base), source))?;
    Ok(seg)
}
