//! The conformance cases: what every backend promises through the handler
//! contract. Each takes a fresh [`TestBackend`]; topics are unique per case.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use gateway_api::topic::Namespace;
use gateway_api::{
    BackendError, ExpectedVersion, Message, NewMessage, StartPosition, SubscribeRequest,
    Subscription, SubscriptionKind, TopicName, TopicSelector,
};

use super::TestBackend;

/// How long a message may take to arrive before a case fails.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// How long a case waits to be sure nothing more arrives.
pub const QUIET: Duration = Duration::from_millis(500);

pub async fn recv(sub: &dyn Subscription) -> Message {
    match tokio::time::timeout(DEADLINE, sub.receive()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => panic!("receive failed: {e}"),
        Err(_) => panic!("no message within {DEADLINE:?}"),
    }
}

async fn recv_n(sub: &dyn Subscription, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(recv(sub).await);
    }
    out
}

async fn assert_quiet(sub: &dyn Subscription) {
    if let Ok(Ok(m)) = tokio::time::timeout(QUIET, sub.receive()).await {
        panic!("unexpected message at offset {}", m.id.offset);
    }
}

fn payloads(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

async fn publish_n(b: &TestBackend, topic: &TopicName, n: usize) {
    for i in 0..n {
        b.backend
            .publish(topic, NewMessage::new(format!("m{i}")))
            .await
            .unwrap();
    }
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

pub async fn publish_keeps_every_field_and_offsets_start_at_zero(b: TestBackend) {
    let topic = b.topic("fields");
    let sent = NewMessage::new("hello")
        .with_key("device-7")
        .with_property("unit", "celsius")
        .with_property("unit", "kelvin");
    let sent = NewMessage {
        event_time: Some(1_700_000_000_123),
        ..sent
    };
    let first = b.backend.publish(&topic, sent.clone()).await.unwrap();
    let second = b
        .backend
        .publish(&topic, NewMessage::new("again"))
        .await
        .unwrap();
    assert_eq!((first.offset, second.offset), (0, 1));
    assert!(first < second);

    let reader = b
        .backend
        .reader(&topic, StartPosition::Earliest)
        .await
        .unwrap();
    let got = reader.next().await.unwrap();
    assert_eq!(got.topic, topic);
    assert_eq!(got.id, first);
    assert_eq!(got.payload, sent.payload);
    assert_eq!(got.key, sent.key);
    assert_eq!(got.properties, sent.properties);
    assert_eq!(got.event_time, sent.event_time);
    assert!(got.publish_time > 1_600_000_000_000, "publish time is set");
    assert_eq!(got.redelivery_count, 0);
    assert_eq!(reader.next().await.unwrap().id, second);
}

pub async fn a_published_batch_keeps_its_order_with_consecutive_offsets(b: TestBackend) {
    let topic = b.topic("batch");
    publish_n(&b, &topic, 2).await;
    let batch: Vec<NewMessage> = (2..52)
        .map(|i| NewMessage::new(format!("m{i}")).with_key(format!("k{}", i % 3)))
        .collect();
    let ids = b.backend.publish_batch(&topic, batch).await.unwrap();
    let offsets: Vec<u64> = ids.iter().map(|id| id.offset).collect();
    assert_eq!(offsets, (2..52).collect::<Vec<u64>>());
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let got = recv_n(&*sub, 52).await;
    assert_eq!(payloads(&got), expected(52));
    for (m, id) in got[2..].iter().zip(&ids) {
        assert_eq!(m.id.offset, id.offset);
        assert_eq!(
            m.key.as_deref(),
            Some(format!("k{}", m.id.offset % 3).as_bytes())
        );
    }
    // A reader may start inside a batch.
    let reader = b
        .backend
        .reader(&topic, StartPosition::Offset(10))
        .await
        .unwrap();
    assert_eq!(reader.next().await.unwrap().id, ids[8]);
    // An empty batch stores nothing.
    assert!(b
        .backend
        .publish_batch(&topic, Vec::new())
        .await
        .unwrap()
        .is_empty());
}

/// A reader asked whether a message is available before every read
/// keeps answering, at the pace of the reads, through batches larger than
/// what a backend buffers toward it (on Pulsar the crate's queue of 1000:
/// its engine, blocked halfway through an entry, used to leave the
/// question unanswered for ever).
pub async fn a_reader_polled_for_availability_reads_through_large_batches(b: TestBackend) {
    let topic = b.topic("polled");
    publish_in_batches(&*b.backend, &topic, 7500, 2500).await;
    read_polling(&*b.backend, &topic, 7500).await;
}

/// Publishes `total` messages `m<i>` to `topic` with `publish_batch`,
/// `per_batch` at a time.
pub async fn publish_in_batches(
    backend: &dyn gateway_api::Backend,
    topic: &TopicName,
    total: u64,
    per_batch: u64,
) {
    for start in (0..total).step_by(per_batch as usize) {
        let batch = (start..(start + per_batch).min(total))
            .map(|i| NewMessage::new(format!("m{i}")))
            .collect();
        backend.publish_batch(topic, batch).await.unwrap();
    }
}

/// Reads the `total` messages of `topic` from the earliest, asking before
/// each whether one is available, and checks that nothing follows.
pub async fn read_polling(backend: &dyn gateway_api::Backend, topic: &TopicName, total: u64) {
    let reader = backend
        .reader(topic, StartPosition::Earliest)
        .await
        .unwrap();
    for i in 0..total {
        let available = tokio::time::timeout(DEADLINE, reader.has_message_available())
            .await
            .unwrap_or_else(|_| panic!("no answer before message {i}"))
            .unwrap();
        assert!(available, "message {i} is there");
        let got = tokio::time::timeout(DEADLINE, reader.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not arrive"))
            .unwrap();
        assert_eq!(got.id.offset, i);
    }
    assert!(!reader.has_message_available().await.unwrap());
}

/// Drains a reader with `next_available`, as Kafka's Fetch does: each
/// call hands over at most what was asked, in order; an empty answer
/// while messages remain means they are on their way, which `next` waits
/// for. At the end there is nothing at hand and nothing available.
pub async fn a_reader_hands_over_what_is_at_hand_in_batches(b: TestBackend) {
    let topic = b.topic("at-hand");
    publish_in_batches(&*b.backend, &topic, 3000, 1000).await;
    let reader = b
        .backend
        .reader(&topic, StartPosition::Offset(10))
        .await
        .unwrap();
    let mut offsets = Vec::new();
    let mut batches = 0;
    while offsets.len() < 2990 {
        let batch = tokio::time::timeout(DEADLINE, reader.next_available(300))
            .await
            .expect("next_available does not wait for a publish")
            .unwrap();
        assert!(
            batch.len() <= 300,
            "{} messages for at most 300",
            batch.len()
        );
        if batch.is_empty() {
            let one = tokio::time::timeout(DEADLINE, reader.next())
                .await
                .unwrap_or_else(|_| panic!("message {} did not arrive", offsets.len() + 10))
                .unwrap();
            offsets.push(one.id.offset);
        } else {
            batches += 1;
            offsets.extend(batch.iter().map(|m| m.id.offset));
        }
    }
    assert_eq!(offsets, (10..3000).collect::<Vec<u64>>());
    assert!(batches >= 10, "{batches} batches for 2990 messages");
    assert!(reader.next_available(300).await.unwrap().is_empty());
    assert!(!reader.has_message_available().await.unwrap());
    b.backend
        .publish(&topic, NewMessage::new("late"))
        .await
        .unwrap();
    let late = tokio::time::timeout(DEADLINE, reader.next())
        .await
        .expect("the reader wakes for a later publish")
        .unwrap();
    assert_eq!((late.id.offset, &late.payload[..]), (3000, &b"late"[..]));
}

pub async fn concurrent_publishers_get_contiguous_offsets(b: TestBackend) {
    let topic = b.topic("contiguous");
    let mut tasks = Vec::new();
    for p in 0..32 {
        let backend = b.backend.clone();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20 {
                let id = backend
                    .publish(&topic, NewMessage::new(format!("{p}-{i}")))
                    .await
                    .unwrap();
                ids.push(id.offset);
            }
            ids
        }));
    }
    let mut offsets = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "a publisher's offsets grow"
        );
        offsets.extend(ids);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (0..640).collect::<Vec<u64>>());
    let range = b.backend.offsets(&topic).await.unwrap();
    assert_eq!((range.earliest, range.next), (0, 640));
}

