//! rumqttc, the Rust MQTT client, at its default settings: MQTT 3.1.1 and
//! 5 round trips through the gateway, over TCP and WebSocket.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, Transport};

use crate::common::{unique, BackendKind, Gateway};

/// How long a test waits for what the gateway owes it.
const WAIT: Duration = Duration::from_secs(30);

/// Polls `events` until `wanted` picks something out of one, failing the
/// test after [`WAIT`].
async fn until<T>(
    events: &mut EventLoop,
    what: &str,
    mut wanted: impl FnMut(&Incoming) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: nothing within {WAIT:?}"),
        };
        if let Event::Incoming(incoming) = event {
            if let Some(found) = wanted(&incoming) {
                return found;
            }
        }
    }
}

/// Over TCP: see [`round_trip`].
pub async fn rumqttc_round_trip(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    round_trip(tcp(&gw, "sub"), tcp(&gw, "pub")).await;
}

/// Over WebSocket (`ws://…/mqtt` on the HTTP listener, rumqttc's
/// `websocket` feature): a subscriber over WebSocket gets what a publisher
/// over TCP sends, as in [`round_trip`].
pub async fn rumqttc_over_websocket(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let http = gw.http_addr.expect("an HTTP listener");
    let mut websocket =
        MqttOptions::new(unique("ws-sub"), format!("ws://{http}/mqtt"), http.port());
    websocket.set_transport(Transport::Ws);
    round_trip(websocket, tcp(&gw, "pub")).await;
}

/// Options of a client of `gw`'s MQTT listener, with a fresh id.
fn tcp(gw: &Gateway, id: &str) -> MqttOptions {
    let addr = gw.mqtt_addr.expect("an MQTT listener");
    MqttOptions::new(unique(id), addr.ip().to_string(), addr.port())
}

