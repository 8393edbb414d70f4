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
//! is dropped silently. Every record read from any segment has its checksum
//! verified: a bad one is an error, never data.
//!
//! A sealed segment is not scanned on open. Open needs only its facts (size,
//! end offset, newest publish time), which the fixed footer of its `.index`
//! file holds, so it reads that footer and the last index entry, not the
//! whole file: reading and checksumming every index file would make open
//! cost time in proportion to the retained bytes. The footer is not trusted
//! on its own. Open scans the segment from the last index entry to its end
//! (at most about one index interval plus one record) and takes the facts
//! only if those checksummed records end exactly at the recorded size, with
//! offsets that follow each other up to the recorded end offset and the
//! recorded newest publish time (publish times never decrease). If they do
//! not, open checks the whole index file's checksum, as it always did, and
//! trusts the footer if it holds (a damaged record there is reported to the
//! reader that reaches it). If that fails too, or the files are missing or
//! describe another size, the segment is scanned strictly and its index
//! files are written again.
//!
//! A sealed segment's entries are checked when a read or a timestamp lookup
//! first needs them (see [Memory](#memory)): both files' checksums, and a
//! footer equal to the facts open established. Files that fail are not
//! used: the segment is scanned, its index rebuilt from the records and its
//! files rewritten (if the scan finds a damaged record, the records before
//! it are indexed and a read at or past it reports the damage). A read also
//! checks that the record an index entry points at is not past the one
//! wanted, so an index can slow a read down but never make it skip records.
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
//! reader streams a backlog of any size. Indexes hold one entry per
//! `index_interval_bytes`, never one per record, and only the active
//! segment's lives in memory for good. A sealed segment keeps a few fixed
//! fields; its index is loaded on the first lookup that needs it (outside
//! the segments lock) into a per-log cache of the
//! [`LogConfig::sealed_index_cache`] most recently used, so a sequential
//! reader loads each segment's index once, and a log's memory does not grow
//! with the bytes it retains. One load runs at a time per log; a reader
//! that waited for it finds the index cached.

mod index;
mod record;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gateway_api::NewMessage;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use index::{IndexCache, SealInfo, SegmentIndex};
use segment::{IndexSource, ReadBudget, ReadPlan, Recovery, Segment};
use writer::{Command, Writer};

