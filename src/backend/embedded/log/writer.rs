//! Group commit: one task owns the active segment and turns whatever appends
//! are queued into one write and one fdatasync.
//!
//! Appenders send [`Command::Append`] on a bounded queue (the backpressure)
//! and wait on a oneshot. The writer takes one command, drains what else is
//! already queued up to `max_batch_bytes`, assigns offsets and a publish
//! time, encodes the frames into one buffer, and writes and fdatasyncs it on
//! the blocking pool. Only then does it publish the new durable size to
//! readers, advance the high watermark and resolve each append: no append
//! resolves, and no reader sees a record, before the fsync that covers it.
//! While one batch is being synced the next one queues up, so the batch size
//! follows the load by itself.
//!
//! A failed write or fsync stops the writer for good (the log is
//! "failed"): after a failed fsync the kernel may have dropped the dirty
//! pages, so retrying could report success for data that is gone. Reopening
//! the log recovers from what is really on disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
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

/// A record of the batch being built, remembered until its fsync.
struct Pending {
    /// Where to send the outcome.
    reply: oneshot::Sender<AppendResult>,
    /// The offset it was given.
    offset: u64,
    /// Its byte position in the active segment, for the sparse index.
    position: u64,
}

/// The group-commit task's state. Only this task writes to the log.
pub(crate) struct Writer {
    /// The state shared with readers, updated after each fsync.
    inner: Arc<Inner>,
    /// Queued commands; bounded, so appenders wait when the disk falls behind.
    rx: mpsc::Receiver<Command>,
    /// The segment appended to.
    active: Arc<File>,
    /// Its path, for errors.
    active_path: PathBuf,
    /// Durable bytes in it: where the next batch is written.
    active_size: u64,
    /// Offset the next record gets.
    next_offset: u64,
    /// Publish time of the newest record, to keep publish times
    /// non-decreasing when the clock steps back.
    last_publish_time: u64,
    /// An append taken from the queue that did not fit the batch before.
    carried: Option<Command>,
    /// The batch being built; reused so steady state allocates nothing.
    buf: Vec<u8>,
    /// The appends in `buf`.
    pending: Vec<Pending>,
}

