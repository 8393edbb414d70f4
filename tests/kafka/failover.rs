//! A consumer group outlives the gateway that coordinates it: its stable
//! generation (members, leader, assignments) is in the backend's metadata
//! store, so the gateway coordinating it next, here the same one after a
//! restart, lets its member heartbeat on in its generation and hands it
//! the same assignment, without a rebalance. Without the record, the
//! heartbeat is answered UNKNOWN_MEMBER_ID and the member joins again.
//!
//! The member is a hand-encoded client (JoinGroup, SyncGroup and Heartbeat
//! v0, a few fixed fields each): a client library would join again on its
//! own and hide whether the group was carried over.

use std::time::Duration;

use super::common::{BackendKind, Gateway};
use super::unique;
use super::wire::{string, Fields, Wire};

/// Kafka's NOT_COORDINATOR and COORDINATOR_LOAD_IN_PROGRESS: the new
/// gateway is not settled as the group's coordinator yet.
const NOT_COORDINATOR: i16 = 16;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;

/// A Kafka byte string: its length (i32), then its bytes.
fn bytes(b: &[u8]) -> Vec<u8> {
    let mut out = i32::try_from(b.len())
        .expect("short bytes")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(b);
    out
}

/// JoinGroup v0 of a new member (session timeout 30 s, protocol "range"):
/// error, generation, leader, member id.
async fn join(wire: &mut Wire, group: &str) -> (i16, i32, String, String) {
    let mut body = string(group);
    body.extend_from_slice(&30_000i32.to_be_bytes());
    body.extend_from_slice(&string(""));
    body.extend_from_slice(&string("consumer"));
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&string("range"));
    body.extend_from_slice(&bytes(b"subscription"));
    let response = wire.call(11, 0, &body).await.expect("a JoinGroup answer");
    let mut fields = Fields(&response);
    let error = fields.i16();
    let generation = fields.i32();
    let _protocol = fields.string();
    let leader = fields.string().unwrap_or_default();
    let member = fields.string().unwrap_or_default();
    (error, generation, leader, member)
}

/// SyncGroup v0: error and the member's assignment.
async fn sync(
    wire: &mut Wire,
    group: &str,
    generation: i32,
    member: &str,
    assignments: &[(&str, &[u8])],
) -> (i16, Vec<u8>) {
    let mut body = string(group);
    body.extend_from_slice(&generation.to_be_bytes());
    body.extend_from_slice(&string(member));
    let count = i32::try_from(assignments.len()).expect("few assignments");
    body.extend_from_slice(&count.to_be_bytes());
    for (id, assignment) in assignments {
        body.extend_from_slice(&string(id));
        body.extend_from_slice(&bytes(assignment));
    }
    let response = wire.call(14, 0, &body).await.expect("a SyncGroup answer");
    let mut fields = Fields(&response);
    let error = fields.i16();
    let len = usize::try_from(fields.i32()).unwrap_or(0);
    (error, fields.0[..len].to_vec())
}

/// Heartbeat v0: its error code.
async fn heartbeat(wire: &mut Wire, group: &str, generation: i32, member: &str) -> i16 {
    let mut body = string(group);
    body.extend_from_slice(&generation.to_be_bytes());
    body.extend_from_slice(&string(member));
    let response = wire.call(12, 0, &body).await.expect("a Heartbeat answer");
    Fields(&response).i16()
}

async fn a_group_carries_on_after_its_coordinator_restarts(backend: BackendKind) {
    let data = tempfile::tempdir().expect("a data directory");
    let cluster = unique("failover");
    let start = || {
        Gateway::builder(backend)
            .data_dir(data.path())
            .arg("--kafka-cluster-id")
            .arg(&cluster)
            .arg("--kafka-group-initial-rebalance-delay")
            .arg("0")
            .start()
    };
    let group = unique("carried");
    let mut first = start().await;
    let mut wire = Wire::connect(first.kafka_addr.expect("a Kafka listener")).await;
    let (error, generation, leader, member) = join(&mut wire, &group).await;
    assert_eq!(error, 0, "joined");
    assert_eq!(leader, member, "the only member leads");
    let (error, assignment) =
        sync(&mut wire, &group, generation, &member, &[(&member, b"p0")]).await;
    assert_eq!((error, &assignment[..]), (0, &b"p0"[..]));
    assert_eq!(heartbeat(&mut wire, &group, generation, &member).await, 0);
    drop(wire);
    first.terminate();
    assert!(
        first.wait_exit(Duration::from_secs(30)).await.is_some(),
        "the first gateway stops"
    );

    let second = start().await;
    let addr = second.kafka_addr.expect("a Kafka listener");
    // Until the restarted gateway sees itself as the live broker, it
    // answers NOT_COORDINATOR.
    let mut wire = Wire::connect(addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = heartbeat(&mut wire, &group, generation, &member).await;
        if answer != NOT_COORDINATOR && answer != COORDINATOR_LOAD_IN_PROGRESS {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted gateway does not coordinate the group within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        answer, 0,
        "the member heartbeats on in generation {generation}"
    );
    let (error, assignment) = sync(&mut wire, &group, generation, &member, &[]).await;
    assert_eq!(
        (error, &assignment[..]),
        (0, &b"p0"[..]),
        "the member keeps its assignment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_carries_on_after_its_coordinator_restarts_on_the_embedded_store() {
    a_group_carries_on_after_its_coordinator_restarts(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_carries_on_after_its_coordinator_restarts_on_pulsar() {
    a_group_carries_on_after_its_coordinator_restarts(BackendKind::Pulsar).await;
}
