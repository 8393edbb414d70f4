//! MQTT end to end: paho-mqtt (Python), rumqttc (Rust) and Mosquitto's
//! command-line clients at their default settings against the gateway
//! process, over MQTT 3.1.1 and 5, on TCP and WebSocket, on both backends;
//! what MQTT clients publish read by Kafka clients, and the reverse; the
//! limits a client cannot pass.

mod common;
#[path = "mqtt/limits.rs"]
mod limits;
#[path = "mqtt/mosquitto.rs"]
mod mosquitto;
#[path = "mqtt/rumqttc_client.rs"]
mod rumqttc_client;
#[path = "mqtt/sessions.rs"]
mod sessions;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::tokens::{random_secret, token};
use common::{client_script, python, run_json, unique, BackendKind, Gateway};
use limits::{
    a_silent_connection_is_closed, an_oversized_packet_closes_its_connection,
    malformed_packets_close_their_connection, subscriptions_per_connection_are_bounded,
};
use mosquitto::mosquitto_clients_publish_and_subscribe;
use rumqttc_client::{
    rumqttc_over_websocket, rumqttc_round_trip, rumqttc_v5_receives_topic_aliases,
    rumqttc_v5_round_trip,
};
use serde_json::{json, Value};
use sessions::{
    a_delayed_will_goes_out_across_a_restart, a_session_ends_on_time_across_a_restart,
    a_session_held_by_a_gateway_that_died_ends, a_session_moves_to_another_gateway,
    qos_2_is_stored_once_across_a_reconnect, sessions_expire_and_wills_wait_their_delay,
};

/// Runs a scenario of `paho_mqtt.py` against `gw`; its JSON.
pub(crate) async fn paho(gw: &Gateway, version: &str, scenario: &str, args: &[&str]) -> Value {
    run_json(
        format!("paho_mqtt.py {scenario} (MQTT {version}) {args:?}"),
        paho_command(gw, version, scenario, args),
    )
    .await
}

/// `version` is "3" or "5", with "ws" after it for MQTT over WebSocket
/// (on the HTTP port).
pub(crate) fn paho_command(gw: &Gateway, version: &str, scenario: &str, args: &[&str]) -> Command {
    let addr = if version.ends_with("ws") {
        gw.http_addr.expect("an HTTP listener")
    } else {
        gw.mqtt_addr.expect("an MQTT listener")
    };
    let mut command = Command::new(python());
    command
        .arg(client_script("paho_mqtt.py"))
        .arg(scenario)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(version)
        .args(args);
    command
}

