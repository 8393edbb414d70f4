//! A partition's sender: takes the publishes queued for its producer,
//! sends them as entries, and answers each with its messages' ids.
//!
//! Two tasks per producer, joined by a bounded queue of sent groups:
//!
//! - [`run`] takes every job waiting (one at least, up to
//!   `batch_max_messages` messages unless one job alone holds more), splits
//!   their messages into entries ([`ProducerSettings::entries`]) and hands
//!   the entries to the producer one after another without waiting for
//!   receipts (vendor patch 8), then passes the group on;
//! - [`answer`] waits for each entry's receipt, in send order, works out
//!   the offsets of its messages, and answers each job once all its
//!   messages are answered.
//!
//! Offsets: a message's offset is its entry's broker index (that of the
//! entry's last message), less the messages after it in the entry. The
//! receipt does not carry the index; receipts come in send order, so an
//! entry that follows the one before it in the same ledger has that one's
//! index plus its own message count. Otherwise (the first entry, after a
//! reconnect or a ledger roll-over, or when another producer wrote in
//! between) the admin API tells the entry's index.

use std::sync::Arc;

use gateway_api::{BackendError, MessageId, NewMessage, Reservation, TopicName};
use pulsar::producer::SendFuture;
use pulsar::{Producer, TokioExecutor};
use tokio::sync::{mpsc, oneshot};

use super::admin::Admin;
use super::producers::{ProducerSettings, Slot};
use super::{convert, index};

/// Groups sent and not yet answered, at most; the sender waits for room.
const GROUPS_IN_FLIGHT: usize = 64;

/// Messages published together, waiting for their ids.
pub(super) struct Job {
    /// Sent together, in order.
    pub messages: Vec<NewMessage>,
    /// Where their ids, in order, or the error go.
    pub reply: oneshot::Sender<Result<Vec<MessageId>, BackendError>>,
    /// Their bytes of the in-flight budget, held until answered.
    pub in_flight: Reservation,
    /// The producer's cache entry, held until answered: the sweeper
    /// closes only producers nothing holds, so none with jobs waiting (a
    /// publish after that would open a second producer, whose messages
    /// could overtake these).
    pub slot: Arc<Slot>,
}

/// An entry handed to the producer, not yet acknowledged.
struct Sent {
    /// Resolves to Pulsar's receipt.
    pending: SendFuture,
    /// Messages in the entry; `None`: one message, not batched.
    batched: Option<u32>,
}

/// Jobs taken together and what became of their messages.
struct Group {
    /// The entries sent, in order, holding the jobs' first messages.
    sent: Vec<Sent>,
    /// Why the rest was not sent, if it was not.
    unsent: Option<BackendError>,
    /// The jobs, in order, with their message counts.
    jobs: Vec<(Job, usize)>,
}

/// Where an entry landed: ledger, entry, and the index of its last
/// message.
#[derive(Debug, Clone, Copy)]
struct Placed {
    ledger: u64,
    entry: u64,
    index: u64,
}

/// Sends the jobs of `queue` with `producer` until every sender of the
/// queue is dropped and it is drained, then closes the producer.
pub(super) async fn run(
    mut producer: Producer<TokioExecutor>,
    target: TopicName,
    settings: Arc<ProducerSettings>,
    admin: Admin,
    mut queue: mpsc::Receiver<Job>,
) {
    let (groups, sent) = mpsc::channel(GROUPS_IN_FLIGHT);
    let answering = tokio::spawn(answer(target.clone(), admin, sent));
    let most = usize::try_from(settings.batch_max_messages.max(1)).unwrap_or(usize::MAX);
    while let Some(first) = queue.recv().await {
        let mut taken = first.messages.len();
        let mut jobs = vec![first];
        while taken < most {
            let Ok(job) = queue.try_recv() else {
                break;
            };
            taken += job.messages.len();
            jobs.push(job);
        }
        let group = send(&mut producer, &target, &settings, jobs).await;
        if groups.send(group).await.is_err() {
            break;
        }
    }
    drop(groups);
    let _ = answering.await;
    if let Err(e) = producer.close().await {
        tracing::debug!(topic = %target, error = %e, "closing a producer");
    }
}

