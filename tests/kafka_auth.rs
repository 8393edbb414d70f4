//! Kafka clients and token authentication end to end: the real gateway
//! binary started with `--auth-token-secret-file`, on both backends.
//! kafka-python (password `token:<jwt>`) and librdkafka (the bare JWT) with
//! SASL/PLAIN produce and consume; a wrong or expired token is refused with
//! an authentication error the client reports; a client without SASL
//! cannot produce. With authentication off, SASL clients still connect.

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::tokens::{random_secret, token};
use common::{client_script, python, run_json, unique, BackendKind, Gateway};
use serde_json::{json, Value};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What `tests/clients/kafka_sasl.py` reported: produced and consumed
/// `count` records of a new topic with `library`, SASL/PLAIN with
/// `password` (none: no SASL).
async fn sasl_client(library: &str, bootstrap: &str, password: Option<&str>, count: u32) -> Value {
    sasl_client_with(library, bootstrap, password, count, "PLAIN").await
}

/// [`sasl_client`] with another SASL mechanism (librdkafka only).
async fn sasl_client_with(
    library: &str,
    bootstrap: &str,
    password: Option<&str>,
    count: u32,
    mechanism: &str,
) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(client_script("kafka_sasl.py"))
        .args([library, bootstrap, &unique(library), &count.to_string()])
        .env_remove("KAFKA_SASL_PASSWORD")
        .env("KAFKA_SASL_MECHANISM", mechanism);
    if let Some(password) = password {
        cmd.env("KAFKA_SASL_PASSWORD", password);
    }
    run_json(format!("kafka_sasl.py {library}"), cmd).await
}

fn assert_round_trip(report: &Value, count: u32, what: &str) {
    let wanted: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
    assert_eq!(report["values"], json!(wanted), "{what}: {report}");
}

/// Asserts the client gave up and said, in its error or its log, each of
/// `said`.
fn assert_refused(report: &Value, said: &[&str], what: &str) {
    assert!(report["error"].is_string(), "{what}: {report}");
    let mut text = report["message"].as_str().unwrap_or_default().to_owned();
    for line in report["log"].as_array().into_iter().flatten() {
        text.push('\n');
        text.push_str(line.as_str().unwrap_or_default());
    }
    for wanted in said {
        assert!(text.contains(wanted), "{what}: {wanted:?} not in {report}");
    }
}

async fn only_clients_with_a_valid_token_produce_and_consume(backend: BackendKind) {
    let secret = random_secret();
    let (gw, _dir) = common::tokens::gateway_requiring_tokens(backend, &secret).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let valid = token(&secret, json!({"sub": "orders-service"}));

    let report = sasl_client(
        "kafka-python",
        &bootstrap,
        Some(&format!("token:{valid}")),
        5,
    )
    .await;
    assert_round_trip(&report, 5, "kafka-python, password token:<jwt>");
    let report = sasl_client("confluent", &bootstrap, Some(&valid), 5).await;
    assert_round_trip(&report, 5, "librdkafka, the bare JWT");

    let wrong_key = token(&random_secret(), json!({"sub": "orders-service"}));
    let report = sasl_client("kafka-python", &bootstrap, Some(&wrong_key), 1).await;
    // kafka-python logs the refusal, then gives up bootstrapping.
    assert_refused(
        &report,
        &[
            "SaslAuthenticationFailedError",
            "Authentication failed: bad credentials: the token's signature does not verify",
        ],
        "kafka-python, a token of another key",
    );
    let expired = token(&secret, json!({"sub": "orders-service", "exp": now() - 60}));
    let report = sasl_client("confluent", &bootstrap, Some(&expired), 1).await;
    assert_eq!(report["error"], "_AUTHENTICATION", "{report}");
    assert_refused(
        &report,
        &["the token has expired"],
        "librdkafka, an expired token",
    );

    let report = sasl_client_with("confluent", &bootstrap, Some(&valid), 1, "SCRAM-SHA-256").await;
    assert_refused(
        &report,
        &["SCRAM-SHA-256", "PLAIN"],
        "librdkafka, a mechanism the gateway does not offer",
    );

    let kafka = "protocol=\"kafka\"";
    let stored = gw.counter_sum("messages_in", kafka).await;
    assert_eq!(stored, 10, "the two round trips' records");
    let report = sasl_client("kafka-python", &bootstrap, None, 1).await;
    assert!(
        report["error"].is_string(),
        "kafka-python without SASL: {report}"
    );
    let report = sasl_client("confluent", &bootstrap, None, 1).await;
    assert!(
        report["error"].is_string(),
        "librdkafka without SASL: {report}"
    );
    assert_eq!(
        gw.counter_sum("messages_in", kafka).await,
        stored,
        "a client without SASL stored nothing"
    );

    let out = gw.output();
    assert!(
        out.contains("request before SASL authentication"),
        "the gateway says why it closed a connection without SASL:\n{out}"
    );
    for secret_text in [&valid, &wrong_key, &expired] {
        assert!(
            !out.contains(secret_text.as_str()),
            "a token was logged:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_kafka_clients_with_a_valid_token_get_through_on_the_embedded_store() {
    only_clients_with_a_valid_token_produce_and_consume(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_kafka_clients_with_a_valid_token_get_through_on_pulsar() {
    only_clients_with_a_valid_token_produce_and_consume(BackendKind::Pulsar).await;
}

/// Authentication off: a client configured for SASL/PLAIN still connects,
/// whatever its password, as it would to a gateway without SASL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_off_sasl_clients_connect_with_any_password() {
    let gw = Gateway::start(BackendKind::Embedded).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let report = sasl_client("kafka-python", &bootstrap, Some("anything"), 3).await;
    assert_round_trip(&report, 3, "kafka-python");
    let report = sasl_client("confluent", &bootstrap, Some("token:not-checked"), 3).await;
    assert_round_trip(&report, 3, "librdkafka");
}