/// A paho subscriber (`paho_mqtt.py receive`) in the background: started
/// and subscribed, then waited for with what it received.
pub(crate) struct Subscriber {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Subscriber {
    /// Starts one on `topic` and returns once it is subscribed.
    pub(crate) fn start(gw: &Gateway, version: &str, topic: &str, count: usize) -> Subscriber {
        let mut child = paho_command(gw, version, "receive", &[topic, &count.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("paho_mqtt.py starts");
        let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
        let first = tokio::task::block_in_place(|| lines.next());
        assert_eq!(first.and_then(Result::ok).as_deref(), Some("subscribed"));
        Subscriber { child, lines }
    }

    /// Waits for it to end: the messages it got (fails the test if it
    /// did not get them all).
    pub(crate) async fn messages(self) -> Value {
        let Subscriber { mut child, lines } = self;
        let (got, status) = tokio::task::spawn_blocking(move || {
            let got = lines.map_while(Result::ok).last().unwrap_or_default();
            (got, child.wait())
        })
        .await
        .expect("the subscriber's wait");
        assert!(
            status.is_ok_and(|s| s.success()),
            "the MQTT subscriber failed: {got}"
        );
        serde_json::from_str(&got).expect("the subscriber's JSON")
    }
}

/// The `key` string of each object of a JSON list.
pub(crate) fn field<'a>(list: &'a Value, key: &str) -> Vec<&'a str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|m| m[key].as_str().unwrap_or_else(|| panic!("no {key} in {m}")))
        .collect()
}

/// The payloads of the messages a paho scenario printed.
pub(crate) fn payloads(messages: &Value) -> Vec<&str> {
    field(messages, "payload")
}

/// Runs a client program of tests/clients to its end; its JSON.
async fn client(script: &str, args: &[&str]) -> Value {
    let mut command = Command::new(python());
    command.arg(client_script(script)).args(args);
    run_json(format!("{script} {args:?}"), command).await
}

/// A publisher at QoS 0, 1 and 2 and a subscriber of `base/+/temp` at QoS
/// 2: the subscriber gets all three, in order, each at the QoS it was
/// published with, and the backend stored three.
async fn each_qos_reaches_a_wildcard_subscriber(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    for version in ["3", "5"] {
        let base = unique(&format!("qos-v{version}"));
        let got = paho(&gw, version, "pubsub", &[&base]).await;
        assert_eq!(payloads(&got), ["q0", "q1", "q2"], "MQTT {version}");
        for (qos, message) in got.as_array().unwrap().iter().enumerate() {
            assert_eq!(message["topic"], format!("{base}/room1/temp"));
            // The lower of the publisher's QoS and the subscriber's (2).
            assert_eq!(message["qos"], qos, "MQTT {version}");
        }
        if version == "5" {
            assert_eq!(got[1]["props"], json!([["k", "v"]]), "user properties");
            assert_eq!(got[2]["ContentType"], "text/plain");
            assert_eq!(got[2]["ResponseTopic"], "replies/1");
            assert_eq!(got[2]["CorrelationData"], "01fe");
        }
        let labels =
            format!("protocol=\"mqtt\",topic=\"persistent://public/default/{base}.room1.temp\"");
        assert_eq!(gw.counter("messages_in", &labels).await, 3);
    }
}

/// MQTT over WebSocket (`/mqtt` on the HTTP port): the same QoS levels
/// and sessions as over TCP, and a client id taken over from TCP.
async fn mqtt_over_websocket(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    for version in ["3ws", "5ws"] {
        let base = unique(&format!("ws-v{version}"));
        let got = paho(&gw, version, "pubsub", &[&base]).await;
        assert_eq!(payloads(&got), ["q0", "q1", "q2"], "MQTT {version}");
        let topic = format!("{base}/inbox");
        let got = paho(&gw, version, "session", &[&topic, &unique("ws-device")]).await;
        assert_eq!(got["payloads"], json!(["m0", "m1", "m2", "m3", "m4"]));
    }
}

/// MQTT 5 subscription options and topic aliases: No Local keeps a
/// client's own messages from it, Retain As Published keeps the retain
/// flag, the Subscription Identifier comes back with each delivery, and a
/// topic alias set by one PUBLISH names the topic of the next.
async fn mqtt_5_subscription_options_and_topic_aliases(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let base = unique("v5options");
    let got = paho(&gw, "5", "v5options", &[&base]).await;
    let seen = |who: &str| -> Vec<(String, String, bool)> {
        got[who]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let topic = m["topic"].as_str().unwrap();
                let suffix = topic.rsplit('/').next().unwrap().to_owned();
                let payload = m["payload"].as_str().unwrap().to_owned();
                (suffix, payload, m["retain"].as_bool().unwrap())
            })
            .collect()
    };
    let mut a = seen("a");
    a.sort();
    assert_eq!(
        a,
        [
            ("x".into(), "marker".into(), false),
            ("y".into(), "kept".into(), true),
        ],
        "No Local and Retain As Published"
    );
    for m in got["a"].as_array().unwrap() {
        assert_eq!(m["SubscriptionIdentifier"], json!([7]));
    }
    let c: Vec<_> = seen("c")
        .into_iter()
        .filter(|(topic, _, _)| topic == "z")
        .map(|(_, payload, retain)| (payload, retain))
        .collect();
    assert_eq!(
        c,
        [("aliased1".into(), false), ("aliased2".into(), false)],
        "a topic alias names the topic"
    );
}

/// A new subscription gets the retained message of each topic it matches
/// (flagged retained) before what is published after it (not flagged); a
/// retained message with an empty payload cleared its topic's.
async fn retained_messages_greet_new_subscriptions(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    for version in ["3", "5"] {
        let base = unique(&format!("retained-v{version}"));
        let got = paho(&gw, version, "retained", &[&base]).await;
        assert_eq!(
            got,
            json!([
                {"payload": "21.5", "retain": true},
                {"payload": "live", "retain": false},
            ]),
            "MQTT {version}"
        );
    }
}

/// A subscriber slower than its publisher loses nothing: 3000 QoS 1
/// messages sent at once (three times Mosquitto's default queue of a
/// subscriber) all reach it, in order; the backlog waits in the backend.
async fn a_slow_subscriber_loses_nothing(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let topic = format!("{}/firehose", unique("slow"));
    let got = paho(&gw, "3", "slow", &[&topic, "3000"]).await;
    assert_eq!(got, json!({"distinct": 3000, "in_order": true}));
}