pub async fn exclusive_subscription_refuses_a_second_consumer(b: TestBackend) {
    let topic = b.topic("exclusive");
    let _first = b
        .subscribe(SubscribeRequest::new(topic.clone(), "sub"))
        .await;
    let second = b
        .backend
        .subscribe(SubscribeRequest::new(topic.clone(), "sub"))
        .await;
    assert!(matches!(second, Err(BackendError::ConsumerBusy { .. })));
    let other_name = b
        .backend
        .subscribe(SubscribeRequest::new(topic.clone(), "other"))
        .await;
    assert!(other_name.is_ok(), "another subscription is independent");
}

pub async fn shared_subscription_spreads_messages_over_consumers(b: TestBackend) {
    let topic = b.topic("shared");
    let req = SubscribeRequest::new(topic.clone(), "workers")
        .kind(SubscriptionKind::Shared)
        .consumer_name("w");
    let c1 = b.subscribe(req.clone().consumer_name("w1")).await;
    let c2 = b.subscribe(req.consumer_name("w2")).await;
    publish_n(&b, &topic, 100).await;
    let mut seen = Vec::new();
    let (mut n1, mut n2) = (0, 0);
    while seen.len() < 100 {
        tokio::select! {
            m = c1.receive() => { let m = m.unwrap(); c1.ack(&m.topic, m.id).await.unwrap(); n1 += 1; seen.push(m) }
            m = c2.receive() => { let m = m.unwrap(); c2.ack(&m.topic, m.id).await.unwrap(); n2 += 1; seen.push(m) }
            () = tokio::time::sleep(DEADLINE) => panic!("only {} of 100 messages arrived", seen.len()),
        }
    }
    assert!(n1 > 0 && n2 > 0, "both consumers got messages ({n1}/{n2})");
    let mut got = payloads(&seen);
    got.sort();
    let mut want = expected(100);
    want.sort();
    assert_eq!(got, want, "every message exactly once");
    let refused = c1.ack_cumulative(&topic, seen[0].id).await;
    assert!(refused.is_err(), "cumulative ack is refused on Shared");
}