/// A subscriber of `base/#` and a publisher of ten QoS 1 messages over two
/// topics under it: the subscriber gets each topic's messages in order.
async fn round_trip(subscriber: MqttOptions, publisher: MqttOptions) {
    let base = unique("rumqttc");
    let (subscriber, mut sub_events) = AsyncClient::new(subscriber, 16);
    subscriber
        .subscribe(format!("{base}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    until(&mut sub_events, "SUBACK", |i| {
        matches!(i, Incoming::SubAck(_)).then_some(())
    })
    .await;

    let (publisher, mut pub_events) = AsyncClient::new(publisher, 16);
    for i in 0..10 {
        publisher
            .publish(
                format!("{base}/dev/{}", i % 2),
                QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    until(&mut pub_events, "ten PUBACKs", |i| {
        acked += usize::from(matches!(i, Incoming::PubAck(_)));
        (acked == 10).then_some(())
    })
    .await;

    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut count = 0;
    until(&mut sub_events, "ten messages", |i| {
        if let Incoming::Publish(p) = i {
            let topic = p.topic.clone();
            let payload = String::from_utf8_lossy(&p.payload).into_owned();
            got.entry(topic).or_default().push(payload);
            count += 1;
        }
        (count == 10).then_some(())
    })
    .await;
    let expected: BTreeMap<String, Vec<String>> = [
        (format!("{base}/dev/0"), ["0", "2", "4", "6", "8"]),
        (format!("{base}/dev/1"), ["1", "3", "5", "7", "9"]),
    ]
    .into_iter()
    .map(|(t, p)| (t, p.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(got, expected);
}

/// The same over MQTT 5, with a user property carried through.
pub async fn rumqttc_v5_round_trip(backend: BackendKind) {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let gw = Gateway::start(backend).await;
    let addr = gw.mqtt_addr.expect("an MQTT listener");
    let topic = format!("{}/v5", unique("rumqttc"));
    let options = |id: &str| MqttOptions::new(unique(id), addr.ip().to_string(), addr.port());
    let (subscriber, mut sub_events) = AsyncClient::new(options("sub5"), 16);
    subscriber
        .subscribe(&topic, QoS5::ExactlyOnce)
        .await
        .unwrap();
    let (publisher, mut pub_events) = AsyncClient::new(options("pub5"), 16);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut subscribed = false;
    while !subscribed {
        let event = tokio::time::timeout_at(deadline, sub_events.poll())
            .await
            .expect("SUBACK in time")
            .unwrap();
        subscribed = matches!(event, Event::Incoming(Packet::SubAck(_)));
    }
    let properties = PublishProperties {
        user_properties: vec![("site".into(), "north".into())],
        ..PublishProperties::default()
    };
    publisher
        .publish_with_properties(&topic, QoS5::ExactlyOnce, false, "hello", properties)
        .await
        .unwrap();
    let published = tokio::spawn(async move {
        loop {
            match pub_events.poll().await {
                Ok(Event::Incoming(Packet::PubComp(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    let got = loop {
        let event = tokio::time::timeout_at(deadline, sub_events.poll())
            .await
            .expect("the message in time")
            .unwrap();
        if let Event::Incoming(Packet::Publish(p)) = event {
            break p;
        }
    };
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(got.qos, QoS5::ExactlyOnce);
    let user = got
        .properties
        .map(|p| p.user_properties)
        .unwrap_or_default();
    assert_eq!(user, vec![("site".to_owned(), "north".to_owned())]);
    tokio::time::timeout_at(deadline, published)
        .await
        .expect("PUBCOMP in time")
        .unwrap();
}

/// MQTT 5 topic aliases the gateway sets: a client that accepts two
/// (Topic Alias Maximum 2) receives deliveries from three topics; two of
/// the topics get an alias, sent with the name the first time and alone
/// after, the third always comes by name. A client that accepts none
/// (rumqttc's default) sees no alias. rumqttc reports each PUBLISH as it
/// came off the wire, before resolving its alias, so the test sees what
/// was sent.
pub async fn rumqttc_v5_receives_topic_aliases(backend: BackendKind) {
    use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
    use tokio::time::Instant;

    /// The next packet `events` brings, failing the test past `deadline`.
    async fn incoming(events: &mut EventLoop, who: &str, deadline: Instant) -> Packet {
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(packet))) => return packet,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("{who}: {e}"),
                Err(_) => panic!("{who}: nothing within {WAIT:?}"),
            }
        }
    }

    /// Waits for `n` PUBLISHes on `events`.
    async fn publishes(events: &mut EventLoop, who: &str, n: usize) -> Vec<Publish> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            if let Packet::Publish(p) = incoming(events, who, deadline).await {
                got.push(p);
            }
        }
        got
    }

    let gw = Gateway::start(backend).await;
    let addr = gw.mqtt_addr.expect("an MQTT listener");
    let base = unique("aliases");
    let filter = format!("{base}/#");
    let options = |id: &str| MqttOptions::new(unique(id), addr.ip().to_string(), addr.port());
    let mut aliasing = options("alias-sub");
    aliasing.set_topic_alias_max(Some(2));
    let mut subscribers = Vec::new();
    for opts in [aliasing, options("plain-sub")] {
        let (client, mut events) = AsyncClient::new(opts, 64);
        client.subscribe(&filter, QoS5::AtLeastOnce).await.unwrap();
        let deadline = Instant::now() + WAIT;
        while !matches!(
            incoming(&mut events, "a subscriber", deadline).await,
            Packet::SubAck(_)
        ) {}
        subscribers.push((client, events));
    }
    let (publisher, mut pub_events) = AsyncClient::new(options("alias-pub"), 64);
    let topics = ["a", "b", "c"];
    let rounds = 3;
    for round in 0..rounds {
        for t in topics {
            let payload = format!("{t} {round}");
            publisher
                .publish(format!("{base}/{t}"), QoS5::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    }
    let total = topics.len() * rounds;
    let publishing = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match pub_events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    let mut plain = subscribers.pop().expect("two subscribers");
    let mut aliased = subscribers.pop().expect("two subscribers");
    for p in publishes(&mut plain.1, "the subscriber without aliases", total).await {
        let alias = p.properties.as_ref().and_then(|pp| pp.topic_alias);
        assert_eq!(alias, None, "no alias to a client that accepts none");
        let (t, _) = std::str::from_utf8(&p.payload)
            .unwrap()
            .split_once(' ')
            .unwrap();
        assert_eq!(p.topic, format!("{base}/{t}").as_bytes());
    }
    // What each alias stands for, as the client learns it; then which
    // topics came by alias, and how.
    let mut learned: BTreeMap<u16, String> = BTreeMap::new();
    let mut by_alias_alone = 0;
    let mut by_name_only: BTreeMap<String, usize> = BTreeMap::new();
    for p in publishes(&mut aliased.1, "the subscriber with aliases", total).await {
        let (t, _) = std::str::from_utf8(&p.payload)
            .unwrap()
            .split_once(' ')
            .unwrap();
        let expected = format!("{base}/{t}");
        let alias = p.properties.as_ref().and_then(|pp| pp.topic_alias);
        let topic = String::from_utf8(p.topic.to_vec()).unwrap();
        match alias {
            Some(alias) if topic.is_empty() => {
                by_alias_alone += 1;
                assert_eq!(learned.get(&alias), Some(&expected), "alias {alias} alone");
            }
            Some(alias) => {
                assert!(
                    (1..=2).contains(&alias),
                    "alias {alias} within the client's 2"
                );
                assert_eq!(topic, expected);
                let before = learned.insert(alias, topic);
                assert!(before.is_none(), "alias {alias} set once");
            }
            None => {
                assert_eq!(topic, expected);
                *by_name_only.entry(topic).or_default() += 1;
            }
        }
    }
    assert_eq!(learned.len(), 2, "both aliases the client accepts used");
    assert_eq!(
        by_alias_alone,
        2 * (rounds - 1),
        "after their first message, aliased topics come by alias alone"
    );
    assert_eq!(
        by_name_only.values().copied().collect::<Vec<_>>(),
        [rounds],
        "the third topic always comes by name: {by_name_only:?}"
    );
    tokio::time::timeout(WAIT, publishing)
        .await
        .expect("PUBACKs in time")
        .unwrap();
}