/// Sends the messages of `jobs` as entries, in order, stopping at the
/// first the producer refuses.
async fn send(
    producer: &mut Producer<TokioExecutor>,
    target: &TopicName,
    settings: &ProducerSettings,
    jobs: Vec<Job>,
) -> Group {
    let mut all = Vec::new();
    let jobs: Vec<(Job, usize)> = jobs
        .into_iter()
        .map(|mut job| {
            let count = job.messages.len();
            all.append(&mut job.messages);
            (job, count)
        })
        .collect();
    let mut sent = Vec::new();
    let mut unsent = None;
    for mut entry in settings.entries(all) {
        // One message goes as an entry of its own, not as a batch of one.
        let batched = (entry.len() > 1).then(|| u32::try_from(entry.len()).unwrap_or(u32::MAX));
        let handed = if batched.is_none() {
            let message = entry.pop().map(convert::outgoing).unwrap_or_default();
            producer.send_non_blocking(message).await
        } else {
            let messages = entry.into_iter().map(convert::outgoing).collect();
            producer.send_entry_non_blocking(messages).await
        };
        match handed {
            Ok(pending) => sent.push(Sent { pending, batched }),
            Err(e) => {
                unsent = Some(convert::error(Some(target), e));
                break;
            }
        }
    }
    Group { sent, unsent, jobs }
}

/// Answers the groups `run` sent, in order.
async fn answer(target: TopicName, admin: Admin, mut groups: mpsc::Receiver<Group>) {
    let mut previous: Option<Placed> = None;
    while let Some(group) = groups.recv().await {
        // Each message's id or error, in the order of the group's messages.
        let mut results: Vec<Result<MessageId, BackendError>> = Vec::new();
        for sent in group.sent {
            let count = sent.batched.map_or(1, |n| n as usize);
            match complete(&admin, &target, sent, &mut previous).await {
                Ok(ids) => results.extend(ids.into_iter().map(Ok)),
                Err(e) => results.extend(std::iter::repeat_n(Err(e), count)),
            }
        }
        let mut results = results.into_iter();
        for (job, count) in group.jobs {
            let mut ids = Vec::with_capacity(count);
            let mut failed = None;
            for _ in 0..count {
                match results.next() {
                    Some(Ok(id)) => ids.push(id),
                    Some(Err(e)) => {
                        failed.get_or_insert(e);
                    }
                    None => {
                        let unsent = group.unsent.clone().unwrap_or_else(|| {
                            BackendError::Unavailable(format!("a message to {target} was not sent"))
                        });
                        failed.get_or_insert(unsent);
                    }
                }
            }
            let Job {
                reply,
                in_flight,
                slot,
                ..
            } = job;
            let _ = reply.send(failed.map_or(Ok(ids), Err));
            drop((in_flight, slot));
        }
    }
}

/// Waits for an entry's receipt and works out the ids and offsets of its
/// messages; `previous` is where the entry before it landed, and becomes
/// where this one did (`None` when unknown).
async fn complete(
    admin: &Admin,
    target: &TopicName,
    sent: Sent,
    previous: &mut Option<Placed>,
) -> Result<Vec<MessageId>, BackendError> {
    let in_entry = sent.batched.map_or(1, u64::from);
    let before = previous.take();
    let receipt = sent
        .pending
        .await
        .map_err(|e| convert::error(Some(target), e))?;
    let id = receipt.message_id.ok_or_else(|| {
        BackendError::Unavailable(format!("Pulsar's receipt for {target} had no message id"))
    })?;
    let entry_index = match before {
        Some(p) if p.ledger == id.ledger_id && p.entry.checked_add(1) == Some(id.entry_id) => {
            p.index + in_entry
        }
        _ => {
            index::entry(admin, target, id.ledger_id, id.entry_id)
                .await?
                .last_index
        }
    };
    *previous = Some(Placed {
        ledger: id.ledger_id,
        entry: id.entry_id,
        index: entry_index,
    });
    let partition = target.partition_index().map_or(-1, |p| p as i32);
    let first = entry_index.saturating_sub(in_entry - 1);
    let ids = (0..in_entry).map(|position| MessageId {
        offset: first + position,
        ledger_id: id.ledger_id,
        entry_id: id.entry_id,
        partition,
        // Not batched: -1.
        batch_index: sent
            .batched
            .map_or(-1, |_| i32::try_from(position).unwrap_or(i32::MAX)),
    });
    Ok(ids.collect())
}
