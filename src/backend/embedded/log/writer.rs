//! Group commit: one task owns the active segment and turns whatever appends
//! are queued into one write and one fdatasync.
//!
//! Appenders send [`Command::Append`] on a bounded queue (the backpressure)
//! and wait on a oneshot. Two workers share the job:
//!
//! * the writer task takes every append that is queued, assigns offsets and
//!   publish times, encodes the frames, and stages them in the *next batch*;
//! * a dedicated I/O thread takes the whole next batch, writes it with one
//!   positional write, fdatasyncs it, and reports back; then immediately
//!   takes the batch that was staged meanwhile.
//!
//! So while one batch is being synced the next one fills up, and the disk
//! goes from one fsync to the next without waiting for the async side: the
//! batch size follows the load by itself. Only when a batch's fsync has
//! returned does the writer task publish the new durable size to readers,
//! advance the high watermark and resolve the batch's appends: no append
//! resolves, and no reader sees a record, before the fsync that covers it.
//!
//! A failed write or fsync stops the log for good ("failed"): after a failed
//! fsync the kernel may have dropped the dirty pages, so retrying could
//! report success for data that is gone. Reopening the log recovers from
//! what is really on disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use gateway_api::NewMessage;
use tokio::sync::{mpsc, oneshot};

use super::index;
use super::record;
use super::segment::{self, Segment};
use super::{Inner, LogError};

/// The answer to an append: (offset, publish time in ms).
pub(crate) type AppendResult = Result<(u64, u64), LogError>;

/// What the writer is asked to do.
pub(crate) enum Command {
    /// Make a message durable and answer with its offset and publish time.
    Append {
        /// The message to store.
        message: NewMessage,
        /// Where the outcome goes once it is durable (or failed).
        reply: oneshot::Sender<AppendResult>,
    },
    /// Finish everything queued before this, then stop.
    Close {
        /// Told once the writer has stopped.
        done: oneshot::Sender<()>,
    },
}

/// An encoded record waiting for the fsync that covers it.
struct Pending {
    /// Where to send the outcome.
    reply: oneshot::Sender<AppendResult>,
    /// The offset it was given.
    offset: u64,
    /// Its byte position in the segment, for the sparse index.
    position: u64,
    /// The publish time it was given.
    publish_time: u64,
}

/// Frames to write with one write and one fdatasync.
struct Batch {
    /// The segment they go to (batches never span a roll).
    file: Arc<File>,
    /// Its path, for errors.
    path: PathBuf,
    /// Byte position of the first frame.
    position: u64,
    /// The frames, back to back.
    buf: Vec<u8>,
    /// The appends in `buf`, in order.
    records: Vec<Pending>,
}

/// The hand-over point between the writer task and the I/O thread.
struct IoSlot {
    /// The batch being filled; the I/O thread takes all of it when free.
    next: Option<Batch>,
    /// Tells the I/O thread to exit once `next` is empty.
    stop: bool,
}

/// The slot and the condition variable the I/O thread sleeps on.
struct IoShared {
    /// The next batch and the stop flag.
    slot: Mutex<IoSlot>,
    /// Signalled when a batch is staged into an empty slot or on stop.
    wake: Condvar,
}

