//! The runtime as an operator meets it: start-up, the admin endpoints,
//! start-up failures, configuration precedence and graceful shutdown, all
//! against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{test_pulsar_urls, BackendKind, Exited, Gateway, STARTED_MARKER};

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
    // The backend's publish latency shows from the start, empty.
    assert!(
        body.contains("# TYPE pulsar_gateway_backend_publish_latency_seconds histogram")
            && body.contains("pulsar_gateway_backend_publish_latency_seconds_count 0"),
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
async fn on_a_real_pulsar_the_gateway_gets_ready_serves_metrics_and_stops_cleanly() {
    let (url, web_url) = test_pulsar_urls();
    let mut gw = Gateway::start(BackendKind::Pulsar).await;
    assert_eq!(gw.get("/readyz").await.status, 200);
    let metrics = gw.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("pulsar_gateway_build_info{")
            && metrics.body.trim_end().ends_with("# EOF"),
        "{}",
        metrics.body
    );
    let out = gw.output();
    assert!(out.contains("started (backend: pulsar"), "{out}");
    assert!(
        out.contains(&format!(
            "connecting to Pulsar at {url} (admin API {web_url})"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("connected to Pulsar at {url}")),
        "{out}"
    );

    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(matches!(status, Some(s) if s.success()), "{}", gw.output());
}

#[tokio::test]
async fn the_pulsar_token_is_read_from_its_file_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gateway.jwt");
    // The test standalone does not check tokens; what matters here is that
    // the file is read, trimmed, sent, and kept out of the log.
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJnYXRld2F5In0.c2VjcmV0LXNpZ25hdHVyZQ";
    std::fs::write(&token_file, format!("  {token}\n")).unwrap();
    let gw = Gateway::builder(BackendKind::Pulsar)
        .arg("--pulsar-token-file")
        .arg(&token_file)
        .start()
        .await;
    assert_eq!(gw.get("/readyz").await.status, 200);
    let out = gw.output();
    assert!(out.contains(", with a token)"), "{out}");
    assert!(
        !out.contains(token),
        "the token leaked into the log:\n{out}"
    );
}

#[tokio::test]
async fn a_trusted_ca_file_is_loaded_and_the_gateway_still_gets_ready() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, include_str!("fixtures/test-ca.pem")).unwrap();
    let gw = Gateway::builder(BackendKind::Pulsar)
        .arg("--pulsar-tls-trust-certs-file")
        .arg(&ca)
        .start()
        .await;
    assert_eq!(gw.get("/readyz").await.status, 200);
}

#[tokio::test]
async fn the_pulsar_backend_without_pulsar_url_exits_naming_the_key() {
    let exited = Gateway::builder(BackendKind::Embedded)
        .arg("--backend")
        .arg("pulsar")
        .run_to_exit(EXIT_TIMEOUT)
        .await;
    let line = assert_one_clean_error_line(&exited);
    assert!(line.contains("pulsar_url"), "{line}");
}

#[tokio::test]
async fn a_missing_pulsar_token_file_exits_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.jwt");
    let exited = Gateway::builder(BackendKind::Pulsar)
        .env("PULSAR_GATEWAY_PULSAR_TOKEN_FILE", &missing)
        .run_to_exit(EXIT_TIMEOUT)
        .await;
    let line = assert_one_clean_error_line(&exited);
    assert!(line.contains(&missing.display().to_string()), "{line}");
    assert!(line.contains("pulsar_token_file"), "{line}");
}

#[tokio::test]
async fn an_unreachable_pulsar_leaves_the_gateway_up_not_ready_and_stoppable() {
    // A port nobody listens on (taken, then freed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("pulsar://{closed}");
    let mut gw = Gateway::builder(BackendKind::Embedded)
        .arg("--backend")
        .arg("pulsar")
        .arg("--pulsar-url")
        .arg(&url)
        .arg("--pulsar-admin-url")
        .arg(format!("http://{closed}"))
        .start_unready()
        .await;
    assert_eq!(gw.get("/healthz").await.status, 200);
    // It keeps trying: alive and not ready, every time it is asked, for a
    // while.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let ready = gw.get("/readyz").await;
        assert_eq!(ready.status, 503, "{ready:?}\n{}", gw.output());
        assert!(ready.body.contains(&url), "{ready:?}");
        assert!(gw.wait_exit(Duration::from_millis(200)).await.is_none());
    }
    assert!(gw
        .output()
        .contains(&format!("connecting to Pulsar at {url}")));

    // Stopping does not wait for the cluster.
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(matches!(status, Some(s) if s.success()), "{}", gw.output());
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

