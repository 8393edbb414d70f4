//! What a session keeps across its client's connections: QoS 2 exchanges
//! under way, its expiry, a delayed will.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_api::backend::StartPosition;
use gateway_api::topic::{escape_word, Namespace};
use gateway_api::{Backend, NewMessage, SubscribeRequest, TopicName};
use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};
use pulsar_gateway::backend::pulsar::{PulsarBackend, PulsarConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::common::{eventually, test_pulsar_urls, unique, BackendKind, Gateway};
use crate::{paho, payloads, Subscriber};

/// A 3.1.1 CONNECT of `client_id` keeping its session (clean session 0).
fn connect_keeping_session(client_id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x00, 0x00, 0x3c];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// A QoS 2 PUBLISH of `payload` to `topic`, packet id 1.
fn publish_qos_2(topic: &str, payload: &[u8], dup: bool) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&[0x00, 0x01]);
    body.extend_from_slice(payload);
    let mut packet = vec![if dup { 0x3c } else { 0x34 }, body.len() as u8];
    packet.extend(body);
    packet
}

async fn connected(addr: impl ToSocketAddrs, client_id: &str) -> (TcpStream, [u8; 4]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&connect_keeping_session(client_id))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    (stream, connack)
}

async fn expect(stream: &mut TcpStream, packet: [u8; 4], what: &str) {
    let mut got = [0u8; 4];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, packet, "{what}");
}

/// A QoS 2 PUBLISH is stored once although its client, having its PUBREC,
/// lost the connection and sent it again (DUP) on the next one, then
/// released it: a subscriber gets it once, then a later message. The
/// publisher writes raw 3.1.1 packets so the loss falls exactly between
/// PUBREC and PUBREL.
pub async fn qos_2_is_stored_once_across_a_reconnect(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let addr = gw.mqtt_addr.expect("an MQTT listener");
    let topic = unique("once");
    let receiver = Subscriber::start(&gw, "3", &topic, 2);

    let client_id = unique("q2");
    let (mut stream, connack) = connected(addr, &client_id).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "a new session");
    stream
        .write_all(&publish_qos_2(&topic, b"once", false))
        .await
        .unwrap();
    expect(&mut stream, [0x50, 0x02, 0x00, 0x01], "PUBREC").await;
    drop(stream);

    let (mut stream, connack) = connected(addr, &client_id).await;
    assert_eq!(connack, [0x20, 0x02, 0x01, 0x00], "the session is present");
    stream
        .write_all(&publish_qos_2(&topic, b"once", true))
        .await
        .unwrap();
    expect(&mut stream, [0x50, 0x02, 0x00, 0x01], "PUBREC again").await;
    stream.write_all(&[0x62, 0x02, 0x00, 0x01]).await.unwrap();
    expect(&mut stream, [0x70, 0x02, 0x00, 0x01], "PUBCOMP").await;

    assert_eq!(paho(&gw, "3", "publish", &[&topic, "1"]).await, 1);
    let got = receiver.messages().await;
    assert_eq!(payloads(&got), ["once", "m0"], "stored once");
}

/// MQTT 5: a session with a 1 s expiry is gone 3 s after its client left,
/// one whose client set its expiry to 0 at DISCONNECT at once; a will
/// with a delay goes after it, unless its client came back first.
pub async fn sessions_expire_and_wills_wait_their_delay(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let topic = format!("{}/t", unique("expiry"));
    let got = paho(&gw, "5", "expiry", &[&topic, &unique("brief")]).await;
    assert_eq!(got, json!({"present": false}));
    // Set to 0 at DISCONNECT, it ends then, even when the client connects
    // again at once (its old connection, taken over, still handles the
    // DISCONNECT it had been sent).
    let got = paho(&gw, "5", "endnow", &[&topic, &unique("ender")]).await;
    assert_eq!(got, json!({"kept": true, "present": false}));

    let topic = format!("{}/status", unique("willdelay"));
    let got = paho(&gw, "5", "willdelay", &[&topic, &unique("delayed")]).await;
    assert_eq!(got["got"], json!(["late", "marker"]));
    let after = got["late_after"].as_f64().unwrap();
    assert!(after >= 0.9, "the delayed will came after {after} s");
}

