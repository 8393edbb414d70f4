//! What a client cannot do to the gateway: send a packet over the size
//! limit, bytes that are not MQTT, or nothing at all. Each only closes its
//! own connection (MQTT 5: with the reason), and a client connected
//! meanwhile goes on. These clients write raw bytes on purpose: no MQTT
//! library sends malformed packets.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{unique, BackendKind, Gateway};
use crate::paho;

/// How long a closed connection may take to be seen closed.
const WAIT: Duration = Duration::from_secs(20);

/// An MQTT 5 CONNECT of client id `a`, clean start, keep-alive 60 s.
const CONNECT_V5: &[u8] = &[
    0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x01, b'a',
];

/// Reads until the gateway closes the connection; what it sent.
async fn read_to_close(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await
        .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
    got
}

/// A paho client publishes and receives after the bad connection closed.
async fn others_go_on(gw: &Gateway) {
    let base = unique("unaffected");
    let got = paho(gw, "5", "pubsub", &[&base]).await;
    assert_eq!(got.as_array().map(Vec::len), Some(3));
}

/// A PUBLISH declaring more than `--mqtt-max-packet-size` is refused
/// from its fixed header: DISCONNECT 0x95 (packet too large), closed.
pub async fn an_oversized_packet_closes_its_connection(backend: BackendKind) {
    let gw = Gateway::builder(backend)
        .arg("--mqtt-max-packet-size")
        .arg("65536")
        .start()
        .await;
    let addr = gw.mqtt_addr.expect("an MQTT listener");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(CONNECT_V5).await.unwrap();
    let mut connack = [0u8; 2];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; usize::from(connack[1])];
    stream.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest[1], 0x00, "accepted");
    // PUBLISH QoS 0, remaining length 2 MiB (varint 80 80 80 01), topic "t".
    stream
        .write_all(&[0x30, 0x80, 0x80, 0x80, 0x01, 0x00, 0x01, b't'])
        .await
        .unwrap();
    let got = read_to_close(&mut stream, "an oversized PUBLISH").await;
    assert_eq!(got.first(), Some(&0xE0), "a DISCONNECT: {got:02x?}");
    assert_eq!(got.get(2), Some(&0x95), "packet too large: {got:02x?}");
    others_go_on(&gw).await;
}

/// Bytes that are no MQTT close the connection; so do a CONNECT of an
/// unknown protocol level (answered 3.1.1's "unacceptable protocol
/// version" first) and a second CONNECT.
pub async fn malformed_packets_close_their_connection(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let addr = gw.mqtt_addr.expect("an MQTT listener");

    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut garbage, "HTTP on the MQTT port")
        .await
        .is_empty());

    let mut level_9 = TcpStream::connect(addr).await.unwrap();
    let mut connect = CONNECT_V5.to_vec();
    connect[8] = 9;
    level_9.write_all(&connect).await.unwrap();
    let got = read_to_close(&mut level_9, "protocol level 9").await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x01], "CONNACK 0x01");

    let mut twice = TcpStream::connect(addr).await.unwrap();
    twice.write_all(CONNECT_V5).await.unwrap();
    twice.write_all(CONNECT_V5).await.unwrap();
    let got = read_to_close(&mut twice, "a second CONNECT").await;
    // CONNACK, then DISCONNECT 0x82 (protocol error).
    let disconnect = got.iter().position(|&b| b == 0xE0).map(|i| &got[i..]);
    assert_eq!(disconnect.and_then(|d| d.get(2)), Some(&0x82), "{got:02x?}");
    others_go_on(&gw).await;
}

/// A connection that sends no CONNECT is closed after the connect
/// timeout.
pub async fn a_silent_connection_is_closed(backend: BackendKind) {
    let gw = Gateway::builder(backend)
        .arg("--mqtt-connect-timeout")
        .arg("1s")
        .start()
        .await;
    let addr = gw.mqtt_addr.expect("an MQTT listener");
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(read_to_close(&mut silent, "a silent connection")
        .await
        .is_empty());
    others_go_on(&gw).await;
}

/// A connection subscribes at most `--mqtt-max-subscriptions` filters:
/// past it SUBACK refuses the filter (MQTT 5: 0x97 quota exceeded) and
/// the ones granted work.
pub async fn subscriptions_per_connection_are_bounded(backend: BackendKind) {
    let gw = Gateway::builder(backend)
        .arg("--mqtt-max-subscriptions")
        .arg("2")
        .start()
        .await;
    let base = unique("quota");
    let got = paho(&gw, "5", "quota", &[&base, "3"]).await;
    assert_eq!(
        got,
        serde_json::json!({"codes": [1, 1, 0x97], "received": "hello"})
    );
}