/// A client keeping a session subscribes, leaves, and on its return gets
/// what was published meanwhile, in order, without subscribing again; a
/// clean start then ends the session.
async fn a_session_keeps_what_was_published_while_away(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    for version in ["3", "5"] {
        let topic = format!("{}/inbox", unique(&format!("session-v{version}")));
        let client = unique("device");
        let got = paho(&gw, version, "session", &[&topic, &client]).await;
        assert_eq!(
            got["present"],
            json!([false, true, false]),
            "MQTT {version}"
        );
        assert_eq!(got["payloads"], json!(["m0", "m1", "m2", "m3", "m4"]));
    }
}

/// The will is published when a client's connection is lost, not when it
/// disconnects: a subscriber gets "gone", then the marker published after
/// the clean disconnect, and no "kept".
async fn the_will_goes_on_a_lost_connection_only(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    for version in ["3", "5"] {
        let topic = format!("{}/status", unique(&format!("will-v{version}")));
        let got = paho(&gw, version, "will", &[&topic]).await;
        assert_eq!(got, json!(["gone", "marker"]), "MQTT {version}");
    }
}

/// Keep-alive (MQTT 3.1.1 and 5): a client silent for 1.5 times its
/// keep-alive is disconnected and its will published; a client that
/// keeps pinging stays connected.
async fn a_silent_client_is_dropped_after_its_keep_alive(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    for version in ["3", "5"] {
        let topic = format!("{}/status", unique(&format!("keepalive-v{version}")));
        let got = paho(&gw, version, "keepalive", &[&topic]).await;
        assert_eq!(got["will"], json!("silent"), "MQTT {version}: {got}");
        let after = got["will_after"].as_f64().unwrap_or_default();
        assert!(
            (1.4..10.0).contains(&after),
            "MQTT {version}: the will came {after} s after the CONNECT, not 1.5 s"
        );
        assert_eq!(got["then"], json!("pinging"), "MQTT {version}: {got}");
        assert_eq!(got["still_connected"], json!(true), "MQTT {version}: {got}");
    }
}

/// A QoS 1 delivery the client did not acknowledge before its connection
/// was lost comes again on its session's next connection, with DUP set
/// and the packet id it had (MQTT 4.4; paho with manual acks).
async fn an_unacknowledged_delivery_comes_again_with_its_packet_id(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    for version in ["3", "5"] {
        let topic = format!("{}/cmd", unique(&format!("redeliver-v{version}")));
        let id = unique("redeliver");
        let got = paho(&gw, version, "redeliver", &[&topic, &id]).await;
        let first_id = &got[0][1];
        assert_ne!(
            first_id,
            &json!(1),
            "MQTT {version}: the id a new connection gives first"
        );
        assert_eq!(got[0], json!(["again", first_id, false]), "MQTT {version}");
        assert_eq!(got[1], json!(["again", first_id, true]), "MQTT {version}");
    }
}

/// A second connection with a client id in use takes it over: the first
/// is disconnected (MQTT 5: reason 0x8E, session taken over).
async fn a_second_connection_takes_the_client_id_over(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let got = paho(&gw, "5", "takeover", &[&unique("twin")]).await;
    assert_eq!(got["first_disconnected"], 0x8E);
    // 3.1.1 has no DISCONNECT from the server: the connection closes.
    let got = paho(&gw, "3", "takeover", &[&unique("twin")]).await;
    assert_ne!(got["first_disconnected"], 0);
}

/// What an MQTT client publishes to `x/y` a Kafka consumer reads from
/// `x.y`; what a Kafka producer sends there an MQTT subscriber gets, with
/// the record's headers as MQTT 5 user properties.
async fn mqtt_and_kafka_share_topics(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let base = unique("cross");
    let mqtt_topic = format!("{base}/readings");
    let kafka_topic = format!("{base}.readings");

    assert_eq!(paho(&gw, "5", "publish", &[&mqtt_topic, "5"]).await, 5);
    let records = client("confluent_consume.py", &[&bootstrap, &kafka_topic, "5"]).await;
    assert_eq!(field(&records, "value"), ["m0", "m1", "m2", "m3", "m4"]);

    // An MQTT subscriber first, then a Kafka producer.
    let receiver = Subscriber::start(&gw, "5", &mqtt_topic, 3);
    client(
        "confluent_produce.py",
        &[&bootstrap, &kafka_topic, "3", "none"],
    )
    .await;
    let got = receiver.messages().await;
    assert_eq!(payloads(&got), ["v0", "v1", "v2"]);
    assert_eq!(got[1]["props"], json!([["h", "x1"]]));
}