impl IoShared {
    fn lock(&self) -> MutexGuard<'_, IoSlot> {
        // Critical sections only move buffers around; nothing is left half
        // done by a panic, so a poisoned lock is still consistent.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the I/O thread reports for each batch.
struct Completion {
    /// The batch written (its buffer comes back for reuse).
    batch: Batch,
    /// The outcome of the write and the fdatasync.
    result: io::Result<()>,
}

/// The I/O thread: write and fdatasync each batch, back to back.
fn io_loop(shared: Arc<IoShared>, done: mpsc::UnboundedSender<Completion>) {
    loop {
        let batch = {
            let mut slot = shared.lock();
            loop {
                if let Some(batch) = slot.next.take() {
                    break batch;
                }
                if slot.stop {
                    return;
                }
                slot = shared
                    .wake
                    .wait(slot)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        let result = batch
            .file
            .write_all_at(&batch.buf, batch.position)
            .and_then(|()| batch.file.sync_data());
        let failed = result.is_err();
        if done.send(Completion { batch, result }).is_err() || failed {
            return;
        }
    }
}

/// The group-commit task's state. Only this task (and its I/O thread)
/// writes to the log.
pub(crate) struct Writer {
    /// The state shared with readers, updated after each fsync.
    inner: Arc<Inner>,
    /// Queued commands; bounded, so appenders wait when the disk falls behind.
    rx: mpsc::Receiver<Command>,
    /// Where batches are handed to the I/O thread.
    io: Arc<IoShared>,
    /// Where the I/O thread reports finished batches, in order.
    done_rx: mpsc::UnboundedReceiver<Completion>,
    /// The I/O thread, joined on exit.
    io_thread: Option<std::thread::JoinHandle<()>>,
    /// Batches handed to the I/O thread and not yet reported back.
    outstanding: usize,
    /// The segment appended to.
    active: Arc<File>,
    /// Its path, for errors.
    active_path: PathBuf,
    /// Where the next frame goes in the active segment (staged bytes
    /// included, durable or not).
    write_position: u64,
    /// Offset the next staged record gets.
    next_offset: u64,
    /// Publish time of the newest staged record, to keep publish times
    /// non-decreasing when the clock steps back.
    last_publish_time: u64,
    /// An append taken from the queue that must wait: for a roll, or for
    /// room in the next batch.
    carried: Option<Command>,
    /// Set when `carried` does not fit the active segment: roll once every
    /// outstanding batch is durable.
    roll_pending: bool,
    /// Emptied batch buffers, reused so steady state does not allocate.
    spare: Vec<Vec<u8>>,
}

impl Writer {
    /// A writer continuing the log after `active`, whose state was recovered
    /// into `inner` by open. Starts the I/O thread.
    pub(crate) fn new(
        inner: Arc<Inner>,
        rx: mpsc::Receiver<Command>,
        active: &Segment,
        last_publish_time: u64,
    ) -> Result<Writer, LogError> {
        let io = Arc::new(IoShared {
            slot: Mutex::new(IoSlot {
                next: None,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let shared = io.clone();
        let io_thread = std::thread::Builder::new()
            .name("partition-log-io".into())
            .stack_size(256 << 10)
            .spawn(move || io_loop(shared, done_tx))
            .map_err(|source| LogError::io(&inner.dir, source))?;
        Ok(Writer {
            inner,
            rx,
            io,
            done_rx,
            io_thread: Some(io_thread),
            outstanding: 0,
            active: active.file.clone(),
            active_path: active.path.clone(),
            write_position: active.size,
            next_offset: active.end_offset,
            last_publish_time,
            carried: None,
            roll_pending: false,
            spare: Vec::new(),
        })
    }

    /// Runs until closed, until every handle is dropped, or until a write
    /// fails.
    pub(crate) async fn run(mut self) {
        let mut close: Option<oneshot::Sender<()>> = None;
        let mut input_open = true;
        let failure = loop {
            if !self.roll_pending {
                if let Some(command) = self.carried.take() {
                    self.stage(command, &mut close);
                }
            }
            if self.roll_pending && self.outstanding == 0 {
                if let Err(e) = self.roll().await {
                    break Some(e);
                }
                self.roll_pending = false;
                continue; // stage the append that waited for the roll
            }
            let draining = close.is_some() || !input_open;
            if draining && self.outstanding == 0 && self.carried.is_none() {
                break None;
            }
            let accepting = !draining && self.carried.is_none();
            tokio::select! {
                biased;
                done = self.done_rx.recv(), if self.outstanding > 0 => {
                    let Some(done) = done else {
                        break Some(LogError::Failed { reason: "the I/O thread stopped".into() });
                    };
                    if let Err(e) = self.complete(done) {
                        break Some(e);
                    }
                }
                command = self.rx.recv(), if accepting => match command {
                    Some(command) => self.stage(command, &mut close),
                    None => input_open = false,
                },
                else => break Some(LogError::Failed { reason: "group commit stalled".into() }),
            }
        };
        self.shut_down(failure, close).await;
    }

    /// Encodes `first` and whatever else is queued, up to `max_batch_bytes`
    /// and the end of the active segment, and adds it to the next batch.
    fn stage(&mut self, first: Command, close: &mut Option<oneshot::Sender<()>>) {
        let config = &self.inner.config;
        let queued = self.io.lock().next.as_ref().map_or(0, |b| b.buf.len());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let publish_time = now.max(self.last_publish_time);
        let start = self.write_position;
        let mut buf = self.spare.pop().unwrap_or_default();
        let mut records = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            let (message, reply) = match command {
                Command::Close { done } => {
                    *close = Some(done);
                    break;
                }
                Command::Append { message, reply } => (message, reply),
            };
            let len = record::frame_len(&message);
            if self.write_position > 0 && self.write_position + len as u64 > config.segment_bytes {
                self.carried = Some(Command::Append { message, reply });
                self.roll_pending = true;
                break;
            }
            let batch_len = queued + buf.len();
            if batch_len > 0 && batch_len + len > config.max_batch_bytes {
                self.carried = Some(Command::Append { message, reply });
                break;
            }
            record::encode(&mut buf, self.next_offset, publish_time, &message);
            records.push(Pending {
                reply,
                offset: self.next_offset,
                position: self.write_position,
                publish_time,
            });
            self.write_position += len as u64;
            self.next_offset += 1;
            if queued + buf.len() >= config.max_batch_bytes {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        if records.is_empty() {
            self.recycle(buf);
            return;
        }
        self.last_publish_time = publish_time;
        let mut slot = self.io.lock();
        match &mut slot.next {
            Some(batch) => {
                batch.buf.extend_from_slice(&buf);
                batch.records.append(&mut records);
                drop(slot);
                self.recycle(buf);
            }
            None => {
                slot.next = Some(Batch {
                    file: self.active.clone(),
                    path: self.active_path.clone(),
                    position: start,
                    buf,
                    records,
                });
                self.outstanding += 1;
                drop(slot);
                self.io.wake.notify_one();
            }
        }
    }

    /// A batch is durable (or failed): publish it and resolve its appends.
    fn complete(&mut self, done: Completion) -> Result<(), LogError> {
        self.outstanding -= 1;
        let Completion { batch, result } = done;
        if let Err(source) = result {
            let error = LogError::io(&batch.path, source);
            let reason = error.to_string();
            fail_all(batch.records, || LogError::Failed {
                reason: reason.clone(),
            });
            return Err(error);
        }
        let written = batch.buf.len() as u64;
        let count = batch.records.len() as u64;
        let Some(last) = batch.records.last() else {
            self.recycle(batch.buf);
            return Ok(());
        };
        let (end_offset, max_time) = (last.offset + 1, last.publish_time);
        {
            let mut segments = self.inner.write_state();
            if let Some(seg) = segments.last_mut() {
                if let Some(index) = &mut seg.index {
                    for p in &batch.records {
                        // Positions and relative offsets fit u32: segments
                        // are capped below 4 GiB (LogConfig::validate).
                        index.observe(
                            (p.offset - seg.base_offset) as u32,
                            p.position as u32,
                            p.publish_time,
                            self.inner.config.index_interval_bytes,
                        );
                    }
                }
                seg.size += written;
                seg.end_offset = end_offset;
                seg.max_publish_time = seg.max_publish_time.max(max_time);
            }
        }
        let inner = &self.inner;
        inner.size_bytes.fetch_add(written, Ordering::Relaxed);
        inner.group_commits.fetch_add(1, Ordering::Relaxed);
        inner.committed_records.fetch_add(count, Ordering::Relaxed);
        inner.committed_bytes.fetch_add(written, Ordering::Relaxed);
        inner.high_watermark.send_replace(end_offset);
        for p in batch.records {
            let _ = p.reply.send(Ok((p.offset, p.publish_time)));
        }
        self.recycle(batch.buf);
        Ok(())
    }

    /// Keeps a couple of modest buffers for later batches, not the largest
    /// ones ever needed.
    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 2 && buf.capacity() <= 1 << 20 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Seals the active segment (index files written and synced) and starts
    /// a new one at the next offset, fsyncing the directory. Called only
    /// when every staged batch is durable. The sealed segment's index moves
    /// from the segment to the index cache, as the most recently used: a
    /// reader close behind the writer still finds it in memory.
    async fn roll(&mut self) -> Result<(), LogError> {
        let dir = self.inner.dir.clone();
        let (base, seal_index, seal) = {
            let segments = self.inner.read_state();
            let Some(seg) = segments.last() else {
                return Err(LogError::Failed {
                    reason: "no active segment".into(),
                });
            };
            // Readers use the segment's own index until the files are
            // written; this copy is what gets written.
            (
                seg.base_offset,
                seg.index.clone().unwrap_or_default(),
                seg.seal_info(),
            )
        };
        let new_base = self.next_offset;
        let new_path = dir.join(segment::file_name(new_base));
        let path = new_path.clone();
        let file = tokio::task::spawn_blocking(move || -> Result<File, LogError> {
            index::write_files(&dir, base, &seal_index, seal)
                .map_err(|source| LogError::io(index::index_path(&dir, base), source))?;
            let file = segment::open_file(&path, true)?;
            segment::sync_dir(&dir)?;
            Ok(file)
        })
        .await
        .map_err(|e| LogError::Failed {
            reason: format!("roll task panicked: {e}"),
        })??;
        let file = Arc::new(file);
        {
            let mut segments = self.inner.write_state();
            if let Some(index) = segments.last_mut().and_then(|s| s.index.take()) {
                self.inner.index_cache().insert(base, Arc::new(index));
            }
            segments.push(Segment {
                base_offset: new_base,
                path: new_path.clone(),
                file: file.clone(),
                size: 0,
                end_offset: new_base,
                max_publish_time: 0,
                index: Some(Default::default()),
            });
        }
        tracing::debug!(path = %new_path.display(), "rolled to a new segment");
        self.active = file;
        self.active_path = new_path;
        self.write_position = 0;
        Ok(())
    }

    /// Stops the I/O thread and answers everything still waiting: with the
    /// failure if there was one, otherwise with `Closed`.
    async fn shut_down(mut self, failure: Option<LogError>, close: Option<oneshot::Sender<()>>) {
        if let Some(error) = &failure {
            tracing::error!(dir = %self.inner.dir.display(), %error, "partition log failed; reopen it to recover");
            let _ = self.inner.failed.set(error.to_string());
        }
        let staged = {
            let mut slot = self.io.lock();
            slot.stop = true;
            slot.next.take()
        };
        self.io.wake.notify_one();
        let inner = self.inner.clone();
        let stopped = move || inner.stopped_error();
        if let Some(batch) = staged {
            fail_all(batch.records, &stopped);
        }
        if let Some(thread) = self.io_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // A batch the I/O thread finished after the failure was written and
        // synced, but the log is failed: its appends are not acknowledged.
        while let Ok(done) = self.done_rx.try_recv() {
            fail_all(done.batch.records, &stopped);
        }
        // Appends that raced with close or failure get an answer, not silence.
        self.rx.close();
        let mut rest: Vec<Command> = self.carried.take().into_iter().collect();
        while let Ok(command) = self.rx.try_recv() {
            rest.push(command);
        }
        for command in rest {
            match command {
                Command::Append { reply, .. } => {
                    let _ = reply.send(Err(self.inner.stopped_error()));
                }
                Command::Close { done } => {
                    let _ = done.send(());
                }
            }
        }
        if let Some(done) = close {
            let _ = done.send(());
        }
    }
}

/// Answers every append in `records` with an error made by `error`.
fn fail_all(records: Vec<Pending>, error: impl Fn() -> LogError) {
    for p in records {
        let _ = p.reply.send(Err(error()));
    }
}