/// The shared listener, driven directly with a toy protocol: echo every
/// read, panic on `panic`, say `bye` and close when the gateway stops.
mod listener {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use gateway_api::{
        AllowAll, ByteBudget, ClientStream, Context, DefaultRouter, HandlerError, Metrics,
        Protocol, ProtocolHandler, Services,
    };
    use prometheus_client::registry::Registry;
    use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};
    use pulsar_gateway::listener::Listener;
    use pulsar_gateway::shutdown::Shutdown;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::common::eventually;

    struct Echo;

    #[async_trait]
    impl ProtocolHandler for Echo {
        fn protocol(&self) -> Protocol {
            Protocol::Mqtt
        }

        async fn serve(
            self: Arc<Self>,
            mut stream: Box<dyn ClientStream>,
            _peer: std::net::SocketAddr,
            _local: std::net::SocketAddr,
            ctx: Context,
        ) -> Result<(), HandlerError> {
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => {
                        stream.write_all(b"bye").await?;
                        return Ok(());
                    }
                    n = stream.read(&mut buf) => {
                        let n = n?;
                        if n == 0 {
                            return Ok(());
                        }
                        if &buf[..n] == b"panic" {
                            panic!("a handler bug");
                        }
                        stream.write_all(&buf[..n]).await?;
                    }
                }
            }
        }
    }

    struct Harness {
        shutdown: Shutdown,
        metrics: Metrics,
        addr: std::net::SocketAddr,
        _dir: tempfile::TempDir,
    }

    async fn start(max_connections: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let backend = EmbeddedBackend::open(EmbeddedConfig::new(dir.path()))
            .await
            .unwrap();
        let metrics = Metrics::new(&mut Registry::default());
        let shutdown = Shutdown::new();
        let ctx = Context::new(Services {
            backend: Arc::new(backend),
            auth: Arc::new(AllowAll),
            router: Arc::new(DefaultRouter::default()),
            metrics: metrics.clone(),
            inbound: ByteBudget::new(1 << 20),
            shutdown: shutdown.token(),
        });
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = Listener::new(
            socket,
            Arc::new(Echo),
            ctx,
            max_connections,
            shutdown.running(),
        );
        let addr = listener.local_addr().unwrap();
        tokio::spawn(listener.run());
        Harness {
            shutdown,
            metrics,
            addr,
            _dir: dir,
        }
    }

    async fn echo(conn: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        conn.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        conn.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_and_a_panicking_handler_frees_its_slot() {
        let h = start(2).await;
        let gauge = h.metrics.connection_gauge(Protocol::Mqtt);
        let mut c1 = TcpStream::connect(h.addr).await.unwrap();
        let mut c2 = TcpStream::connect(h.addr).await.unwrap();
        assert_eq!(echo(&mut c1, b"one").await, b"one");
        assert_eq!(echo(&mut c2, b"two").await, b"two");
        assert_eq!(gauge.get(), 2);

        // The third client is left in the backlog while two are open.
        let mut c3 = TcpStream::connect(h.addr).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), echo(&mut c3, b"3")).await;
        assert!(early.is_err(), "served over the limit");

        // A handler that panics takes only its own connection down, and its
        // slot comes back: the third client is served.
        c2.write_all(b"panic").await.unwrap();
        let mut rest = Vec::new();
        let _ = c2.read_to_end(&mut rest).await;
        let mut late = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), c3.read_exact(&mut late))
            .await
            .expect("served once a slot was free")
            .unwrap();
        assert_eq!(&late, b"3");
        assert!(eventually(Duration::from_secs(5), || async { gauge.get() == 2 }).await);

        drop(c1);
        assert!(eventually(Duration::from_secs(5), || async { gauge.get() == 1 }).await);
        assert_eq!(echo(&mut c3, b"still here").await, b"still here");
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_waits_for_connections_to_finish() {
        let h = start(8).await;
        let gauge = h.metrics.connection_gauge(Protocol::Mqtt);
        let mut conn = TcpStream::connect(h.addr).await.unwrap();
        assert_eq!(echo(&mut conn, b"hi").await, b"hi");

        assert_eq!(h.shutdown.drain(Duration::from_secs(5)).await, Ok(()));
        // The handler saw the token, said goodbye and closed.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        assert_eq!(gauge.get(), 0);
        // And nobody listens any more.
        assert!(TcpStream::connect(h.addr).await.is_err());
    }
}