pub async fn failover_standby_takes_over_unacked_messages(b: TestBackend) {
    let topic = b.topic("failover");
    let req = SubscribeRequest::new(topic.clone(), "fo").kind(SubscriptionKind::Failover);
    let a = b.subscribe(req.clone().consumer_name("a")).await;
    let z = b.subscribe(req.consumer_name("z")).await;
    publish_n(&b, &topic, 10).await;
    // Which consumer is active is the backend's choice.
    let (active, standby, head) = tokio::select! {
        m = a.receive() => (&*a, &*z, m.unwrap()),
        m = z.receive() => (&*z, &*a, m.unwrap()),
        () = tokio::time::sleep(DEADLINE) => panic!("no consumer got a message"),
    };
    let mut first = vec![head];
    first.extend(recv_n(active, 9).await);
    assert_eq!(
        payloads(&first),
        expected(10),
        "the active consumer gets all, in order"
    );
    assert_quiet(standby).await;
    active.ack_cumulative(&topic, first[4].id).await.unwrap();
    active.close().await.unwrap();
    let rest = recv_n(standby, 5).await;
    assert_eq!(payloads(&rest), expected(10)[5..].to_vec());
}

pub async fn key_shared_keeps_each_key_on_one_consumer_in_order(b: TestBackend) {
    let topic = b.topic("keyshared");
    let req = SubscribeRequest::new(topic.clone(), "ks").kind(SubscriptionKind::KeyShared);
    let c1 = b.subscribe(req.clone().consumer_name("c1")).await;
    let c2 = b.subscribe(req.consumer_name("c2")).await;
    for i in 0..100 {
        let key = format!("k{}", i % 10);
        let msg = NewMessage::new(format!("{i}")).with_key(key);
        b.backend.publish(&topic, msg).await.unwrap();
    }
    // Then batches whose keys change every third message: a backend that
    // batches must not hand one consumer another's key with them.
    for start in (100..200).step_by(25) {
        let batch = (start..start + 25)
            .map(|i| NewMessage::new(format!("{i}")).with_key(format!("k{}", (i / 3) % 10)))
            .collect();
        b.backend.publish_batch(&topic, batch).await.unwrap();
    }
    let mut owner: HashMap<Bytes, usize> = HashMap::new();
    let mut last: HashMap<Bytes, u64> = HashMap::new();
    let mut count = 0;
    while count < 200 {
        let (who, m) = tokio::select! {
            m = c1.receive() => (1, m.unwrap()),
            m = c2.receive() => (2, m.unwrap()),
            () = tokio::time::sleep(DEADLINE) => panic!("only {count} of 200 arrived"),
        };
        let key = m.key.clone().unwrap();
        assert_eq!(
            *owner.entry(key.clone()).or_insert(who),
            who,
            "key moved consumer"
        );
        if let Some(prev) = last.insert(key, m.id.offset) {
            assert!(prev < m.id.offset, "a key's messages arrive in order");
        }
        count += 1;
    }
    let consumers: HashSet<usize> = owner.values().copied().collect();
    assert_eq!(consumers.len(), 2, "ten keys spread over both consumers");
}