/// Most records a read makes room for before it has read any.
const MAX_PREALLOCATED_RECORDS: usize = 1024;

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
    /// Sealed segments whose indexes the log keeps in memory, the most
    /// recently used; the others stay on disk until a lookup needs them.
    /// This, not the bytes retained, bounds the memory of a log's indexes.
    pub sealed_index_cache: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            index_interval_bytes: 4096,
            max_batch_bytes: 4 << 20,
            max_record_bytes: 8 << 20,
            queue_depth: 4096,
            sealed_index_cache: 4,
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
        if self.max_batch_bytes == 0
            || self.queue_depth == 0
            || self.index_interval_bytes == 0
            || self.sealed_index_cache == 0
        {
            return invalid(
                "max_batch_bytes, queue_depth, index_interval_bytes and sealed_index_cache must be > 0",
            );
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

/// Counters of the writer and the index cache, for metrics and the
/// benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Group commits (one write + one fdatasync each) since open.
    pub group_commits: u64,
    /// Records made durable since open.
    pub records: u64,
    /// Frame bytes made durable since open.
    pub bytes: u64,
    /// Sealed segments whose indexes are in memory now: at most
    /// [`LogConfig::sealed_index_cache`], however many segments there are.
    pub sealed_indexes_cached: usize,
    /// Sealed segments' indexes loaded from disk (or rebuilt by a scan)
    /// since open.
    pub sealed_index_loads: u64,
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
    /// Indexes of recently used sealed segments. Locked briefly, never
    /// across I/O; when both locks are taken, `segments` first.
    sealed_indexes: std::sync::Mutex<IndexCache>,
    /// Held while a sealed index is loaded, so concurrent readers of one
    /// segment load it once (the later ones find it cached). Taken before
    /// either lock above, on the blocking pool only.
    index_loading: std::sync::Mutex<()>,
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

    fn index_cache(&self) -> std::sync::MutexGuard<'_, IndexCache> {
        // Every edit is one insert, removal or counter bump.
        self.sealed_indexes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f` to `seg`'s index if that is in memory (the active
    /// segment's, or a cached sealed one's); otherwise says what to load.
    /// Called under the segments lock, so it does no I/O.
    fn lookup<T>(&self, seg: &Segment, f: impl FnOnce(&SegmentIndex) -> T) -> Lookup<T> {
        if let Some(index) = &seg.index {
            return Lookup::Answered(f(index));
        }
        match self.index_cache().get(seg.base_offset) {
            Some(index) => Lookup::Answered(f(&index)),
            None => Lookup::Load(seg.index_source()),
        }
    }

    /// The index of the sealed segment `source`: cached, or loaded from its
    /// files and cached if the segment is still in the log. Blocking.
    fn load_index(&self, source: &IndexSource) -> Result<Arc<SegmentIndex>, LogError> {
        let _one_at_a_time = self
            .index_loading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let base = source.base_offset;
        if let Some(index) = self.index_cache().get(base) {
            return Ok(index);
        }
        let loaded = match index::load_files(&self.dir, base, source.seal.size) {
            Ok(Some((index, seal))) if seal == source.seal => Some(index),
            Ok(_) => None,
            Err(error) => {
                let path = index::index_path(&self.dir, base);
                tracing::warn!(path = %path.display(), %error, "cannot read index files");
                None
            }
        };
        let index = match loaded {
            Some(index) => index,
            None => self.rebuild_index(source)?,
        };
        let index = Arc::new(index);
        let state = self.read_state();
        let mut cache = self.index_cache();
        cache.count_load();
        // Retention may have deleted the segment meanwhile (it forgets the
        // cached indexes of what it deletes after removing the segments).
        if state.binary_search_by_key(&base, |s| s.base_offset).is_ok() {
            cache.insert(base, index.clone());
        }
        Ok(index)
    }

    /// Rebuilds a sealed segment's index by scanning it, because its index
    /// files are missing or cannot be trusted, and rewrites them if the
    /// segment is intact. A damaged segment still gets the index of the
    /// records before the damage: reads there work, reads past it report it.
    /// Blocking.
    fn rebuild_index(&self, source: &IndexSource) -> Result<SegmentIndex, LogError> {
        let base = source.base_offset;
        tracing::warn!(path = %source.path.display(), "index files missing or invalid; scanning the sealed segment");
        let found = segment::scan(
            &source.file,
            &source.path,
            base,
            (0, base),
            source.seal.size,
            self.config.max_body(),
            self.config.index_interval_bytes,
        )?;
        let seal = found.seal_info();
        let still_here = self
            .read_state()
            .binary_search_by_key(&base, |s| s.base_offset)
            .is_ok();
        if found.damage.is_none() && seal == source.seal && still_here {
            // A lost or torn rewrite is harmless: it is checked and rebuilt
            // again. Files of a segment that retention deletes meanwhile are
            // removed on the next open.
            if let Err(error) = index::write_files(&self.dir, base, &found.index, seal) {
                tracing::warn!(path = %source.path.display(), %error, "cannot rewrite index files");
            }
        } else if let Some(reason) = &found.damage {
            tracing::error!(path = %source.path.display(), position = found.end_pos, %reason, "sealed segment is damaged; reads from there fail");
        }
        Ok(found.index)
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

/// A lookup in one segment's index, decided under the segments lock.
enum Lookup<T> {
    /// The index was in memory: the answer.
    Answered(T),
    /// The segment is sealed and its index is not cached: load it (outside
    /// the lock) and look again.
    Load(IndexSource),
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
        let sealed_indexes = IndexCache::new(config.sealed_index_cache);
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let inner = Arc::new(Inner {
            dir,
            config,
            segments: RwLock::new(Vec::new()),
            sealed_indexes: std::sync::Mutex::new(sealed_indexes),
            index_loading: std::sync::Mutex::new(()),
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
        let answer = self.enqueue(message).await?;
        answer
            .await
            .map_err(|_| self.handle.inner.stopped_error())?
    }

    /// Queues the appends of `messages`, in order, with consecutive offsets
    /// unless another append lands between them, so they share group
    /// commits; returns once all are queued (later appends land after
    /// them), and the returned future resolves once the last is durable.
    /// A batch with a message over the record limit is refused whole,
    /// before any of it is queued; on a later error some first ones may be
    /// stored.
    pub async fn queue_batch(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<impl Future<Output = Result<Vec<(u64, u64)>, LogError>> + Send + 'static, LogError>
    {
        let limit = self.handle.inner.config.max_record_bytes;
        if let Some(size) = messages
            .iter()
            .map(record::frame_len)
            .find(|&size| size > limit)
        {
            return Err(LogError::RecordTooLarge { size, limit });
        }
        let mut answers = Vec::with_capacity(messages.len());
        for message in messages {
            answers.push(self.enqueue(message).await?);
        }
        let inner = self.handle.inner.clone();
        Ok(async move {
            let mut appended = Vec::with_capacity(answers.len());
            for answer in answers {
                appended.push(answer.await.map_err(|_| inner.stopped_error())??);
            }
            Ok(appended)
        })
    }

    /// Checks `message` and queues its append (waiting while the queue is
    /// full); the receiver answers once it is durable. Appends are written
    /// in the order they are queued.
    async fn enqueue(
        &self,
        message: NewMessage,
    ) -> Result<oneshot::Receiver<Result<(u64, u64), LogError>>, LogError> {
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
        Ok(answer)
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

    /// Writer and index-cache counters since open.
    pub fn stats(&self) -> LogStats {
        let inner = &self.handle.inner;
        let cache = inner.index_cache();
        LogStats {
            group_commits: inner.group_commits.load(Ordering::Relaxed),
            records: inner.committed_records.load(Ordering::Relaxed),
            bytes: inner.committed_bytes.load(Ordering::Relaxed),
            sealed_indexes_cached: cache.len(),
            sealed_index_loads: cache.loads(),
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
            // Grown record by record it was copied at each doubling.
            out: Vec::with_capacity(max_records.min(MAX_PREALLOCATED_RECORDS)),
        };
        while !budget.full() {
            let Some((plan, end_offset)) = self.plan(budget.from).await? else {
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
    async fn plan(&self, from: u64) -> Result<Option<(ReadPlan, u64)>, LogError> {
        let (mut plan, end_offset, floor, start) = {
            let state = self.handle.inner.read_state();
            let i = state.partition_point(|s| s.end_offset <= from);
            let Some(seg) = state.get(i) else {
                return Ok(None);
            };
            if seg.end_offset == seg.base_offset {
                return Ok(None);
            }
            let rel = from.saturating_sub(seg.base_offset) as u32;
            let floor = move |index: &SegmentIndex| index.floor(rel).1;
            let start = if rel == 0 {
                Lookup::Answered(0)
            } else {
                self.handle.inner.lookup(seg, floor)
            };
            let plan = ReadPlan {
                file: seg.file.clone(),
                path: seg.path.clone(),
                start_pos: 0,
                end_pos: seg.size,
            };
            (plan, seg.end_offset, floor, start)
        };
        plan.start_pos = u64::from(self.answer(start, floor).await?);
        Ok(Some((plan, end_offset)))
    }

    /// The answer of `lookup`, loading the index it needs (outside the
    /// segments lock) and applying `f`, the function given to `lookup`.
    async fn answer<T>(
        &self,
        lookup: Lookup<T>,
        f: impl FnOnce(&SegmentIndex) -> T,
    ) -> Result<T, LogError> {
        let source = match lookup {
            Lookup::Answered(answer) => return Ok(answer),
            Lookup::Load(source) => source,
        };
        let inner = self.handle.inner.clone();
        let index = tokio::task::spawn_blocking(move || inner.load_index(&source))
            .await
            .map_err(|e| LogError::Failed {
                reason: format!("index load task panicked: {e}"),
            })??;
        Ok(f(&index))
    }

    /// The first offset whose publish time is at or after `publish_time_ms`,
    /// `None` if every durable record is older.
    pub async fn offset_for_timestamp(
        &self,
        publish_time_ms: u64,
    ) -> Result<Option<u64>, LogError> {
        let time_floor = move |index: &SegmentIndex| index.time_floor(publish_time_ms);
        let (base, floor) = {
            let state = self.handle.inner.read_state();
            let Some(seg) = state
                .iter()
                .find(|s| s.end_offset > s.base_offset && s.max_publish_time >= publish_time_ms)
            else {
                return Ok(None);
            };
            (seg.base_offset, self.handle.inner.lookup(seg, time_floor))
        };
        let floor = self.answer(floor, time_floor).await?;
        let mut from = base + u64::from(floor.unwrap_or(0));
        let mut first = true;
        loop {
            let batch = self.read(from, 1024, 1 << 20).await?;
            let Some(last) = batch.last() else {
                return Ok(None);
            };
            // The indexed record was published before the time wanted. If it
            // was not, the index is wrong: search the segment from its start.
            if std::mem::take(&mut first)
                && from > base
                && batch[0].offset == from
                && batch[0].publish_time >= publish_time_ms
            {
                from = base;
                continue;
            }
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
                inner.index_cache().forget_below(first.base_offset);
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
            index: Some(SegmentIndex::default()),
        });
    }
    if changed {
        segment::sync_dir(dir)?;
    }
    Ok(segments)
}

/// Loads a sealed segment's facts, without its indexes: from its `.index`
/// footer once checked (see [`trusted_seal`]), or by a strict scan that also
/// writes its index files again.
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
    if let Some(seal) = trusted_seal(dir, &file, &path, base, size, config)? {
        return Ok(Segment {
            base_offset: base,
            path,
            file: Arc::new(file),
            size,
            end_offset: seal.end_offset,
            max_publish_time: seal.max_publish_time,
            index: None,
        });
    }
    tracing::info!(path = %path.display(), "index files missing or stale; scanning the sealed segment");
    let mut seg = segment::recover(
        path,
        base,
        Recovery::Strict,
        config.max_body(),
        config.index_interval_bytes,
    )?;
    if let Some(index) = seg.index.take() {
        index::write_files(dir, base, &index, seg.seal_info())
            .map_err(|source| LogError::io(index::index_path(dir, base), source))?;
    }
    Ok(seg)
}

/// The facts of the sealed segment at `base` (`size` bytes) as its `.index`
/// footer records them, if they can be trusted: the segment's records from
/// the last index entry to its end agree with them, or else the whole index
/// file's checksum holds. `None`: scan the segment. Blocking.
fn trusted_seal(
    dir: &Path,
    file: &std::fs::File,
    path: &Path,
    base: u64,
    size: u64,
    config: &LogConfig,
) -> Result<Option<SealInfo>, LogError> {
    let io = |source| LogError::io(index::index_path(dir, base), source);
    let Some(footer) = index::read_footer(dir, base, size).map_err(io)? else {
        return Ok(None);
    };
    let (rel, pos) = footer.last_entry.unwrap_or((0, 0));
    let tail = segment::scan(
        file,
        path,
        base,
        (u64::from(pos), base + u64::from(rel)),
        size,
        config.max_body(),
        config.index_interval_bytes,
    )?;
    if tail.damage.is_none() && tail.seal_info() == footer.info {
        return Ok(Some(footer.info));
    }
    match index::load_files(dir, base, size).map_err(io)? {
        Some((_, seal)) => {
            tracing::warn!(path = %path.display(), "the end of the sealed segment does not match its index; reads there will report it");
            Ok(Some(seal))
        }
        None => Ok(None),
    }
}