/// A persistent session whose client left before its gateway stopped ends
/// on time all the same: the gateway started next (serving MQTT over
/// WebSocket only) ends it at the expiry stored with it, no client coming
/// back, and its durable subscription is gone (a message published while the client was away is not kept for
/// the next session of that name).
pub async fn a_session_ends_on_time_across_a_restart(backend: BackendKind) {
    let data = tempfile::tempdir().expect("a data directory");
    let topic = unique("restart-expiry");
    let client_id = unique("away");

    let mut first = Gateway::builder(backend)
        .data_dir(data.path())
        .start()
        .await;
    let left = paho(&first, "5", "away", &[&topic, &client_id, "10"]).await;
    assert_eq!(left, json!({"left": true}));
    assert_eq!(paho(&first, "5", "publish", &[&topic, "1"]).await, 1);
    connections_ended(&first).await;
    first.terminate();
    assert!(
        first.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the first gateway stops"
    );

    // Without an MQTT listener of its own (MQTT over WebSocket only), it
    // ends the sessions all the same.
    let mut second = Gateway::builder(backend)
        .data_dir(data.path())
        .arg("--mqtt-addr")
        .arg("off")
        .start()
        .await;
    assert_eq!(second.mqtt_addr, None);
    let subscription = format!("mqtt.{}.{}", escape_word(&client_id), escape_word(&topic));
    let ended = session_ended(
        backend,
        &second,
        &client_id,
        &topic,
        Duration::from_secs(40),
    )
    .await;
    assert!(
        ended,
        "the session ended:\n{}\n--- the first gateway:\n{}",
        second.output(),
        first.output()
    );
    second.terminate();
    assert!(second.wait_exit(Duration::from_secs(20)).await.is_some());

    // The session's subscription, asked for again from the latest message,
    // starts there: the one that held "m0" was deleted.
    let backend: Arc<dyn Backend> = match backend {
        BackendKind::Embedded => Arc::new(
            EmbeddedBackend::open(EmbeddedConfig::new(data.path()))
                .await
                .expect("the gateway's store opens"),
        ),
        BackendKind::Pulsar => {
            let (url, web_url) = test_pulsar_urls();
            Arc::new(
                PulsarBackend::connect(PulsarConfig::new(url, web_url))
                    .await
                    .expect("the test Pulsar"),
            )
        }
    };
    let name = TopicName::from_mqtt(&topic, &Namespace::default()).expect("a topic name");
    let request = SubscribeRequest {
        initial_position: StartPosition::Latest,
        ..SubscribeRequest::new(name.clone(), subscription)
    };
    let session = backend.subscribe(request).await.expect("subscribe");
    backend
        .publish(&name, NewMessage::new("fresh"))
        .await
        .expect("publish");
    let first_read = tokio::time::timeout(Duration::from_secs(30), session.receive())
        .await
        .expect("a message within 30 s")
        .expect("receive");
    assert_eq!(first_read.payload.as_ref(), b"fresh");
    let _ = session.unsubscribe().await;
    let _ = backend.close().await;
}

/// Whether the session of `client_id`, subscribed to `topic`, ends
/// `within`: `gw` logs it (embedded), or its subscription is gone from
/// Pulsar (any gateway started since on the shared standalone may be the
/// one that ends it: what shows is Pulsar's own state).
async fn session_ended(
    backend: BackendKind,
    gw: &Gateway,
    client_id: &str,
    topic: &str,
    within: Duration,
) -> bool {
    let subscription = format!("mqtt.{}.{}", escape_word(client_id), escape_word(topic));
    eventually(within, || async {
        match backend {
            BackendKind::Embedded => gw
                .output()
                .lines()
                .any(|line| line.contains("session expired") && line.contains(client_id)),
            BackendKind::Pulsar => !pulsar_subscriptions(topic).await.contains(&subscription),
        }
    })
    .await
}