pub async fn key_shared_keeps_key_order_when_a_consumer_joins(b: TestBackend) {
    let topic = b.topic("keyshared-join");
    let req = SubscribeRequest::new(topic.clone(), "ks").kind(SubscriptionKind::KeyShared);
    let first = b.subscribe(req.clone().consumer_name("first")).await;
    let publish = |range: std::ops::Range<usize>| {
        let (backend, topic) = (b.backend.clone(), topic.clone());
        async move {
            for i in range {
                let msg = NewMessage::new(format!("{i}")).with_key(format!("k{}", i % 10));
                backend.publish(&topic, msg).await.unwrap();
            }
        }
    };
    publish(0..50).await;
    let held = recv_n(&*first, 50).await;
    let second = b.subscribe(req.consumer_name("second")).await;
    publish(50..100).await;
    // Every key has unacknowledged messages on `first`. Whichever consumer
    // its new messages go to (the backend's choice: Pulsar holds them
    // back until `first` acknowledges, then may move the key), each key's
    // messages arrive in order and never on `second` before an older one
    // reached `first`.
    for m in &held {
        first.ack(&m.topic, m.id).await.unwrap();
    }
    let mut on: BTreeMap<(bool, String), Vec<usize>> = BTreeMap::new();
    for m in &held {
        let i: usize = String::from_utf8_lossy(&m.payload).parse().unwrap();
        on.entry((false, format!("k{}", i % 10)))
            .or_default()
            .push(i);
    }
    for _ in 50..100 {
        let (m, on_second) = tokio::select! {
            m = first.receive() => (m.unwrap(), false),
            m = second.receive() => (m.unwrap(), true),
            () = tokio::time::sleep(DEADLINE) => panic!("a message of 50..100 did not arrive"),
        };
        let consumer = if on_second { &*second } else { &*first };
        consumer.ack(&m.topic, m.id).await.unwrap();
        let i: usize = String::from_utf8_lossy(&m.payload).parse().unwrap();
        on.entry((on_second, format!("k{}", i % 10)))
            .or_default()
            .push(i);
    }
    for ((on_second, key), got) in &on {
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{key} in order: {got:?}"
        );
        if *on_second {
            let before = on.get(&(false, key.clone())).map_or(0, |f| f[f.len() - 1]);
            assert!(got[0] > before, "{key} on second after first: {got:?}");
        }
    }
    let all: usize = on.values().map(Vec::len).sum();
    assert_eq!(all, 100, "each message once");
    // Drained: keys spread over both consumers again.
    publish(100..200).await;
    let mut seen = 0;
    let mut on_second = 0;
    while seen < 100 {
        tokio::select! {
            m = first.receive() => { let m = m.unwrap(); first.ack(&m.topic, m.id).await.unwrap(); }
            m = second.receive() => { let m = m.unwrap(); second.ack(&m.topic, m.id).await.unwrap(); on_second += 1; }
            () = tokio::time::sleep(DEADLINE) => panic!("only {seen} of 100 arrived"),
        }
        seen += 1;
    }
    assert!(on_second > 0, "the new consumer gets keys once they drain");
}

pub async fn acknowledged_messages_are_not_delivered_again(b: TestBackend) {
    let topic = b.topic("acks");
    publish_n(&b, &topic, 10).await;
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let got = recv_n(&*sub, 10).await;
    for m in got.iter().filter(|m| m.id.offset % 2 == 0) {
        sub.ack(&m.topic, m.id).await.unwrap();
    }
    sub.close().await.unwrap();
    drop(sub);
    let b = b.restart().await;
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let again = recv_n(&*sub, 5).await;
    assert_eq!(payloads(&again), vec!["m1", "m3", "m5", "m7", "m9"]);
    assert_quiet(&*sub).await;
}

pub async fn cumulative_ack_moves_the_cursor(b: TestBackend) {
    let topic = b.topic("cumulative");
    publish_n(&b, &topic, 10).await;
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let got = recv_n(&*sub, 10).await;
    sub.ack_cumulative(&topic, got[5].id).await.unwrap();
    drop(sub);
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    assert_eq!(
        payloads(&recv_n(&*sub, 4).await),
        expected(10)[6..].to_vec()
    );
}

