//! The runtime as an operator meets it: start-up, the admin endpoints,
//! start-up failures, configuration precedence and graceful shutdown, all
//! against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{BackendKind, Exited, Gateway, STARTED_MARKER};

/// Failed start-ups must end quickly.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed start-up says what went wrong in exactly one `error:` line,
/// without a panic or Rust debug formatting.
fn assert_one_clean_error_line(exited: &Exited) -> String {
    assert!(!exited.status.success(), "exit status {}", exited.status);
    let lines = exited.error_lines();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line:\n{}",
        exited.output
    );
    assert!(
        !exited.output.contains("panicked") && !exited.output.contains("Os {"),
        "{}",
        exited.output
    );
    lines[0].to_owned()
}

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let gw = Gateway::start(BackendKind::Embedded).await;
    let health = gw.get("/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(gw.get("/nope").await.status, 404);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_gateway_names() {
    let gw = Gateway::start(BackendKind::Embedded).await;
    let metrics = gw.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let content_type = metrics.content_type.clone().unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let body = &metrics.body;
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    assert!(
        body.contains("# TYPE pulsar_gateway_build info")
            && body.contains(&format!(
                "pulsar_gateway_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
        "{body}"
    );
    // Every line is a comment or `name{labels} value`.
    for line in body.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            let known = ["# HELP ", "# TYPE ", "# UNIT "]
                .iter()
                .any(|p| line.starts_with(p));
            assert!(known || line == "# EOF", "bad comment line: {line}");
            if known {
                let name = line.split(' ').nth(2).unwrap_or_default();
                assert!(name.starts_with("pulsar_gateway_"), "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        assert!(series.starts_with("pulsar_gateway_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test]
async fn every_listener_logs_its_address_and_absent_handlers_say_so() {
    let gw = Gateway::start(BackendKind::Embedded).await;
    let out = gw.output();
    let http = gw.http_addr.expect("the http line");
    assert!(out.contains(&format!("http listening on {http}")), "{out}");
    for protocol in ["kafka", "mqtt", "amqp"] {
        let listening = format!(" {protocol} listening on ");
        let absent = format!(" {protocol}: no handler in this build yet");
        assert!(
            out.contains(&listening) ^ out.contains(&absent),
            "{protocol}: expected one line, listening or not built:\n{out}"
        );
    }
}

#[tokio::test]
async fn a_second_gateway_on_the_same_http_port_exits_naming_the_address() {
    let first = Gateway::start(BackendKind::Embedded).await;
    let taken = first.http_addr.expect("the first gateway serves HTTP");
    let second = Gateway::builder(BackendKind::Embedded)
        .arg("--http-addr")
        .arg(taken.to_string())
        .run_to_exit(EXIT_TIMEOUT)
        .await;
    let line = assert_one_clean_error_line(&second);
    assert!(line.contains(&taken.to_string()), "{line}");
    assert!(line.contains("http"), "{line}");
    // The first one is unharmed.
    assert_eq!(first.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn an_unwritable_data_dir_stops_start_up_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let data_dir = file.join("data");
    let exited = Gateway::builder(BackendKind::Embedded)
        .data_dir(&data_dir)
        .run_to_exit(EXIT_TIMEOUT)
        .await;
    let line = assert_one_clean_error_line(&exited);
    assert!(line.contains(&data_dir.display().to_string()), "{line}");
}

#[tokio::test]
async fn sigterm_stops_the_gateway_with_status_0_within_10_s() {
    let mut gw = Gateway::start(BackendKind::Embedded).await;
    let http = gw.http_addr.expect("http");
    gw.terminate();
    let asked = Instant::now();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", gw.output()));
    assert!(status.success(), "{status}\n{}", gw.output());
    assert!(asked.elapsed() < Duration::from_secs(10));
    let out = gw.output();
    assert!(out.contains("SIGTERM received"), "{out}");
    assert!(out.contains("stopped"), "{out}");
    // The port is free again.
    assert!(std::net::TcpListener::bind(http).is_ok());
}

#[tokio::test]
async fn http_addr_off_starts_without_an_http_listener() {
    let mut gw = Gateway::builder(BackendKind::Embedded)
        .arg("--http-addr")
        .arg("off")
        .start()
        .await;
    assert_eq!(gw.http_addr, None);
    let out = gw.output();
    assert!(out.contains(STARTED_MARKER), "{out}");
    assert!(!out.contains("http listening"), "{out}");
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(matches!(status, Some(s) if s.success()), "{}", gw.output());
}

#[tokio::test]
async fn the_pulsar_backend_fails_with_a_clear_message() {
    let exited = Gateway::builder(BackendKind::Embedded)
        .arg("--backend")
        .arg("pulsar")
        .run_to_exit(EXIT_TIMEOUT)
        .await;
    let line = assert_one_clean_error_line(&exited);
    assert!(line.contains("Pulsar backend is not built yet"), "{line}");
}

#[tokio::test]
async fn environment_beats_the_config_file_and_flags_beat_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "http_addr = \"off\"\nlog_level = \"info\"\n").unwrap();

    // File says off, the environment says listen: it listens.
    let gw = Gateway::builder(BackendKind::Embedded)
        .no_default_http()
        .arg("--config")
        .arg(&config)
        .env("PULSAR_GATEWAY_HTTP_ADDR", "127.0.0.1:0")
        .start()
        .await;
    assert!(gw.http_addr.is_some(), "{}", gw.output());
    assert_eq!(gw.get("/healthz").await.status, 200);
    drop(gw);

    // The environment says off, the flag says listen: it listens.
    let gw = Gateway::builder(BackendKind::Embedded)
        .no_default_http()
        .env("PULSAR_GATEWAY_CONFIG", &config)
        .env("PULSAR_GATEWAY_HTTP_ADDR", "off")
        .arg("--http-addr")
        .arg("127.0.0.1:0")
        .start()
        .await;
    assert!(gw.http_addr.is_some(), "{}", gw.output());

    // File alone: off.
    let gw = Gateway::builder(BackendKind::Embedded)
        .no_default_http()
        .arg("--config")
        .arg(&config)
        .start()
        .await;
    assert_eq!(gw.http_addr, None, "{}", gw.output());
}
