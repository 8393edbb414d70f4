//! Offsets on Pulsar: every entry carries a contiguous per-partition index
//! in its broker entry metadata (`AppendIndexMetadataInterceptor`; a batch
//! entry's index is that of its last message). Offsets are that index.
//!
//! Received messages carry it on the wire. The rest — the ends of a
//! partition, the entry holding an offset, the first entry at a time — come
//! from the admin API, which shows an entry's metadata as headers
//! (`examinemessage`, `ledger/{l}/entry/{e}`). Finding an offset or a time
//! is a binary search over the partition's entries (one request per probe,
//! about 30 for a billion entries): no topic scan.

use async_trait::async_trait;
use gateway_api::{BackendError, MessageId, TopicName};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use super::admin::{refused, Admin};
use super::reader::Positions;

/// One entry as the admin API describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Ledger holding the entry.
    pub ledger: u64,
    /// Entry within the ledger.
    pub entry: u64,
    /// Index (offset) of the entry's last message.
    pub last_index: u64,
    /// Messages in the entry: 1 unless batched.
    pub messages: u32,
    /// The producer's publish time, ms since the epoch.
    pub publish_time: u64,
}

impl Entry {
    /// Offset of the entry's first message.
    pub fn first_index(&self) -> u64 {
        self.last_index
            .saturating_sub(u64::from(self.messages.max(1)) - 1)
    }

    /// The contract's id of the entry's message at `offset`, which must lie
    /// in the entry (it is clamped to it).
    pub fn message_id(&self, offset: u64, partition: i32) -> MessageId {
        let offset = offset.clamp(self.first_index(), self.last_index);
        let batch_index = if self.messages > 1 {
            i32::try_from(offset - self.first_index()).unwrap_or(i32::MAX)
        } else {
            -1
        };
        MessageId {
            offset,
            ledger_id: self.ledger,
            entry_id: self.entry,
            partition,
            batch_index,
        }
    }
}

/// One end of a partition.
#[derive(Debug, Clone, Copy)]
pub enum End {
    /// The oldest retained entry.
    Earliest,
    /// The newest entry.
    Latest,
}

/// The entry at one end of a partition, `None` when it holds none.
pub async fn end(
    admin: &Admin,
    topic: &TopicName,
    end: End,
) -> Result<Option<Entry>, BackendError> {
    let which = match end {
        End::Earliest => "earliest",
        End::Latest => "latest",
    };
    let path = format!(
        "{}/examinemessage?initialPosition={which}&messagePosition=1",
        Admin::topic_path(topic)
    );
    let (status, headers, text) = admin.request(Method::GET, &path, None).await?;
    match status {
        s if s.is_success() => {
            let (ledger, entry) = header(&headers, "X-Pulsar-Message-ID")
                .and_then(|id| id.split_once(':'))
                .and_then(|(l, e)| Some((l.parse().ok()?, e.parse().ok()?)))
                .ok_or_else(|| missing(topic, "X-Pulsar-Message-ID"))?;
            parse(topic, &headers, ledger, entry).map(Some)
        }
        // "the total message is zero"
        StatusCode::PRECONDITION_FAILED => Ok(None),
        StatusCode::NOT_FOUND => Err(BackendError::TopicNotFound(topic.clone())),
        s => Err(refused(topic, s, text)),
    }
}

/// The entry at `ledger:entry` of a partition.
pub async fn entry(
    admin: &Admin,
    topic: &TopicName,
    ledger: u64,
    entry: u64,
) -> Result<Entry, BackendError> {
    let path = format!("{}/ledger/{ledger}/entry/{entry}", Admin::topic_path(topic));
    let (status, headers, text) = admin.request(Method::GET, &path, None).await?;
    match status {
        s if s.is_success() => parse(topic, &headers, ledger, entry),
        StatusCode::NOT_FOUND => Err(BackendError::TopicNotFound(topic.clone())),
        s => Err(refused(topic, s, text)),
    }
}