pub async fn nack_redelivers_with_a_higher_redelivery_count(b: TestBackend) {
    let topic = b.topic("nack");
    publish_n(&b, &topic, 3).await;
    let sub = b
        .subscribe(SubscribeRequest::new(topic.clone(), "s").kind(SubscriptionKind::Shared))
        .await;
    let got = recv_n(&*sub, 3).await;
    sub.ack(&topic, got[0].id).await.unwrap();
    sub.ack(&topic, got[2].id).await.unwrap();
    sub.nack(&topic, got[1].id).await.unwrap();
    let again = recv(&*sub).await;
    assert_eq!(again.id, got[1].id);
    assert_eq!(again.redelivery_count, 1);
    sub.nack(&topic, again.id).await.unwrap();
    assert_eq!(recv(&*sub).await.redelivery_count, 2);
}

pub async fn unacked_messages_go_to_the_next_consumer(b: TestBackend) {
    let topic = b.topic("disconnect");
    publish_n(&b, &topic, 5).await;
    let req = SubscribeRequest::new(topic.clone(), "s").kind(SubscriptionKind::Shared);
    let first = b.subscribe(req.clone()).await;
    let got = recv_n(&*first, 2).await;
    first.ack(&topic, got[0].id).await.unwrap();
    drop(first);
    let second = b.subscribe(req).await;
    let rest = recv_n(&*second, 4).await;
    let mut names = payloads(&rest);
    names.sort();
    assert_eq!(names, vec!["m1", "m2", "m3", "m4"]);
    // m1 was delivered once before: counted or not is the backend's (Pulsar
    // counts only redeliveries a consumer asks for), but its id is kept.
    assert!(rest.iter().any(|m| m.id == got[1].id));
}

pub async fn new_subscription_starts_where_asked(b: TestBackend) {
    let topic = b.topic("initial");
    publish_n(&b, &topic, 3).await;
    let latest = b
        .subscribe(
            SubscribeRequest::new(topic.clone(), "late").initial_position(StartPosition::Latest),
        )
        .await;
    b.backend
        .publish(&topic, NewMessage::new("after"))
        .await
        .unwrap();
    assert_eq!(payloads(&[recv(&*latest).await]), vec!["after"]);
    let earliest = b
        .subscribe(SubscribeRequest::new(topic.clone(), "early"))
        .await;
    assert_eq!(
        payloads(&recv_n(&*earliest, 4).await),
        vec!["m0", "m1", "m2", "after"]
    );
}