#[tokio::test]
async fn a_connection_that_never_finishes_delays_exit_only_by_the_drain_timeout() {
    use tokio::io::AsyncWriteExt;
    let mut gw = Gateway::builder(BackendKind::Embedded)
        .arg("--drain-timeout")
        .arg("1s")
        .start()
        .await;
    let mut stuck = tokio::net::TcpStream::connect(gw.http_addr.expect("http"))
        .await
        .unwrap();
    // Half a request, which the server can neither answer nor close.
    stuck
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Connections are accepted in order: once a later one is served, the
    // server holds the stuck one.
    assert_eq!(gw.get("/healthz").await.status, 200);

    gw.terminate();
    let asked = Instant::now();
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    let took = asked.elapsed();
    let out = gw.output();
    assert!(
        matches!(status, Some(s) if s.success()),
        "{status:?}:\n{out}"
    );
    assert!(out.contains("still open after 1s"), "{out}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

/// The admin server driven directly, with a backend the test controls.
mod admin {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::routing::get;
    use gateway_api::Backend;
    use prometheus_client::registry::Registry;
    use pulsar_gateway::admin::{self, AdminState};
    use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};
    use pulsar_gateway::listener::Acceptor;
    use pulsar_gateway::shutdown::Shutdown;
    use tokio::net::TcpListener;

    use super::common::http_get;

    #[tokio::test]
    async fn readyz_reports_the_backend_error_and_other_routes_mount_on_the_same_server() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(
            EmbeddedBackend::open(EmbeddedConfig::new(dir.path()))
                .await
                .unwrap(),
        );
        let shutdown = Shutdown::new();
        let app = admin::router(AdminState {
            backend: backend.clone(),
            registry: Arc::new(Registry::default()),
            shutdown: shutdown.token(),
        })
        // What the WebSocket API will do: merge its routes.
        .merge(axum::Router::new().route("/ws/hello", get(|| async { "hello" })));
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let acceptor = Acceptor::new(socket, "http", 16, None, shutdown.running());
        let base = format!("http://{}", acceptor.local_addr().unwrap());
        let server = tokio::spawn(admin::serve(acceptor, app, shutdown.token()));

        let ready = http_get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(ready.status, 200);
        let hello = http_get(format!("{base}/ws/hello")).await.unwrap();
        assert_eq!((hello.status, hello.body.as_str()), (200, "hello"));

        backend.close().await.unwrap();
        let ready = http_get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(ready.status, 503);
        let expected = backend.ready().await.unwrap_err().to_string();
        assert!(ready.body.contains(&expected), "{ready:?}");

        assert_eq!(shutdown.drain(Duration::from_secs(5)).await, Ok(()));
        server.await.unwrap().unwrap();
        assert!(http_get(format!("{base}/healthz")).await.is_err());
    }
}

#[tokio::test]
async fn an_unusable_auth_key_file_exits_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.key");
    let empty = dir.path().join("empty.key");
    std::fs::write(&empty, b"").unwrap();
    let not_a_key = dir.path().join("public.pem");
    std::fs::write(&not_a_key, b"-----BEGIN PUBLIC KEY-----\nbm9wZQ==\n").unwrap();
    for (flag, file, key) in [
        (
            "--auth-token-secret-file",
            &missing,
            "auth_token_secret_file",
        ),
        ("--auth-token-secret-file", &empty, "auth_token_secret_file"),
        (
            "--auth-token-public-key-file",
            &not_a_key,
            "auth_token_public_key_file",
        ),
    ] {
        let exited = Gateway::builder(BackendKind::Embedded)
            .arg(flag)
            .arg(file)
            .run_to_exit(EXIT_TIMEOUT)
            .await;
        let line = assert_one_clean_error_line(&exited);
        assert!(line.contains(&file.display().to_string()), "{line}");
        assert!(line.contains(key), "{line}");
    }
}

#[tokio::test]
async fn a_secret_key_file_turns_client_authentication_on() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.key");
    std::fs::write(&secret, [7u8; 32]).unwrap();
    let gw = Gateway::builder(BackendKind::Embedded)
        .arg("--auth-token-secret-file")
        .arg(&secret)
        .start()
        .await;
    let out = gw.output();
    assert!(
        out.contains("client authentication: JWT, verified with the secret key"),
        "{out}"
    );
}