/// The entry holding `offset`: the oldest retained one when `offset` is
/// older, `None` when no entry holds it yet.
pub async fn entry_for_offset(
    admin: &Admin,
    topic: &TopicName,
    offset: u64,
) -> Result<Option<Entry>, BackendError> {
    first_entry_where(admin, topic, |e| e.last_index >= offset).await
}

/// The first entry published at or after `timestamp` (ms since the epoch).
/// Publish times follow the producers' clocks; like a Kafka time index, the
/// search assumes they grow along the partition.
pub async fn entry_for_timestamp(
    admin: &Admin,
    topic: &TopicName,
    timestamp: u64,
) -> Result<Option<Entry>, BackendError> {
    first_entry_where(admin, topic, |e| e.publish_time >= timestamp).await
}

/// Offsets and times to message ids, for readers and seeks.
pub struct IndexPositions(pub Admin);

#[async_trait]
impl Positions for IndexPositions {
    async fn offset(
        &self,
        topic: &TopicName,
        offset: u64,
    ) -> Result<Option<MessageId>, BackendError> {
        let partition = topic.partition_index().map_or(-1, |p| p as i32);
        let entry = entry_for_offset(&self.0, topic, offset).await?;
        Ok(entry.map(|e| e.message_id(offset, partition)))
    }

    async fn timestamp(
        &self,
        topic: &TopicName,
        timestamp: u64,
    ) -> Result<Option<MessageId>, BackendError> {
        let partition = topic.partition_index().map_or(-1, |p| p as i32);
        let entry = entry_for_timestamp(&self.0, topic, timestamp).await?;
        Ok(entry.map(|e| e.message_id(e.first_index(), partition)))
    }
}

