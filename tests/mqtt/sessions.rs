//! What a session keeps across its client's connections: QoS 2 exchanges
//! under way, its expiry, a delayed will.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::common::{unique, BackendKind, Gateway};
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

/// MQTT 5: a session with a 1 s expiry is gone 3 s after its client left;
/// a will with a delay goes after it, unless its client came back first.
pub async fn sessions_expire_and_wills_wait_their_delay(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let topic = format!("{}/t", unique("expiry"));
    let got = paho(&gw, "5", "expiry", &[&topic, &unique("brief")]).await;
    assert_eq!(got, json!({"present": false}));

    let topic = format!("{}/status", unique("willdelay"));
    let got = paho(&gw, "5", "willdelay", &[&topic, &unique("delayed")]).await;
    assert_eq!(got["got"], json!(["late", "marker"]));
    let after = got["late_after"].as_f64().unwrap();
    assert!(after >= 0.9, "the delayed will came after {after} s");
}
