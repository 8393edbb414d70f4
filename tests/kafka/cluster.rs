//! Two gateways on one Pulsar are one Kafka cluster: each lists both as
//! brokers, both name the same coordinator for a group, the other answers
//! the group's requests NOT_COORDINATOR, and one group whose members
//! bootstrap at different gateways splits a topic's partitions and
//! consumes every record once. Alone (the embedded store) a gateway is the
//! one broker and coordinates every group. A gateway given an advertised
//! address names that one for itself in Metadata and FindCoordinator, and
//! another gateway of its cluster lists it there.

use std::net::SocketAddr;
use std::time::Duration;

use super::common::{eventually, BackendKind, Gateway};
use super::groups::{produce, records, Member};
use super::unique;
use super::wire::{string, Fields, Wire};

/// Kafka's NOT_COORDINATOR.
const NOT_COORDINATOR: i16 = 16;

/// Sends one request on a new connection and returns the response body.
async fn call(addr: SocketAddr, api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    Wire::connect(addr)
        .await
        .call(api_key, version, body)
        .await
        .expect("a response")
}

/// Metadata v1 for no topic: the brokers (node id, host, port) and the
/// controller.
async fn brokers(addr: SocketAddr) -> (Vec<(i32, String, i32)>, i32) {
    let response = call(addr, 3, 1, &0i32.to_be_bytes()).await;
    let mut fields = Fields(&response);
    let count = fields.i32();
    let mut brokers: Vec<(i32, String, i32)> = (0..count)
        .map(|_| {
            let node_id = fields.i32();
            let host = fields.string().expect("a host");
            let port = fields.i32();
            let _rack = fields.string();
            (node_id, host, port)
        })
        .collect();
    brokers.sort();
    (brokers, fields.i32())
}

/// Creates `topic` (with the gateway's default partitions) by asking
/// Metadata v1 for it, which creates a missing topic.
async fn create_topic(addr: SocketAddr, topic: &str) {
    let mut body = 1i32.to_be_bytes().to_vec();
    body.extend_from_slice(&string(topic));
    let response = call(addr, 3, 1, &body).await;
    let mut fields = Fields(&response);
    for _ in 0..fields.i32() {
        let (_id, _host, _port, _rack) =
            (fields.i32(), fields.string(), fields.i32(), fields.string());
    }
    let _controller = fields.i32();
    assert_eq!(fields.i32(), 1, "one topic");
    assert_eq!(fields.i16(), 0, "{topic} is created");
}

/// FindCoordinator v0: (error, node id, host, port).
async fn find_coordinator(addr: SocketAddr, group: &str) -> (i16, i32, String, i32) {
    let response = call(addr, 10, 0, &string(group)).await;
    let mut fields = Fields(&response);
    let error = fields.i16();
    let node_id = fields.i32();
    let host = fields.string().unwrap_or_default();
    (error, node_id, host, fields.i32())
}

/// Heartbeat v0 from a member nobody knows: its error code.
async fn heartbeat(addr: SocketAddr, group: &str) -> i16 {
    let mut body = string(group);
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&string("nobody"));
    let response = call(addr, 12, 0, &body).await;
    Fields(&response).i16()
}