impl Writer {
    /// A writer continuing the log after `active`, whose state was recovered
    /// into `inner` by open.
    pub(crate) fn new(
        inner: Arc<Inner>,
        rx: mpsc::Receiver<Command>,
        active: &Segment,
        last_publish_time: u64,
    ) -> Writer {
        Writer {
            inner,
            rx,
            active: active.file.clone(),
            active_path: active.path.clone(),
            active_size: active.size,
            next_offset: active.end_offset,
            last_publish_time,
            carried: None,
            buf: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Runs until closed, until every handle is dropped, or until a write
    /// fails.
    pub(crate) async fn run(mut self) {
        let mut close: Option<oneshot::Sender<()>> = None;
        let mut failure: Option<String> = None;
        while close.is_none() {
            let first = match self.carried.take() {
                Some(c) => c,
                None => match self.rx.recv().await {
                    Some(c) => c,
                    None => break,
                },
            };
            if let Err(e) = self.build_batch(first, &mut close).await {
                failure = Some(e.to_string());
                self.fail_pending(&e);
                break;
            }
            if self.pending.is_empty() {
                continue;
            }
            if let Err(e) = self.commit().await {
                failure = Some(e.to_string());
                self.fail_pending(&e);
                break;
            }
        }
        if let Some(reason) = &failure {
            tracing::error!(dir = %self.inner.dir.display(), %reason, "partition log failed; reopen it to recover");
            let _ = self.inner.failed.set(reason.clone());
        }
        // Appends that raced with close or failure get an answer, not silence.
        self.rx.close();
        let rest = self.carried.take().into_iter();
        let mut drained = Vec::new();
        while let Ok(c) = self.rx.try_recv() {
            drained.push(c);
        }
        for c in rest.chain(drained) {
            match c {
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

    /// Encodes `first` and whatever else is queued into `buf`, up to
    /// `max_batch_bytes` and the end of the active segment (rolling first
    /// when the segment is full).
    async fn build_batch(
        &mut self,
        first: Command,
        close: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), LogError> {
        let config = self.inner.config.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let publish_time = now.max(self.last_publish_time);
        let mut next = Some(first);
        while let Some(command) = next.take() {
            let (message, reply) = match command {
                Command::Close { done } => {
                    *close = Some(done);
                    break;
                }
                Command::Append { message, reply } => (message, reply),
            };
            let len = record::frame_len(&message) as u64;
            let used = self.active_size + self.buf.len() as u64;
            if used > 0 && used + len > config.segment_bytes {
                if !self.buf.is_empty() {
                    self.carried = Some(Command::Append { message, reply });
                    break;
                }
                if let Err(e) = self.roll().await {
                    let _ = reply.send(Err(LogError::Failed {
                        reason: e.to_string(),
                    }));
                    return Err(e);
                }
            }
            if !self.buf.is_empty() && self.buf.len() as u64 + len > config.max_batch_bytes as u64 {
                self.carried = Some(Command::Append { message, reply });
                break;
            }
            let position = self.active_size + self.buf.len() as u64;
            let offset = self.next_offset + self.pending.len() as u64;
            record::encode(&mut self.buf, offset, publish_time, &message);
            self.pending.push(Pending {
                reply,
                offset,
                position,
            });
            if self.buf.len() >= config.max_batch_bytes {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        if !self.pending.is_empty() {
            self.last_publish_time = publish_time;
        }
        Ok(())
    }

    /// Writes the batch with one positional write, fdatasyncs it, then makes
    /// it visible and resolves its appends.
    async fn commit(&mut self) -> Result<(), LogError> {
        let file = self.active.clone();
        let buf = std::mem::take(&mut self.buf);
        let position = self.active_size;
        let (mut buf, result) = tokio::task::spawn_blocking(move || {
            let result = file
                .write_all_at(&buf, position)
                .and_then(|()| file.sync_data());
            (buf, result)
        })
        .await
        .map_err(|e| LogError::Failed {
            reason: format!("write task panicked: {e}"),
        })?;
        result.map_err(|source| LogError::io(&self.active_path, source))?;

        let written = buf.len() as u64;
        let count = self.pending.len() as u64;
        let publish_time = self.last_publish_time;
        let first_offset = self.next_offset;
        {
            let mut state = self.inner.write_state();
            if let Some(seg) = state.last_mut() {
                for p in &self.pending {
                    seg.index.observe(
                        (p.offset - seg.base_offset) as u32,
                        p.position as u32,
                        publish_time,
                        self.inner.config.index_interval_bytes,
                    );
                }
                seg.size += written;
                seg.end_offset += count;
                seg.max_publish_time = seg.max_publish_time.max(publish_time);
            }
        }
        self.active_size += written;
        self.next_offset += count;
        self.inner.size_bytes.fetch_add(written, Ordering::Relaxed);
        self.inner.group_commits.fetch_add(1, Ordering::Relaxed);
        self.inner
            .committed_records
            .fetch_add(count, Ordering::Relaxed);
        self.inner
            .committed_bytes
            .fetch_add(written, Ordering::Relaxed);
        self.inner.high_watermark.send_replace(self.next_offset);
        debug_assert_eq!(first_offset + count, self.next_offset);
        for p in self.pending.drain(..) {
            let _ = p.reply.send(Ok((p.offset, publish_time)));
        }
        // Keep a modest buffer for the next batch, not the largest one ever.
        buf.clear();
        if buf.capacity() > 1 << 20 {
            buf = Vec::new();
        }
        self.buf = buf;
        Ok(())
    }

    /// Seals the active segment (index files written and synced) and starts
    /// a new one at the next offset, fsyncing the directory.
    async fn roll(&mut self) -> Result<(), LogError> {
        let dir = self.inner.dir.clone();
        let (base, seal_index, seal) = {
            let state = self.inner.read_state();
            let Some(seg) = state.last() else {
                return Err(LogError::Failed {
                    reason: "no active segment".into(),
                });
            };
            (seg.base_offset, seg.index.clone(), seg.seal_info())
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
        self.inner.write_state().push(Segment {
            base_offset: new_base,
            path: new_path.clone(),
            file: file.clone(),
            size: 0,
            end_offset: new_base,
            max_publish_time: 0,
            index: Default::default(),
        });
        tracing::debug!(path = %new_path.display(), "rolled to a new segment");
        self.active = file;
        self.active_path = new_path;
        self.active_size = 0;
        Ok(())
    }

    /// Answers every append of the batch with the failure.
    fn fail_pending(&mut self, error: &LogError) {
        for p in self.pending.drain(..) {
            let _ = p.reply.send(Err(LogError::Failed {
                reason: error.to_string(),
            }));
        }
        self.buf.clear();
    }
}
