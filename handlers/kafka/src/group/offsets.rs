//! Committed offsets, durable in the metadata store, so they outlive the
//! gateway and every gateway on the same backend reads the same ones.
//!
//! One key per group and partition:
//! `kafka/groups/<group>/offsets/<topic>/<partition>`, where `<group>` has
//! `%` and `/` escaped (a group id is any string; a Kafka topic name has
//! neither). The value is a version byte, then the offset, the leader
//! epoch and the commit time (big-endian), then the client's metadata
//! string.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gateway_api::{BackendError, ExpectedVersion, MetadataStore};

/// The first byte of every value this version writes.
const FORMAT: u8 = 1;

/// Where the Kafka handler's group state starts in the metadata store.
const PREFIX: &str = "kafka/groups/";

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group will consume.
    pub offset: i64,
    /// The leader epoch the client saw (-1: none).
    pub leader_epoch: i32,
    /// Milliseconds since the epoch, when it was committed.
    pub committed_at: i64,
    /// The client's own note (`OffsetAndMetadata.metadata`).
    pub metadata: String,
}

impl Committed {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(21 + self.metadata.len());
        out.put_u8(FORMAT);
        out.put_i64(self.offset);
        out.put_i32(self.leader_epoch);
        out.put_i64(self.committed_at);
        out.put_slice(self.metadata.as_bytes());
        out.freeze()
    }

    fn decode(mut value: Bytes) -> Option<Committed> {
        if value.len() < 21 || value.get_u8() != FORMAT {
            return None;
        }
        let offset = value.get_i64();
        let leader_epoch = value.get_i32();
        let committed_at = value.get_i64();
        let metadata = String::from_utf8(value.to_vec()).ok()?;
        Some(Committed {
            offset,
            leader_epoch,
            committed_at,
            metadata,
        })
    }
}

/// A group id as one key segment: `%` and `/` escaped, nothing else (the
/// store's keys are strings; only `/` has a meaning in them).
fn escape(group: &str) -> String {
    group.replace('%', "%25").replace('/', "%2F")
}

fn unescape(segment: &str) -> String {
    segment.replace("%2F", "/").replace("%25", "%")
}

/// Where everything of `group` is kept: its offsets, its record (`state`).
pub fn group_root(group: &str) -> String {
    format!("{PREFIX}{}/", escape(group))
}

fn group_prefix(group: &str) -> String {
    format!("{}offsets/", group_root(group))
}

fn key(group: &str, topic: &str, partition: i32) -> String {
    format!("{}{topic}/{partition}", group_prefix(group))
}

/// Writes one partition's committed offset.
pub async fn commit(
    store: &dyn MetadataStore,
    group: &str,
    topic: &str,
    partition: i32,
    committed: &Committed,
) -> Result<(), BackendError> {
    store
        .put(
            &key(group, topic, partition),
            committed.encode(),
            ExpectedVersion::Any,
        )
        .await
        .map(drop)
}

/// One partition's committed offset, if any.
pub async fn fetch(
    store: &dyn MetadataStore,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<Committed>, BackendError> {
    Ok(store
        .get(&key(group, topic, partition))
        .await?
        .and_then(|v| Committed::decode(v.value)))
}

/// Every committed offset of a group: topic, partition, offset.
pub async fn fetch_all(
    store: &dyn MetadataStore,
    group: &str,
) -> Result<Vec<(String, i32, Committed)>, BackendError> {
    let prefix = group_prefix(group);
    Ok(store
        .scan(&prefix)
        .await?
        .into_iter()
        .filter_map(|(key, v)| {
            let (topic, partition) = key[prefix.len()..].rsplit_once('/')?;
            Some((
                topic.to_owned(),
                partition.parse().ok()?,
                Committed::decode(v.value)?,
            ))
        })
        .collect())
}

/// Deletes every committed offset of a group; false if it had none.
pub async fn delete_all(store: &dyn MetadataStore, group: &str) -> Result<bool, BackendError> {
    let keys = store.scan(&group_prefix(group)).await?;
    let had_any = !keys.is_empty();
    for (key, _) in keys {
        store.delete(&key, ExpectedVersion::Any).await?;
    }
    Ok(had_any)
}

/// The groups with committed offsets.
pub async fn groups(store: &dyn MetadataStore) -> Result<Vec<String>, BackendError> {
    let mut groups: Vec<String> = store
        .scan(PREFIX)
        .await?
        .into_iter()
        .filter_map(|(key, _)| {
            let rest = key.strip_prefix(PREFIX)?;
            let (group, _) = rest.split_once("/offsets/")?;
            Some(unescape(group))
        })
        .collect();
    groups.dedup();
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_group_names_round_trip() {
        let committed = Committed {
            offset: 42,
            leader_epoch: -1,
            committed_at: 1_700_000_000_000,
            metadata: "note ✓".into(),
        };
        assert_eq!(Committed::decode(committed.encode()), Some(committed));
        assert_eq!(Committed::decode(Bytes::from_static(b"\x02short")), None);
        for group in ["plain", "a/b", "100%/x", "%2F"] {
            assert_eq!(unescape(&escape(group)), group);
            assert!(!escape(group).contains('/'));
        }
        assert_eq!(
            key("g/1", "orders", 3),
            "kafka/groups/g%2F1/offsets/orders/3"
        );
    }
}
