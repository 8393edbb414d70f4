//! A reader: one partition from a position, no subscription, no acks.

use std::collections::VecDeque;

use async_trait::async_trait;
use gateway_api::{BackendError, Message, Reader, StartPosition, TopicName};
use tokio::sync::{watch, Mutex};

use super::dispatch::into_message;
use super::log::{PartitionLog, Record};
use super::{log_error, resolve_in};

/// Records fetched from the log per read: enough that `READ_BYTES` is the
/// bound for records of 1 KiB and more.
const READ_RECORDS: usize = 1024;
/// Bytes fetched from the log per read.
const READ_BYTES: usize = 1 << 20;

/// Where a reader is and what it has read ahead.
struct Position {
    /// Offset of the next message to return.
    next: u64,
    /// Records fetched and not yet returned, starting at `next`.
    read_ahead: VecDeque<Record>,
    /// The log's high watermark, to wait for new messages.
    appends: watch::Receiver<u64>,
}

/// Implements the contract's `Reader` over a partition log.
pub struct EmbeddedReader {
    /// The partition read.
    topic: TopicName,
    /// Its log.
    log: PartitionLog,
    /// Behind an async lock: `next` holds it across the disk read.
    position: Mutex<Position>,
}

impl EmbeddedReader {
    /// A reader whose first message is at `offset`.
    pub fn new(topic: TopicName, log: PartitionLog, offset: u64) -> EmbeddedReader {
        let appends = log.subscribe_appends();
        EmbeddedReader {
            topic,
            log,
            position: Mutex::new(Position {
                next: offset,
                read_ahead: VecDeque::new(),
                appends,
            }),
        }
    }
}

impl EmbeddedReader {
    /// Whether the log holds records at or past `pos.next` (or past its
    /// start, when retention moved the start beyond `pos.next`).
    fn behind_end(&self, pos: &Position) -> bool {
        pos.next.max(self.log.start_offset()) < self.log.next_offset()
    }

    /// Fills `pos.read_ahead` from the log when it is empty and the log
    /// holds records past `pos.next`; whether records are at hand now.
    /// Cancel-safe: the queue changes only once the disk read is done.
    async fn fill(&self, pos: &mut Position) -> Result<bool, BackendError> {
        if !pos.read_ahead.is_empty() {
            return Ok(true);
        }
        if !self.behind_end(pos) {
            return Ok(false);
        }
        let from = pos.next.max(self.log.start_offset());
        let batch = self
            .log
            .read(from, READ_RECORDS, READ_BYTES)
            .await
            .map_err(log_error)?;
        pos.read_ahead = batch.into();
        if pos.read_ahead.is_empty() {
            pos.next = from;
        }
        Ok(!pos.read_ahead.is_empty())
    }
}

#[async_trait]
impl Reader for EmbeddedReader {
    async fn next(&self) -> Result<Message, BackendError> {
        let mut pos = self.position.lock().await;
        loop {
            if let Some(record) = pos.read_ahead.pop_front() {
                pos.next = record.offset + 1;
                return Ok(into_message(&self.topic, record, 0));
            }
            if self.fill(&mut pos).await? {
                continue;
            }
            if self.behind_end(&pos) {
                // A read came back empty below the end (retention moved the
                // start meanwhile): read again rather than wait for a commit.
                tokio::task::yield_now().await;
                continue;
            }
            // Cancel-safe: nothing was taken from the queue before this wait.
            pos.appends
                .changed()
                .await
                .map_err(|_| BackendError::Closed)?;
        }
    }

    async fn next_available(&self, max: usize) -> Result<Vec<Message>, BackendError> {
        let mut pos = self.position.lock().await;
        if !self.fill(&mut pos).await? {
            return Ok(Vec::new());
        }
        let count = max.min(pos.read_ahead.len());
        let out: Vec<Message> = pos
            .read_ahead
            .drain(..count)
            .map(|record| into_message(&self.topic, record, 0))
            .collect();
        if let Some(last) = out.last() {
            pos.next = last.id.offset + 1;
        }
        Ok(out)
    }

    async fn seek(&self, position: StartPosition) -> Result<(), BackendError> {
        let offset = resolve_in(&self.log, position).await?;
        let mut pos = self.position.lock().await;
        pos.next = offset;
        pos.read_ahead.clear();
        Ok(())
    }

    async fn has_message_available(&self) -> Result<bool, BackendError> {
        let pos = self.position.lock().await;
        Ok(!pos.read_ahead.is_empty() || self.behind_end(&pos))
    }
}