/// A rumqttc MQTT 5 client of `client_id` keeping its session
/// (`expiry_secs`), connected to `gw` and, with `topic`, subscribed to it
/// at QoS 1; whether the gateway had its session.
async fn keeping_session(
    gw: &Gateway,
    client_id: &str,
    expiry_secs: u32,
    topic: Option<&str>,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop, bool) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let addr = gw.mqtt_addr.expect("an MQTT listener");
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(expiry_secs));
    let (client, mut events) = AsyncClient::new(options, 10);
    if let Some(topic) = topic {
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
    }
    let mut present = None;
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.poll().await.expect("the MQTT connection") {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    present = Some(ack.session_present);
                    if topic.is_none() {
                        return;
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(done.is_ok(), "connected (and subscribed) within 20 s");
    (client, events, present.expect("a CONNACK"))
}

/// MQTT 5: the session of a client connected to a gateway that died
/// (killed: it wrote no end time) ends once another gateway finds the
/// first one gone, its expiry interval after that; a session that lasts
/// longer is still there for its client.
pub async fn a_session_held_by_a_gateway_that_died_ends(backend: BackendKind) {
    let data = tempfile::tempdir().expect("a data directory");
    let topic = unique("orphan");
    let (brief, lasting) = (unique("orphan-brief"), unique("orphan-lasting"));

    let mut first = Gateway::builder(backend)
        .data_dir(data.path())
        .start()
        .await;
    let held_brief = keeping_session(&first, &brief, 2, Some(&topic)).await;
    let held_lasting = keeping_session(&first, &lasting, 3600, Some(&topic)).await;
    first.kill();
    assert!(
        first.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the first gateway is gone"
    );
    drop((held_brief, held_lasting));

    let second = Gateway::builder(backend)
        .data_dir(data.path())
        .start()
        .await;
    let ended = session_ended(backend, &second, &brief, &topic, Duration::from_secs(60)).await;
    assert!(
        ended,
        "the brief session ended:\n{}\n--- the first gateway:\n{}",
        second.output(),
        first.output()
    );
    let (_, _, present) = keeping_session(&second, &lasting, 3600, None).await;
    assert!(present, "the lasting session is kept:\n{}", second.output());
    let (_, _, present) = keeping_session(&second, &brief, 2, None).await;
    assert!(!present, "the brief one is not");
}

/// MQTT 5: a delayed will whose gateway stopped before the delay ran out
/// is published by the next gateway, as the retained message its Will
/// Retain flag asked for.
pub async fn a_delayed_will_goes_out_across_a_restart(backend: BackendKind) {
    let data = tempfile::tempdir().expect("a data directory");
    let start = || Gateway::builder(backend).data_dir(data.path()).start();
    let topic = format!("{}/status", unique("restart-will"));

    let mut first = start().await;
    let left = paho(&first, "5", "leave", &[&topic, &unique("leaver"), "8"]).await;
    let was_left = Instant::now();
    assert_eq!(left, json!({"left": true}));
    // Stopped once it saw the connection end (stopping first would end
    // it without a will).
    connections_ended(&first).await;
    first.terminate();
    assert!(
        first.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the first gateway stops"
    );

    let second = start().await;
    // Subscribed before the delay ran out, or after (then the will comes
    // as the retained message): either way it comes.
    let got = Subscriber::start(&second, "5", &topic, 1).messages().await;
    assert_eq!(payloads(&got), ["gone"], "{}", second.output());
    let after = was_left.elapsed();
    assert!(
        after >= Duration::from_secs(7),
        "the will waited its delay: {after:?}"
    );
    let later = Subscriber::start(&second, "5", &topic, 1).messages().await;
    assert_eq!(payloads(&later), ["gone"]);
    assert_eq!(later[0]["retain"], json!(true), "kept as retained");
}

/// The subscriptions of `topic` (public/default) on the test standalone,
/// through Pulsar's admin API.
async fn pulsar_subscriptions(topic: &str) -> Vec<String> {
    let (_, web_url) = test_pulsar_urls();
    let url = format!("{web_url}/admin/v2/persistent/public/default/{topic}/subscriptions");
    tokio::task::spawn_blocking(move || {
        let body = ureq::get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url} answered {body}: {e}"))
    })
    .await
    .expect("the admin request")
}

/// Waits until `gw` has no MQTT connection open.
async fn connections_ended(gw: &Gateway) {
    let ended = eventually(Duration::from_secs(20), || async {
        gw.gauge("connections", r#"protocol="mqtt""#).await == 0
    })
    .await;
    assert!(ended, "the MQTT connections ended:\n{}", gw.output());
}

/// On Pulsar, two gateways on one cluster: a client whose session one
/// gateway holds connects through the other (its first connection still
/// open, as a half-open one would be). The first gateway takes its
/// connection over (MQTT 5: DISCONNECT 0x8E), the second resumes the
/// session, and the session's subscription, free again, delivers there.
pub async fn a_session_moves_to_another_gateway() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{ConnectionError, Event, StateError};

    let first = Gateway::start(BackendKind::Pulsar).await;
    let second = Gateway::start(BackendKind::Pulsar).await;
    let topic = unique("moving");
    let client_id = unique("mover");
    let (_old, mut old_events, present) =
        keeping_session(&first, &client_id, 3600, Some(&topic)).await;
    assert!(!present, "a new session");
    let told = tokio::spawn(async move {
        loop {
            match old_events.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(d))) => return Some(d.reason_code),
                Ok(_) => {}
                // rumqttc reports the server's DISCONNECT as an error.
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return Some(reason_code),
                Err(e) => panic!("the first connection: {e}"),
            }
        }
    });

    let (new, mut events, present) = keeping_session(&second, &client_id, 3600, None).await;
    assert!(
        present,
        "the session resumed through the second gateway:\n{}\n--- the first:\n{}",
        second.output(),
        first.output()
    );
    let reason = tokio::time::timeout(Duration::from_secs(20), told)
        .await
        .expect("the first connection ends")
        .unwrap();
    assert_eq!(reason, Some(DisconnectReasonCode::SessionTakenOver));

    new.publish(&topic, QoS::AtLeastOnce, false, "moved")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = events.poll().await.expect("the MQTT connection");
            if let Event::Incoming(Packet::Publish(p)) = event {
                return p.payload;
            }
        }
    })
    .await
    .expect("the session's subscription delivers through the second gateway");
    assert_eq!(&got[..], b"moved");
}