/// Binary search for the first entry of the partition where `holds` (false
/// before it, true from it on).
async fn first_entry_where(
    admin: &Admin,
    topic: &TopicName,
    holds: impl Fn(&Entry) -> bool,
) -> Result<Option<Entry>, BackendError> {
    let spans = LedgerSpans::read(admin, topic).await?;
    let (mut low, mut high) = (0, spans.total());
    let mut found = None;
    while low < high {
        let middle = low + (high - low) / 2;
        let Some((ledger, position)) = spans.locate(middle) else {
            break;
        };
        let probe = entry(admin, topic, ledger, position).await?;
        if holds(&probe) {
            found = Some(probe);
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(found)
}

/// The entries of a partition, ledger by ledger, as counts.
#[derive(Debug, Default, PartialEq, Eq)]
struct LedgerSpans {
    /// (ledger id, entries in it), oldest first, empty ledgers left out.
    ledgers: Vec<(u64, u64)>,
}

impl LedgerSpans {
    async fn read(admin: &Admin, topic: &TopicName) -> Result<LedgerSpans, BackendError> {
        let path = format!("{}/internalStats", Admin::topic_path(topic));
        let (status, _, text) = admin.request(Method::GET, &path, None).await?;
        match status {
            s if s.is_success() => LedgerSpans::parse(&text)
                .ok_or_else(|| BackendError::Unavailable(format!("{path}: unexpected {text}"))),
            StatusCode::NOT_FOUND => Err(BackendError::TopicNotFound(topic.clone())),
            s => Err(refused(topic, s, text)),
        }
    }

    /// From a topic's internal stats: its ledgers with their entry counts.
    /// The open (last) ledger is listed with 0 entries; its count is that of
    /// `lastConfirmedEntry` (`ledger:entry`, entry -1 when empty).
    fn parse(stats: &str) -> Option<LedgerSpans> {
        let stats: serde_json::Value = serde_json::from_str(stats).ok()?;
        let (last_ledger, last_entry) = stats["lastConfirmedEntry"].as_str()?.split_once(':')?;
        let (last_ledger, last_entry): (u64, i64) =
            (last_ledger.parse().ok()?, last_entry.parse().ok()?);
        let ledgers = stats["ledgers"]
            .as_array()?
            .iter()
            .filter_map(|ledger| {
                let id = ledger["ledgerId"].as_u64()?;
                let entries = if id == last_ledger {
                    u64::try_from(last_entry + 1).unwrap_or(0)
                } else {
                    ledger["entries"].as_u64()?
                };
                (entries > 0).then_some((id, entries))
            })
            .collect();
        Some(LedgerSpans { ledgers })
    }

    fn total(&self) -> u64 {
        self.ledgers.iter().map(|(_, n)| n).sum()
    }

    /// The ledger and entry of the `n`-th retained entry.
    fn locate(&self, mut n: u64) -> Option<(u64, u64)> {
        for &(ledger, entries) in &self.ledgers {
            if n < entries {
                return Some((ledger, n));
            }
            n -= entries;
        }
        None
    }
}

/// An entry's facts from the admin API's headers.
fn parse(
    topic: &TopicName,
    headers: &HeaderMap,
    ledger: u64,
    entry: u64,
) -> Result<Entry, BackendError> {
    let index = "X-Pulsar-Broker-Entry-METADATA-index";
    let last_index = header(headers, index)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            BackendError::Unavailable(format!(
                "{topic} entry {ledger}:{entry} has no broker entry index: it was written \
                 before the cluster had brokerEntryMetadataInterceptors set"
            ))
        })?;
    let messages = header(headers, "X-Pulsar-num-batch-message")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let publish_time = header(headers, "X-Pulsar-publish-time")
        .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .ok_or_else(|| missing(topic, "X-Pulsar-publish-time"))?;
    Ok(Entry {
        ledger,
        entry,
        last_index,
        messages,
        publish_time,
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn missing(topic: &TopicName, header: &str) -> BackendError {
    BackendError::Unavailable(format!(
        "the admin API described an entry of {topic} without {header}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_spans_count_the_open_ledger_from_the_last_confirmed_entry() {
        let stats = r#"{"lastConfirmedEntry":"12:4","ledgers":[
            {"ledgerId":3,"entries":10},{"ledgerId":7,"entries":0},
            {"ledgerId":12,"entries":0}]}"#;
        let spans = LedgerSpans::parse(stats).unwrap();
        assert_eq!(spans.ledgers, vec![(3, 10), (12, 5)]);
        assert_eq!(spans.total(), 15);
        assert_eq!(spans.locate(0), Some((3, 0)));
        assert_eq!(spans.locate(9), Some((3, 9)));
        assert_eq!(spans.locate(10), Some((12, 0)));
        assert_eq!(spans.locate(15), None);
        let empty = r#"{"lastConfirmedEntry":"84:-1","ledgers":[{"ledgerId":84,"entries":0}]}"#;
        assert_eq!(LedgerSpans::parse(empty).unwrap().total(), 0);
    }

    #[test]
    fn entry_headers_give_index_batch_and_time() {
        let topic: TopicName = "persistent://public/default/t".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "X-Pulsar-Broker-Entry-METADATA-index",
            "14".parse().unwrap(),
        );
        headers.insert("X-Pulsar-num-batch-message", "5".parse().unwrap());
        headers.insert(
            "X-Pulsar-publish-time",
            "2026-11-25T03:22:37.437Z".parse().unwrap(),
        );
        let entry = parse(&topic, &headers, 82, 3).unwrap();
        assert_eq!(entry.first_index(), 10);
        assert_eq!(entry.publish_time, 1_795_576_957_437);
        let id = entry.message_id(12, 2);
        assert_eq!((id.offset, id.batch_index, id.partition), (12, 2, 2));
        headers.remove("X-Pulsar-Broker-Entry-METADATA-index");
        assert!(parse(&topic, &headers, 82, 3).is_err());
    }

    #[test]
    fn a_single_message_entry_has_no_batch_index() {
        let entry = Entry {
            ledger: 1,
            entry: 2,
            last_index: 7,
            messages: 1,
            publish_time: 0,
        };
        assert_eq!(entry.first_index(), 7);
        assert_eq!(entry.message_id(7, -1).batch_index, -1);
    }
}