/// A gateway on Pulsar in Kafka cluster `cluster`, whose new groups form
/// at once and whose new topics have two partitions.
async fn start_gateway(cluster: &str) -> Gateway {
    Gateway::builder(BackendKind::Pulsar)
        .arg("--kafka-cluster-id")
        .arg(cluster)
        .arg("--kafka-group-initial-rebalance-delay")
        .arg("0")
        .arg("--kafka-default-partitions")
        .arg("2")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_pulsar_serve_one_group_together() {
    let cluster = unique("cluster");
    let (gw_a, gw_b) = tokio::join!(start_gateway(&cluster), start_gateway(&cluster));
    let a = gw_a.kafka_addr.expect("a Kafka listener");
    let b = gw_b.kafka_addr.expect("a Kafka listener");

    // Each gateway registers within a heartbeat; until then the other
    // does not list it.
    let both_listed = eventually(Duration::from_secs(30), || async {
        let ((at_a, _), (at_b, _)) = tokio::join!(brokers(a), brokers(b));
        at_a.len() == 2 && at_a == at_b
    })
    .await;
    assert!(
        both_listed,
        "A lists {:?}, B {:?}",
        brokers(a).await,
        brokers(b).await
    );
    let (listed, controller_a) = brokers(a).await;
    let (_, controller_b) = brokers(b).await;
    assert_ne!(
        controller_a, controller_b,
        "each gateway has its own node id"
    );
    let ports: Vec<i32> = listed.iter().map(|(_, _, port)| *port).collect();
    let mut expected = vec![i32::from(a.port()), i32::from(b.port())];
    expected.sort();
    let mut ports_sorted = ports.clone();
    ports_sorted.sort();
    assert_eq!(
        ports_sorted, expected,
        "both listed at their own address: {listed:?}"
    );

    // Both name the same coordinator; the other answers NOT_COORDINATOR.
    let group = unique("spread");
    let at_a = find_coordinator(a, &group).await;
    let at_b = find_coordinator(b, &group).await;
    assert_eq!(at_a, at_b, "both gateways name one coordinator");
    assert_eq!(at_a.0, 0, "no error: {at_a:?}");
    let (coordinator, other) = if at_a.1 == controller_a {
        (a, b)
    } else {
        assert_eq!(at_a.1, controller_b, "the coordinator is one of the two");
        (b, a)
    };
    assert_eq!(at_a.3, i32::from(coordinator.port()));
    assert_eq!(heartbeat(other, &group).await, NOT_COORDINATOR);
    let here = heartbeat(coordinator, &group).await;
    assert_ne!(here, NOT_COORDINATOR, "the coordinator serves the group");

    // A two-partition topic, empty until both members hold a partition:
    // a member alone in the group holds both for a while and would read
    // records of the other's partition.
    let topic = unique("group-spread");
    create_topic(a, &topic).await;

    // One member bootstrapped at each gateway; each stays a while after
    // its 6 records, so neither's leaving rebalances the other before it
    // has read its own.
    let mut member_a = Member::start(&a.to_string(), &topic, &group, 6, 5);
    let mut member_b = Member::start(&b.to_string(), &topic, &group, 6, 5);
    let (pa, pb) = tokio::join!(
        member_a.wait_for_one_partition(),
        member_b.wait_for_one_partition()
    );
    assert_ne!(pa, pb, "each member owns its own partition");

    // 12 records through the other gateway, 6 to each partition.
    produce(&b.to_string(), &topic, 12, true).await;
    let (result_a, result_b) = tokio::join!(member_a.done, member_b.done);
    let (result_a, result_b) = (result_a.unwrap(), result_b.unwrap());
    for (result, partition) in [(&result_a, pa), (&result_b, pb)] {
        let read: Vec<(u64, u64)> = records(result).iter().map(|r| (r.0, r.1)).collect();
        let whole: Vec<(u64, u64)> = (0..6).map(|offset| (partition, offset)).collect();
        assert_eq!(
            read, whole,
            "a member reads its own partition, all of it, once: {result}"
        );
        assert_eq!(
            result["committed"][partition.to_string()],
            6,
            "its offsets are committed: {result}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_a_gateway_is_the_one_broker_and_coordinates_every_group() {
    let gw = Gateway::start(BackendKind::Embedded).await;
    let addr = gw.kafka_addr.expect("a Kafka listener");
    let (listed, controller) = brokers(addr).await;
    assert_eq!(
        listed,
        vec![(controller, addr.ip().to_string(), i32::from(addr.port()))]
    );
    for group in ["g1", "g2", "g3", "orders-service"] {
        let (error, node_id, host, port) = find_coordinator(addr, group).await;
        assert_eq!((error, node_id), (0, controller));
        assert_eq!(
            (host, port),
            (addr.ip().to_string(), i32::from(addr.port()))
        );
        assert_ne!(heartbeat(addr, group).await, NOT_COORDINATOR);
    }
}

/// The host:port the gateway under test advertises: nobody listens there.
const ADVERTISED: (&str, i32) = ("kafka.example.test", 19092);

/// A gateway started with `--kafka-advertised-addr` names that address, not
/// the one it was reached at, for itself in Metadata and FindCoordinator.
/// On Pulsar, another gateway of its cluster lists it there too.
async fn the_advertised_address_is_the_brokers_and_the_coordinators(backend: BackendKind) {
    let cluster = unique("advertised");
    let gw = Gateway::builder(backend)
        .arg("--kafka-cluster-id")
        .arg(&cluster)
        .arg("--kafka-advertised-addr")
        .arg(format!("{}:{}", ADVERTISED.0, ADVERTISED.1))
        .start()
        .await;
    let addr = gw.kafka_addr.expect("a Kafka listener");
    let advertised = (ADVERTISED.0.to_owned(), ADVERTISED.1);

    let (listed, controller) = brokers(addr).await;
    assert_eq!(
        listed,
        vec![(controller, advertised.0.clone(), advertised.1)]
    );
    for group in ["g1", "orders-service", &unique("advertised-group")] {
        let (error, node_id, host, port) = find_coordinator(addr, group).await;
        assert_eq!((error, node_id), (0, controller), "{group}");
        assert_eq!((host, port), advertised, "{group}");
    }

    if backend == BackendKind::Pulsar {
        let other = Gateway::builder(backend)
            .arg("--kafka-cluster-id")
            .arg(&cluster)
            .start()
            .await;
        let other_addr = other.kafka_addr.expect("a Kafka listener");
        let at_other = (controller, advertised.0.clone(), advertised.1);
        let listed_there = eventually(Duration::from_secs(30), || async {
            let (listed, _) = brokers(other_addr).await;
            listed.len() == 2 && listed.contains(&at_other)
        })
        .await;
        assert!(
            listed_there,
            "the other gateway lists {:?}",
            brokers(other_addr).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_advertised_address_is_the_brokers_and_the_coordinators_on_the_embedded_store() {
    the_advertised_address_is_the_brokers_and_the_coordinators(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_advertised_address_is_the_brokers_and_the_coordinators_on_pulsar() {
    the_advertised_address_is_the_brokers_and_the_coordinators(BackendKind::Pulsar).await;
}
