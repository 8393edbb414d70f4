//! Each group's stable generation in the metadata store, so that the
//! gateway that coordinates the group next (after a restart, or when the
//! coordinator moves to another gateway on the same backend) carries on
//! with the same members, generation and assignments: they heartbeat on
//! without joining again, as with a Kafka broker, which loads its groups
//! from `__consumer_offsets`.
//!
//! One key per group and Kafka cluster:
//! `kafka/groups/<group>/state/<cluster id>` (the group escaped as in
//! `offsets`): membership is the business of one cluster's gateways, where
//! committed offsets are shared by all. The coordinator records a new stable generation, and a
//! group left without members; [`persist`] writes the records in the
//! background (the latest of each group), deleting the key of a group
//! without members. [`load`] is called before a request is served for a
//! group the coordinator does not hold.
//!
//! The value: a format byte, then the generation (i32), protocol type,
//! protocol and leader, and the members, each with its id, instance id
//! (empty: none), client id and host, session and rebalance timeouts
//! (u32 ms), metadata and assignment. Strings and byte strings are a u32
//! length and the bytes; all big-endian.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gateway_api::{BackendError, ExpectedVersion, MetadataStore};

use super::coordinator::{Coordinator, Snapshot, SnapshotMember};
use super::offsets;

/// The first byte of every value this version writes.
const FORMAT: u8 = 1;

fn key(cluster: &str, group: &str) -> String {
    format!("{}state/{cluster}", offsets::group_root(group))
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The value kept for `snapshot`.
pub fn encode(snapshot: &Snapshot) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT);
    out.put_i32(snapshot.generation);
    put_bytes(&mut out, snapshot.protocol_type.as_bytes());
    put_bytes(&mut out, snapshot.protocol.as_bytes());
    put_bytes(&mut out, snapshot.leader.as_bytes());
    out.put_u32(u32::try_from(snapshot.members.len()).unwrap_or(u32::MAX));
    for m in &snapshot.members {
        put_bytes(&mut out, m.member_id.as_bytes());
        put_bytes(&mut out, m.instance_id.as_deref().unwrap_or("").as_bytes());
        put_bytes(&mut out, m.client_id.as_bytes());
        put_bytes(&mut out, m.client_host.as_bytes());
        out.put_u32(millis(m.session_timeout));
        out.put_u32(millis(m.rebalance_timeout));
        put_bytes(&mut out, &m.metadata);
        put_bytes(&mut out, &m.assignment);
    }
    out.freeze()
}

/// Reads a value back; `None` if it is not one this version wrote.
pub fn decode(mut value: Bytes) -> Option<Snapshot> {
    fn take_bytes(value: &mut Bytes) -> Option<Bytes> {
        let len = usize::try_from(value.try_get_u32().ok()?).ok()?;
        (value.remaining() >= len).then(|| value.split_to(len))
    }
    fn take_string(value: &mut Bytes) -> Option<String> {
        String::from_utf8(take_bytes(value)?.to_vec()).ok()
    }
    if value.try_get_u8().ok()? != FORMAT {
        return None;
    }
    let generation = value.try_get_i32().ok()?;
    let protocol_type = take_string(&mut value)?;
    let protocol = take_string(&mut value)?;
    let leader = take_string(&mut value)?;
    let count = value.try_get_u32().ok()?;
    let mut members = Vec::new();
    for _ in 0..count {
        let member_id = take_string(&mut value)?;
        let instance_id = Some(take_string(&mut value)?).filter(|i| !i.is_empty());
        let client_id = take_string(&mut value)?;
        let client_host = take_string(&mut value)?;
        let session_timeout = Duration::from_millis(value.try_get_u32().ok()?.into());
        let rebalance_timeout = Duration::from_millis(value.try_get_u32().ok()?.into());
        members.push(SnapshotMember {
            member_id,
            instance_id,
            client_id,
            client_host,
            session_timeout,
            rebalance_timeout,
            metadata: take_bytes(&mut value)?,
            assignment: take_bytes(&mut value)?,
        });
    }
    Some(Snapshot {
        generation,
        protocol_type,
        protocol,
        leader,
        members,
    })
}

