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