/// With token authentication on, a client presenting a valid token as its
/// password (bare or `token:<jwt>`, whatever the user name) connects and
/// publishes; a wrong token or none is refused with
/// "bad user name or password" (3.1.1 return code 4, MQTT 5 reason 0x86).
async fn only_clients_with_a_valid_token_connect(backend: BackendKind) {
    let secret = random_secret();
    let (gw, _dir) = common::tokens::gateway_requiring_tokens(backend, &secret).await;
    let valid = token(&secret, json!({"sub": "sensor-7"}));
    let wrong = token(&random_secret(), json!({"sub": "sensor-7"}));
    for version in ["3", "5", "5ws"] {
        let topic = format!("{}/t", unique("auth"));
        let got = paho(&gw, version, "login", &[&topic, "sensor-7", &valid]).await;
        assert_eq!(
            got,
            json!({"connack": 0, "published": true}),
            "MQTT {version}"
        );
        let as_token = format!("token:{valid}");
        let got = paho(&gw, version, "login", &[&topic, "any", &as_token]).await;
        assert_eq!(got["connack"], 0, "MQTT {version}, password token:<jwt>");
        for (user, password) in [("sensor-7", wrong.as_str()), ("-", "-")] {
            let got = paho(&gw, version, "login", &[&topic, user, password]).await;
            assert_eq!(got, json!({"connack": 0x86}), "MQTT {version}, {password}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_between_gateways() {
    a_session_moves_to_another_gateway().await;
}

/// On Pulsar: what the official Pulsar client publishes (batched, with
/// properties) to `base.p` an MQTT 5 subscriber of `base/p` gets, with the
/// properties as user properties; what MQTT publishes to `base/q` the
/// Pulsar client reads from `base.q` with its MQTT 5 user property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_and_mqtt_clients_share_topics() {
    let gw = Gateway::start(BackendKind::Pulsar).await;
    let base = unique("pulsar-mqtt");
    let (url, _) = common::test_pulsar_urls();

    let receiver = Subscriber::start(&gw, "5", &format!("{base}/p"), 3);
    let topic = format!("persistent://public/default/{base}.p");
    client("pulsar_produce.py", &[&url, &topic, "3"]).await;
    let got = receiver.messages().await;
    assert_eq!(payloads(&got), ["v0", "v1", "v2"]);
    let mut props: Vec<Value> = got[2]["props"].as_array().unwrap().clone();
    props.sort_by_key(|p| p.to_string());
    assert_eq!(props, [json!(["h", "x2"]), json!(["n", "2"])]);

    let got = paho(&gw, "5", "pubsub", &[&base]).await;
    assert_eq!(payloads(&got), ["q0", "q1", "q2"]);
    let topic = format!("persistent://public/default/{base}.room1.temp");
    let read = client("pulsar_read.py", &[&url, &topic, "3"]).await;
    assert_eq!(field(&read, "value"), ["q0", "q1", "q2"]);
    assert_eq!(read[1]["properties"]["k"], "v", "{read}");
    assert_eq!(read[1]["properties"]["mqtt-qos"], "1", "{read}");
}

/// Each case as a test on each backend.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::BackendKind::Embedded).await;
                }
            )*
        }
        mod pulsar {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::BackendKind::Pulsar).await;
                }
            )*
        }
    };
}

on_both_backends!(
    each_qos_reaches_a_wildcard_subscriber,
    retained_messages_greet_new_subscriptions,
    mqtt_5_subscription_options_and_topic_aliases,
    mqtt_over_websocket,
    only_clients_with_a_valid_token_connect,
    a_session_keeps_what_was_published_while_away,
    a_slow_subscriber_loses_nothing,
    qos_2_is_stored_once_across_a_reconnect,
    sessions_expire_and_wills_wait_their_delay,
    a_session_ends_on_time_across_a_restart,
    a_session_held_by_a_gateway_that_died_ends,
    a_delayed_will_goes_out_across_a_restart,
    the_will_goes_on_a_lost_connection_only,
    a_silent_client_is_dropped_after_its_keep_alive,
    an_unacknowledged_delivery_comes_again_with_its_packet_id,
    a_second_connection_takes_the_client_id_over,
    mqtt_and_kafka_share_topics,
    rumqttc_round_trip,
    rumqttc_over_websocket,
    rumqttc_v5_round_trip,
    rumqttc_v5_receives_topic_aliases,
    mosquitto_clients_publish_and_subscribe,
    an_oversized_packet_closes_its_connection,
    malformed_packets_close_their_connection,
    a_silent_connection_is_closed,
    subscriptions_per_connection_are_bounded,
);