/// Before serving a request for `group`, which this gateway coordinates:
/// takes the group over from its record if the coordinator does not hold
/// it. A record that does not read back is ignored (the members join
/// again).
pub async fn load(
    coordinator: &Coordinator,
    store: &dyn MetadataStore,
    cluster: &str,
    group: &str,
) -> Result<(), BackendError> {
    if coordinator.holds(group) {
        return Ok(());
    }
    let Some(value) = store.get(&key(cluster, group)).await? else {
        return Ok(());
    };
    match decode(value.value) {
        Some(snapshot) if !snapshot.members.is_empty() => coordinator.restore(group, snapshot),
        Some(_) => {}
        None => tracing::warn!(group, "a group record that does not read back, ignored"),
    }
    Ok(())
}

/// Deletes `group`'s record (DeleteGroups).
pub async fn delete(
    store: &dyn MetadataStore,
    cluster: &str,
    group: &str,
) -> Result<(), BackendError> {
    store
        .delete(&key(cluster, group), ExpectedVersion::Any)
        .await
}

/// Writes the coordinator's recorded changes until `shutdown` completes,
/// or until the coordinator is gone. A write that fails is logged and left: the
/// group's next change writes it again, and meanwhile a gateway taking
/// the group over finds the generation before (its members then join
/// again).
pub async fn persist(
    coordinator: Weak<Coordinator>,
    store: Arc<dyn MetadataStore>,
    cluster: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let Some(changed) = coordinator.upgrade().map(|c| c.changed()) else {
        return;
    };
    loop {
        // At shutdown, what was recorded is still written (the next
        // gateway takes the groups over from it).
        let stopping = tokio::select! {
            () = changed.notified() => false,
            () = &mut shutdown => true,
        };
        let Some(changes) = coordinator.upgrade().map(|c| c.take_changes()) else {
            return;
        };
        write(store.as_ref(), &cluster, changes).await;
        if stopping {
            return;
        }
    }
}

/// Writes recorded changes, each group's in turn.
async fn write(
    store: &dyn MetadataStore,
    cluster: &str,
    changes: BTreeMap<String, Option<Snapshot>>,
) {
    for (group, snapshot) in changes {
        let written = match snapshot {
            Some(snapshot) => store
                .put(
                    &key(cluster, &group),
                    encode(&snapshot),
                    ExpectedVersion::Any,
                )
                .await
                .map(drop),
            None => delete(store, cluster, &group).await,
        };
        if let Err(e) = written {
            tracing::warn!(group, error = %e, "could not write the group's record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let snapshot = Snapshot {
            generation: 7,
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            leader: "m-1".into(),
            members: vec![
                SnapshotMember {
                    member_id: "m-1".into(),
                    instance_id: None,
                    client_id: "c".into(),
                    client_host: "127.0.0.1".into(),
                    session_timeout: Duration::from_secs(10),
                    rebalance_timeout: Duration::from_secs(300),
                    metadata: Bytes::from_static(b"\x00\x01meta"),
                    assignment: Bytes::from_static(b"\x00\x01assigned"),
                },
                SnapshotMember {
                    member_id: "m-2".into(),
                    instance_id: Some("static-2".into()),
                    client_id: "c2".into(),
                    client_host: "::1".into(),
                    session_timeout: Duration::from_secs(45),
                    rebalance_timeout: Duration::from_secs(60),
                    metadata: Bytes::new(),
                    assignment: Bytes::new(),
                },
            ],
        };
        let value = encode(&snapshot);
        assert_eq!(decode(value.clone()), Some(snapshot));
        for cut in 0..value.len() {
            assert_eq!(decode(value.slice(..cut)), None, "cut at {cut}");
        }
        assert_eq!(decode(Bytes::from_static(b"\x02")), None);
        assert_eq!(key("c1", "g/1"), "kafka/groups/g%2F1/state/c1");
    }
}