pub async fn readers_start_at_every_kind_of_position(b: TestBackend) {
    let topic = b.topic("reader");
    publish_n(&b, &topic, 5).await;
    let m4 = b
        .backend
        .reader(&topic, StartPosition::Offset(4))
        .await
        .unwrap();
    let m4_time = m4.next().await.unwrap().publish_time;
    // The next publishes get a later time than m4's: wait for the clock to pass it.
    while now_ms() <= m4_time {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before_more = now_ms() - 1;
    for i in 5..8 {
        b.backend
            .publish(&topic, NewMessage::new(format!("m{i}")))
            .await
            .unwrap();
    }
    let r = b
        .backend
        .reader(&topic, StartPosition::Offset(3))
        .await
        .unwrap();
    assert_eq!(r.next().await.unwrap().id.offset, 3);
    let r = b
        .backend
        .reader(&topic, StartPosition::Timestamp(before_more + 1))
        .await
        .unwrap();
    assert_eq!(r.next().await.unwrap().id.offset, 5);
    let at = b
        .backend
        .offset_for_timestamp(&topic, before_more + 1)
        .await
        .unwrap();
    assert_eq!(at, Some(5));
    let last = b.backend.last_message_id(&topic).await.unwrap().unwrap();
    assert_eq!(last.offset, 7);
    let r = b
        .backend
        .reader(&topic, StartPosition::Id(last))
        .await
        .unwrap();
    assert_eq!(r.next().await.unwrap().id, last);
    assert!(!r.has_message_available().await.unwrap());
    let r = b
        .backend
        .reader(&topic, StartPosition::Latest)
        .await
        .unwrap();
    assert!(!r.has_message_available().await.unwrap());
    let waiting = tokio::spawn(async move { r.next().await.map(|m| m.id.offset) });
    b.backend
        .publish(&topic, NewMessage::new("new"))
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, 8, "a reader at the end wakes for the next message");
    let r = b
        .backend
        .reader(&topic, StartPosition::Earliest)
        .await
        .unwrap();
    r.seek(StartPosition::Offset(6)).await.unwrap();
    assert_eq!(r.next().await.unwrap().id.offset, 6);
    // The offset the next message will get: that message, once published.
    let r = b
        .backend
        .reader(&topic, StartPosition::Offset(9))
        .await
        .unwrap();
    assert!(!r.has_message_available().await.unwrap());
    b.backend
        .publish(&topic, NewMessage::new("next"))
        .await
        .unwrap();
    let next = tokio::time::timeout(DEADLINE, r.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((next.id.offset, &next.payload[..]), (9, &b"next"[..]));
}

pub async fn subscription_seek_rewinds_and_skips(b: TestBackend) {
    let topic = b.topic("seek");
    publish_n(&b, &topic, 6).await;
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let got = recv_n(&*sub, 6).await;
    sub.ack_cumulative(&topic, got[5].id).await.unwrap();
    sub.seek(StartPosition::Offset(2)).await.unwrap();
    assert_eq!(payloads(&recv_n(&*sub, 4).await), expected(6)[2..].to_vec());
    sub.seek(StartPosition::Latest).await.unwrap();
    assert_quiet(&*sub).await;
    sub.seek(StartPosition::Earliest).await.unwrap();
    assert_eq!(recv(&*sub).await.id.offset, 0);
}

pub async fn seeks_forget_buffered_messages_and_move_every_partition(b: TestBackend) {
    // What was buffered toward the consumer before a seek is not delivered
    // after it.
    let topic = b.topic("seekbuffered");
    publish_n(&b, &topic, 5).await;
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    assert_eq!(recv(&*sub).await.id.offset, 0);
    sub.seek(StartPosition::Latest).await.unwrap();
    assert_quiet(&*sub).await;
    b.backend
        .publish(&topic, NewMessage::new("after"))
        .await
        .unwrap();
    assert_eq!(payloads(&[recv(&*sub).await]), vec!["after"]);

    // On a partitioned topic, every partition moves.
    let parted = b.topic("seekparted");
    b.backend.create_topic(&parted, 2).await.unwrap();
    for p in 0..2 {
        b.backend
            .publish(&parted.partition(p), NewMessage::new(format!("p{p}")))
            .await
            .unwrap();
    }
    let all = b
        .subscribe(SubscribeRequest::new(parted.clone(), "s"))
        .await;
    for m in recv_n(&*all, 2).await {
        all.ack(&m.topic, m.id).await.unwrap();
    }
    all.seek(StartPosition::Earliest).await.unwrap();
    let mut again = payloads(&recv_n(&*all, 2).await);
    again.sort();
    assert_eq!(again, vec!["p0", "p1"]);

    // A non-durable subscription seeks as well.
    let tmp = b
        .subscribe(SubscribeRequest {
            durable: false,
            ..SubscribeRequest::new(topic.clone(), "tmp")
        })
        .await;
    tmp.seek(StartPosition::Offset(3)).await.unwrap();
    assert_eq!(recv(&*tmp).await.id.offset, 3);
}

pub async fn partitioned_topics_route_by_key_and_subscribe_as_one(b: TestBackend) {
    let topic = b.topic("partitioned");
    b.backend.create_topic(&topic, 3).await.unwrap();
    assert_eq!(b.backend.partitions(&topic).await.unwrap(), Some(3));
    assert!(matches!(
        b.backend.create_topic(&topic, 3).await,
        Err(BackendError::TopicExists(_))
    ));
    let mut partition_of_key: BTreeMap<String, i32> = BTreeMap::new();
    for i in 0..30 {
        let key = format!("key{}", i % 6);
        let id = b
            .backend
            .publish(
                &topic,
                NewMessage::new(format!("{i}")).with_key(key.clone()),
            )
            .await
            .unwrap();
        assert!((0..3).contains(&id.partition));
        assert_eq!(
            *partition_of_key.entry(key).or_insert(id.partition),
            id.partition
        );
    }
    let direct = b
        .backend
        .publish(&topic.partition(2), NewMessage::new("direct"))
        .await
        .unwrap();
    assert_eq!(direct.partition, 2);
    let sub = b
        .subscribe(SubscribeRequest::new(topic.clone(), "all"))
        .await;
    let got = recv_n(&*sub, 31).await;
    let partitions: HashSet<Option<u32>> = got.iter().map(|m| m.topic.partition_index()).collect();
    assert!(
        partitions.len() > 1,
        "messages came from several partitions"
    );
    let r = b
        .backend
        .reader(&topic.partition(2), StartPosition::Earliest)
        .await
        .unwrap();
    assert_eq!(r.next().await.unwrap().topic, topic.partition(2));
    let missing = b
        .backend
        .publish(&topic.partition(7), NewMessage::new("x"))
        .await;
    assert!(matches!(missing, Err(BackendError::TopicNotFound(_))));
}

pub async fn added_partitions_reach_existing_subscribers(b: TestBackend) {
    let topic = b.topic("grow");
    b.backend.create_topic(&topic, 1).await.unwrap();
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    b.backend.update_partitions(&topic, 3).await.unwrap();
    assert_eq!(b.backend.partitions(&topic).await.unwrap(), Some(3));
    assert!(
        b.backend.update_partitions(&topic, 2).await.is_err(),
        "cannot shrink"
    );
    let id = b
        .backend
        .publish(&topic.partition(2), NewMessage::new("on the new partition"))
        .await
        .unwrap();
    let got = recv(&*sub).await;
    assert_eq!((got.topic.clone(), got.id), (topic.partition(2), id));
}

pub async fn pattern_subscriptions_pick_up_topics_created_later(b: TestBackend) {
    let ns = Namespace::default();
    let early = b.topic("pattern.early");
    b.backend
        .publish(&early, NewMessage::new("one"))
        .await
        .unwrap();
    let unrelated = b.topic("unrelated");
    b.backend
        .publish(&unrelated, NewMessage::new("no"))
        .await
        .unwrap();
    let prefix = regex::escape(&early.as_str().replace("pattern.early", "pattern."));
    let sub = b
        .subscribe(SubscribeRequest {
            topics: TopicSelector::Pattern {
                namespace: ns,
                regex: format!("{prefix}.*"),
            },
            ..SubscribeRequest::new(early.clone(), "pat")
        })
        .await;
    assert_eq!(payloads(&[recv(&*sub).await]), vec!["one"]);
    let late = b.topic("pattern.late");
    b.backend
        .publish(&late, NewMessage::new("two"))
        .await
        .unwrap();
    let got = recv(&*sub).await;
    assert_eq!(
        (got.topic.clone(), payloads(&[got])),
        (late, vec!["two".to_owned()])
    );
    assert_quiet(&*sub).await;
}

/// A topic that appears after a pattern subscription was made holds only
/// what was published after it: the subscription reads it from its first
/// message, whatever its initial position (at `Latest`, messages published
/// before the topic was discovered would be lost).
pub async fn topics_found_later_are_read_from_their_first_message(b: TestBackend) {
    let ns = Namespace::default();
    let anchor = b.topic("found.anchor");
    let prefix = regex::escape(&anchor.as_str().replace("found.anchor", "found."));
    let sub = b
        .subscribe(SubscribeRequest {
            topics: TopicSelector::Pattern {
                namespace: ns,
                regex: format!("{prefix}late"),
            },
            initial_position: StartPosition::Latest,
            ..SubscribeRequest::new(anchor.clone(), "found")
        })
        .await;
    let late = b.topic("found.late");
    publish_n(&b, &late, 3).await;
    let got = recv_n(&*sub, 3).await;
    assert_eq!(
        got.iter().map(|m| m.id.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_quiet(&*sub).await;
}

pub async fn non_durable_subscriptions_leave_nothing_behind(b: TestBackend) {
    let topic = b.topic("nondurable");
    publish_n(&b, &topic, 3).await;
    let req = SubscribeRequest {
        durable: false,
        ..SubscribeRequest::new(topic.clone(), "tmp")
    };
    let sub = b.subscribe(req.clone()).await;
    let got = recv_n(&*sub, 3).await;
    sub.ack_cumulative(&topic, got[2].id).await.unwrap();
    // Closed, not dropped: a drop detaches in the background, and a
    // subscribe racing it could attach to the cursor still there.
    sub.close().await.unwrap();
    let sub = b.subscribe(req).await;
    assert_eq!(
        recv(&*sub).await.id.offset,
        0,
        "a new non-durable cursor starts over"
    );
}

pub async fn unsubscribe_deletes_the_cursor(b: TestBackend) {
    let topic = b.topic("unsubscribe");
    publish_n(&b, &topic, 3).await;
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let got = recv_n(&*sub, 3).await;
    sub.ack_cumulative(&topic, got[2].id).await.unwrap();
    sub.unsubscribe().await.unwrap();
    drop(sub);
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    assert_eq!(
        recv(&*sub).await.id.offset,
        0,
        "the subscription started over"
    );
}

pub async fn metadata_store_compares_and_sets(b: TestBackend) {
    let meta = b.backend.metadata();
    let key = format!("test/{}/a", b.run_id);
    let v1 = meta
        .put(&key, Bytes::from_static(b"1"), ExpectedVersion::Absent)
        .await
        .unwrap();
    let again = meta
        .put(&key, Bytes::from_static(b"x"), ExpectedVersion::Absent)
        .await;
    assert!(matches!(again, Err(BackendError::VersionConflict(_))));
    let v2 = meta
        .put(&key, Bytes::from_static(b"2"), ExpectedVersion::Exactly(v1))
        .await
        .unwrap();
    assert!(v2 > v1);
    let stale = meta
        .put(&key, Bytes::from_static(b"3"), ExpectedVersion::Exactly(v1))
        .await;
    assert!(matches!(stale, Err(BackendError::VersionConflict(_))));
    let got = meta.get(&key).await.unwrap().unwrap();
    assert_eq!((got.value, got.version), (Bytes::from_static(b"2"), v2));
    let sibling = format!("test/{}/b", b.run_id);
    meta.put(&sibling, Bytes::from_static(b"b"), ExpectedVersion::Any)
        .await
        .unwrap();
    let outside = format!("test/{}x", b.run_id);
    meta.put(&outside, Bytes::from_static(b"no"), ExpectedVersion::Any)
        .await
        .unwrap();
    let scanned = meta.scan(&format!("test/{}/", b.run_id)).await.unwrap();
    let keys: Vec<&str> = scanned.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec![key.as_str(), sibling.as_str()]);
    assert!(meta
        .delete(&key, ExpectedVersion::Exactly(v1))
        .await
        .is_err());
    meta.delete(&key, ExpectedVersion::Exactly(v2))
        .await
        .unwrap();
    assert_eq!(meta.get(&key).await.unwrap(), None);
    // Written again, the key does not get back a version read before: a
    // write conditional on the old one fails.
    let v3 = meta
        .put(&key, Bytes::from_static(b"again"), ExpectedVersion::Absent)
        .await
        .unwrap();
    assert!(v3 > v2, "{v3} after {v2}");
    assert!(matches!(
        meta.delete(&key, ExpectedVersion::Exactly(v1)).await,
        Err(BackendError::VersionConflict(_))
    ));
    meta.delete(&key, ExpectedVersion::Exactly(v3))
        .await
        .unwrap();
    let b = b.restart().await;
    let kept = b.backend.metadata().get(&sibling).await.unwrap().unwrap();
    assert_eq!(kept.value, Bytes::from_static(b"b"), "the store is durable");
}

pub async fn deleted_topics_are_gone(b: TestBackend) {
    let topic = b.topic("deleted");
    b.backend.create_topic(&topic, 2).await.unwrap();
    b.backend
        .publish(&topic, NewMessage::new("x").with_key("k"))
        .await
        .unwrap();
    let ns = topic.namespace().clone();
    assert!(b.backend.list_topics(&ns).await.unwrap().contains(&topic));
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    assert!(
        b.backend.delete_topic(&topic).await.is_err(),
        "consumers are connected"
    );
    sub.close().await.unwrap();
    b.backend.delete_topic(&topic).await.unwrap();
    assert_eq!(b.backend.partitions(&topic).await.unwrap(), None);
    assert!(!b.backend.list_topics(&ns).await.unwrap().contains(&topic));
    b.backend.create_topic(&topic, 0).await.unwrap();
    assert_eq!(
        b.backend.offsets(&topic).await.unwrap().next,
        0,
        "a new topic starts empty"
    );
}

pub async fn restart_keeps_messages_topics_and_cursors(b: TestBackend) {
    let topic = b.topic("restart");
    b.backend.create_topic(&topic, 2).await.unwrap();
    for i in 0..20 {
        b.backend
            .publish(
                &topic,
                NewMessage::new(format!("{i}")).with_key(format!("{i}")),
            )
            .await
            .unwrap();
    }
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let got = recv_n(&*sub, 20).await;
    for m in &got[..10] {
        sub.ack(&m.topic, m.id).await.unwrap();
    }
    drop(sub);
    let b = b.restart().await;
    assert_eq!(b.backend.partitions(&topic).await.unwrap(), Some(2));
    let mut total = 0;
    for p in 0..2 {
        total += b.backend.offsets(&topic.partition(p)).await.unwrap().next;
    }
    assert_eq!(total, 20);
    let sub = b.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let rest = recv_n(&*sub, 10).await;
    let acked: HashSet<_> = got[..10].iter().map(|m| (m.topic.clone(), m.id)).collect();
    assert!(rest
        .iter()
        .all(|m| !acked.contains(&(m.topic.clone(), m.id))));
    assert_quiet(&*sub).await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
