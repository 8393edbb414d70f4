//! Pulsar restarted under load: the Pulsar backend reconnects by itself,
//! callers see retriable errors while Pulsar is down, readiness follows
//! Pulsar (the backend's, and the gateway process's `/readyz`), and no
//! message whose publish was acknowledged is lost. A durable subscription
//! and a reader opened before the stop stay open across it and receive
//! what is published after Pulsar is back. The standalone requires
//! token authentication, so the token goes through both APIs (the
//! gateway's from `--pulsar-token-file`), and a backend without one is
//! refused. The standalone also listens with TLS: the backend and the
//! gateway process (`--pulsar-tls-trust-certs-file`) connect through
//! `pulsar+ssl://` and `https://` with the test CA, and not without it.
//!
//! With Pulsar stalled (its process stopped), a gateway with small
//! buffers stops reading from a Kafka producer instead of holding what it
//! sends: its memory stays within a bound, and once Pulsar resumes every
//! record is acknowledged and stored.
//!
//! This test runs its own standalone (deploy/pulsar-standalone.sh, on ports
//! of its own) since it stops it; it needs the Pulsar tarball the test
//! command fetches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{BackendKind, Gateway};
use gateway_api::topic::Namespace;
use gateway_api::{
    Backend, BackendError, Message, NewMessage, StartPosition, SubscribeRequest, TopicName,
};
use pulsar_gateway::backend::pulsar::{PulsarBackend, PulsarConfig};

/// Ports of this test's standalone, apart from the shared test one (6650)
/// and those other test runs on the machine use (16650, 26650 and their
/// web ports), and below the ephemeral range (32768 and up here): a port
/// there may be taken, while the standalone is stopped, by any outgoing
/// connection of the tests running meanwhile, and the restart then fails
/// to bind it.
const PORT: u16 = 24650;
const WEB_PORT: u16 = 24081;
const TLS_PORT: u16 = 24651;
const WEB_TLS_PORT: u16 = 24082;
/// How long each publish may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long Pulsar may take to start, and the backend to come back.
const RECOVERY: Duration = Duration::from_secs(180);
/// How long a consumer opened before the restart may take to receive a
/// message published after it.
const RESUME: Duration = Duration::from_secs(60);

struct Standalone {
    run_dir: PathBuf,
}

impl Standalone {
    /// Starts the standalone with token authentication and TLS; a restart
    /// (`keep_data`) keeps the data, the token key and the certificates,
    /// so tokens and trust stay valid.
    async fn start(&self, keep_data: bool) {
        let mut args: Vec<String> = vec!["start".into(), "--small-ledgers".into(), "--tls".into()];
        if keep_data {
            args.push("--keep-data".into());
            args.push("--token-secret-key".into());
            args.push(self.run_dir.join("token-secret.key").display().to_string());
        } else {
            args.push("--token-auth".into());
        }
        self.script(args).await;
    }

    /// The superuser token the launcher wrote.
    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The test CA the launcher made, which signed the broker's certificate.
    fn tls_ca(&self) -> PathBuf {
        self.run_dir.join("tls/ca.pem")
    }

    async fn stop(&self) {
        self.script(vec!["stop".into()]).await;
    }

    async fn script(&self, args: Vec<String>) {
        let run_dir = self.run_dir.clone();
        tokio::task::spawn_blocking(move || run_script(&run_dir, &args))
            .await
            .unwrap();
    }
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/pulsar-standalone.sh")
}

/// Runs deploy/pulsar-standalone.sh with this test's ports, failing the
/// test if it fails.
fn run_script(run_dir: &Path, args: &[String]) {
    let status = Command::new("bash")
        .arg(script_path())
        .args(args)
        .arg("--run-dir")
        .arg(run_dir)
        .env("PULSAR_PORT", PORT.to_string())
        .env("PULSAR_WEB_PORT", WEB_PORT.to_string())
        .env("PULSAR_TLS_PORT", TLS_PORT.to_string())
        .env("PULSAR_WEB_TLS_PORT", WEB_TLS_PORT.to_string())
        .status()
        .expect("bash runs deploy/pulsar-standalone.sh");
    assert!(
        status.success(),
        "deploy/pulsar-standalone.sh {args:?} failed ({status}); logs in {}",
        run_dir.display()
    );
}

impl Drop for Standalone {
    fn drop(&mut self) {
        // Best effort, also when the test panicked.
        let _ = Command::new("bash")
            .arg(script_path())
            .args(["stop", "--run-dir"])
            .arg(&self.run_dir)
            .status();
    }
}

/// Polls `check` every 200 ms until it holds; fails the test after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Over TLS with the test CA trusted, the backend publishes and consumes,
/// and the gateway process becomes ready; without the CA, the backend is
/// refused.
async fn tls_connects_with_the_trusted_ca_only(cluster: &Standalone, token: &str) {
    let ca = std::fs::read(cluster.tls_ca()).unwrap();
    let untrusted = PulsarConfig {
        token: Some(token.to_owned()),
        ..PulsarConfig::new(
            format!("pulsar+ssl://127.0.0.1:{TLS_PORT}"),
            format!("https://127.0.0.1:{WEB_TLS_PORT}"),
        )
    };
    let refused = tokio::time::timeout(RECOVERY, PulsarBackend::connect(untrusted.clone()))
        .await
        .expect("a connection to an untrusted certificate ends in time");
    match refused {
        Err(e) => assert!(
            !e.is_retriable() && e.to_string().contains("--pulsar-tls-trust-certs-file"),
            "an untrusted certificate is refused for good, saying what to set: {e}"
        ),
        Ok(_) => panic!("the broker's certificate is signed by a CA the backend does not trust"),
    }

    let trusted = PulsarConfig {
        tls_trust_certs: Some(ca),
        ..untrusted
    };
    let backend = PulsarBackend::connect(trusted).await.unwrap();
    let topic = TopicName::from_kafka("over-tls", &Namespace::default()).unwrap();
    let sub = backend
        .subscribe(SubscribeRequest::new(topic.clone(), "tls"))
        .await
        .unwrap();
    backend
        .publish(&topic, NewMessage::new("sealed"))
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), sub.receive())
        .await
        .expect("the message comes back over TLS")
        .unwrap();
    assert_eq!(&message.payload[..], b"sealed");
    backend.close().await.unwrap();

    let token_file = cluster.run_dir.join("gateway-tls.jwt");
    std::fs::write(&token_file, token).unwrap();
    let gateway = Gateway::builder(BackendKind::Pulsar)
        .pulsar_urls(
            format!("pulsar+ssl://127.0.0.1:{TLS_PORT}"),
            format!("https://127.0.0.1:{WEB_TLS_PORT}"),
        )
        .arg("--pulsar-token-file")
        .arg(&token_file)
        .arg("--pulsar-tls-trust-certs-file")
        .arg(cluster.tls_ca())
        .start()
        .await;
    assert_eq!(gateway.get("/readyz").await.status, 200);
}

/// Waits for the messages with these payloads, passing over others
/// (a message acknowledged just before the stop may come again: acks are
/// not confirmed by the broker); fails the test after `limit`.
async fn receive_all<F, Fut>(what: &str, limit: Duration, mut wanted: HashSet<String>, mut next: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Message, BackendError>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !wanted.is_empty() {
        let message = tokio::time::timeout_at(deadline, next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: {} messages did not arrive within {limit:?}, e.g. {:?}",
                    wanted.len(),
                    wanted.iter().next()
                )
            })
            .unwrap_or_else(|e| panic!("{what}: receive failed: {e}"));
        wanted.remove(String::from_utf8_lossy(&message.payload).as_ref());
    }
}

/// Publishes `payloads` to `topic`, each retried until Pulsar takes it
/// (the backend may still be reconnecting its producer).
async fn publish_all(backend: &dyn Backend, topic: &TopicName, payloads: &[String]) {
    for payload in payloads {
        wait_until("a publish after the restart", RECOVERY, || async {
            let sent = backend.publish(topic, NewMessage::new(payload.clone()));
            matches!(tokio::time::timeout(PUBLISH_TIMEOUT, sent).await, Ok(Ok(_)))
        })
        .await;
    }
}

#[derive(Default)]
struct Tally {
    acknowledged: Vec<String>,
    errors: Vec<BackendError>,
    timeouts: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_restart_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Standalone {
        run_dir: dir.path().to_owned(),
    };
    cluster.start(false).await;
    let config = PulsarConfig::new(
        format!("pulsar://127.0.0.1:{PORT}"),
        format!("http://127.0.0.1:{WEB_PORT}"),
    );
    let refused = tokio::time::timeout(RECOVERY, PulsarBackend::connect(config.clone()))
        .await
        .expect("a connection without a token is refused in time");
    match refused {
        Err(e) => assert!(
            !e.is_retriable() && e.to_string().contains("credentials"),
            "refused for good, saying why: {e}"
        ),
        Ok(_) => panic!("the cluster requires a token"),
    }
    tls_connects_with_the_trusted_ca_only(&cluster, &cluster.admin_token()).await;
    let config = PulsarConfig {
        token: Some(cluster.admin_token()),
        ..config
    };
    let token_file = dir.path().join("gateway.jwt");
    std::fs::write(&token_file, cluster.admin_token()).unwrap();
    let gateway = Gateway::builder(BackendKind::Pulsar)
        .pulsar_urls(&config.service_url, &config.admin_url)
        .arg("--pulsar-token-file")
        .arg(&token_file)
        .start()
        .await;
    let backend: Arc<dyn Backend> = Arc::new(PulsarBackend::connect(config).await.unwrap());
    let readyz = || async { gateway.get("/readyz").await.status };
    let topic = TopicName::from_kafka("restart-under-load", &Namespace::default()).unwrap();

    // A durable subscription and a reader of a topic of their own, opened
    // before the restart, each having read (and the subscription
    // acknowledged) what was published so far.
    let consumed = TopicName::from_kafka("restart-consumers", &Namespace::default()).unwrap();
    let subscription = backend
        .subscribe(SubscribeRequest::new(consumed.clone(), "across-restart"))
        .await
        .unwrap();
    let reader = backend
        .reader(&consumed, StartPosition::Earliest)
        .await
        .unwrap();
    // The subscription's next message, acknowledged.
    let acked = || async {
        let message = subscription.receive().await?;
        subscription.ack(&message.topic, message.id).await?;
        Ok(message)
    };
    let before: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    publish_all(&*backend, &consumed, &before).await;
    let wanted: HashSet<String> = before.iter().cloned().collect();
    receive_all("the subscription before", RESUME, wanted.clone(), acked).await;
    receive_all("the reader before", RESUME, wanted, || reader.next()).await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (backend, topic, tally, stop) =
            (backend.clone(), topic.clone(), tally.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("p{p}-{i}");
                i += 1;
                let sent = tokio::time::timeout(
                    PUBLISH_TIMEOUT,
                    backend.publish(&topic, NewMessage::new(payload.clone())),
                )
                .await;
                let ok = matches!(sent, Ok(Ok(_)));
                {
                    let mut tally = tally.lock().unwrap();
                    match sent {
                        Ok(Ok(_)) => tally.acknowledged.push(payload),
                        Ok(Err(e)) => tally.errors.push(e),
                        Err(_) => tally.timeouts += 1,
                    }
                }
                if !ok {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let acknowledged = || tally.lock().unwrap().acknowledged.len();
    wait_until("200 publishes before the restart", RECOVERY, || async {
        acknowledged() >= 200
    })
    .await;

    cluster.stop().await;
    let errors = || tally.lock().unwrap().errors.len();
    let errors_before = errors();
    wait_until("readiness goes false", RECOVERY, || async {
        backend.ready().await.is_err()
    })
    .await;
    wait_until("the gateway's /readyz goes 503", RECOVERY, || async {
        readyz().await == 503
    })
    .await;
    // With an error, not only by timing out: a client must learn that
    // the publish failed and may be retried.
    wait_until(
        "a publish fails with an error while Pulsar is down",
        RECOVERY,
        || async { errors() > errors_before },
    )
    .await;
    let outage_errors: Vec<String> = tally.lock().unwrap().errors[errors_before..]
        .iter()
        .map(ToString::to_string)
        .collect();
    eprintln!("errors while Pulsar was down: {outage_errors:?}");

    cluster.start(true).await;
    wait_until("readiness comes back", RECOVERY, || async {
        backend.ready().await.is_ok()
    })
    .await;
    wait_until(
        "the gateway's /readyz comes back to 200",
        RECOVERY,
        || async { readyz().await == 200 },
    )
    .await;
    // The subscription and the reader opened before the stop resume by
    // themselves and receive what is published now.
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    publish_all(&*backend, &consumed, &after).await;
    let wanted: HashSet<String> = after.iter().cloned().collect();
    receive_all(
        "the subscription opened before the restart",
        RESUME,
        wanted.clone(),
        acked,
    )
    .await;
    // A reader goes on after the last message it read: none again, none
    // skipped.
    let deadline = tokio::time::Instant::now() + RESUME;
    for expected in &after {
        let message = tokio::time::timeout_at(deadline, reader.next())
            .await
            .unwrap_or_else(|_| panic!("the reader opened before the restart: no {expected}"))
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&message.payload),
            expected.as_str(),
            "the reader opened before the restart"
        );
    }
    let after_restart = acknowledged();
    wait_until("publishes succeed again", RECOVERY, || async {
        acknowledged() >= after_restart + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.await.unwrap();
    }

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "acknowledged {}, failed {} (errors) + {} (timeouts)",
        tally.acknowledged.len(),
        tally.errors.len(),
        tally.timeouts
    );
    let not_retriable: Vec<_> = tally.errors.iter().filter(|e| !e.is_retriable()).collect();
    assert!(
        not_retriable.is_empty(),
        "while Pulsar was down, errors were retriable: {not_retriable:?}"
    );

    let sub = backend
        .subscribe(SubscribeRequest::new(topic.clone(), "check"))
        .await
        .unwrap();
    let mut missing: HashSet<String> = tally.acknowledged.iter().cloned().collect();
    let total = missing.len();
    while !missing.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), sub.receive())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {total} acknowledged messages never arrived, e.g. {:?}",
                    missing.len(),
                    missing.iter().next()
                )
            })
            .unwrap();
        missing.remove(String::from_utf8_lossy(&message.payload).as_ref());
    }
    a_stalled_pulsar_slows_clients_and_bounds_memory(&cluster, &token_file, &backend).await;
    tokio::time::timeout(RECOVERY, backend.close())
        .await
        .expect("the backend closes in time")
        .unwrap();
}

/// Producers of the stall test, the records each sends, and their size:
/// 40 MiB in all, far more than the gateway's buffers (2 MiB) hold.
const STALL_PRODUCERS: usize = 4;
const STALL_RECORDS: usize = 10_000;
const STALL_RECORD_BYTES: usize = 1024;
/// How long Pulsar stays stopped.
const STALL: Duration = Duration::from_secs(10);
/// How much the gateway's resident memory may grow while Pulsar is
/// stopped: its two byte budgets (1 MiB each), decoding and the
/// allocator's slack, well under what the producers have queued (10 MiB
/// each; the gateway would read up to eight requests of up to 1 MB per
/// connection without its budgets).
const STALL_GROWTH_BYTES: u64 = 12 << 20;

/// The resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

/// The standalone's broker stopped (SIGSTOP) until this is dropped
/// (SIGCONT), also when the test fails meanwhile.
struct Stopped {
    pid: nix::unistd::Pid,
}

impl Stopped {
    fn stop(cluster: &Standalone) -> Stopped {
        let pid: i32 = std::fs::read_to_string(cluster.run_dir.join("pulsar.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped { pid }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A running producer program and its output lines.
struct BulkProducer {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl BulkProducer {
    /// Starts one, sending to `topic`, and waits for its first
    /// acknowledgement; it sends the rest once told to [`go`](Self::go).
    fn start(bootstrap: &str, topic: &str, name: &str) -> BulkProducer {
        use std::io::BufRead;
        let mut child = Command::new(common::python())
            .arg(common::client_script("confluent_produce_bulk.py"))
            .args([bootstrap, topic])
            .arg(STALL_RECORDS.to_string())
            .arg(STALL_RECORD_BYTES.to_string())
            .args(["120", name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the producer starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok);
        assert_eq!(first.as_deref(), Some("started"), "{name}'s first record");
        BulkProducer { child, lines }
    }

    /// Lets it send the rest.
    fn go(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("the producer's stdin");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .unwrap();
    }

    /// Waits for it to end; its report.
    fn finish(mut self) -> serde_json::Value {
        let report = self.lines.last().and_then(Result::ok).unwrap_or_default();
        let status = self.child.wait().unwrap();
        let report: serde_json::Value = serde_json::from_str(&report)
            .unwrap_or_else(|e| panic!("a producer printed {report:?} ({e})"));
        assert!(
            status.success(),
            "not every record was acknowledged: {report}"
        );
        report
    }
}

/// Four librdkafka producers, each with its first record stored, send 40
/// MiB to a gateway whose inbound and in-flight budgets are 1 MiB each
/// while Pulsar is stopped: the gateway
/// stops reading (its memory grows by less than `STALL_GROWTH_BYTES`),
/// the producers are held back (none done during the stall), and once
/// Pulsar resumes every record is acknowledged and in Pulsar.
async fn a_stalled_pulsar_slows_clients_and_bounds_memory(
    cluster: &Standalone,
    token_file: &Path,
    backend: &Arc<dyn Backend>,
) {
    let gateway = Gateway::builder(BackendKind::Pulsar)
        .pulsar_urls(
            format!("pulsar://127.0.0.1:{PORT}"),
            format!("http://127.0.0.1:{WEB_PORT}"),
        )
        .arg("--pulsar-token-file")
        .arg(token_file)
        .arg("--pulsar-max-in-flight-bytes")
        .arg((1 << 20).to_string())
        .arg("--max-inbound-bytes")
        .arg((1 << 20).to_string())
        .start()
        .await;
    let bootstrap = gateway.kafka_addr.expect("a Kafka listener").to_string();
    let topic = common::unique("stalled");
    let mut producers = Vec::new();
    for p in 0..STALL_PRODUCERS {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        producers.push(tokio::task::spawn_blocking(move || {
            BulkProducer::start(&bootstrap, &topic, &format!("p{p}"))
        }));
    }
    let mut running = Vec::new();
    for producer in producers {
        running.push(producer.await.unwrap());
    }

    // Topic and producers exist; Pulsar stops, then the clients send.
    let stopped = Stopped::stop(cluster);
    let at_stall = resident_bytes(gateway.pid());
    let mut highest = at_stall;
    for producer in &mut running {
        producer.go();
    }
    let stalled = tokio::time::Instant::now();
    while stalled.elapsed() < STALL {
        tokio::time::sleep(Duration::from_millis(100)).await;
        highest = highest.max(resident_bytes(gateway.pid()));
    }
    let held_back = running
        .iter_mut()
        .all(|p| p.child.try_wait().unwrap().is_none());
    drop(stopped);
    eprintln!(
        "while Pulsar was stopped the gateway grew from {} to {} MiB",
        at_stall >> 20,
        highest >> 20
    );
    assert!(
        held_back,
        "no producer could finish while Pulsar was stopped"
    );
    assert!(
        highest - at_stall < STALL_GROWTH_BYTES,
        "the gateway grew by {} MiB while Pulsar was stopped",
        (highest - at_stall) >> 20
    );
    for producer in running {
        let report = tokio::task::spawn_blocking(move || producer.finish())
            .await
            .unwrap();
        assert_eq!(report["acknowledged"], STALL_RECORDS);
    }

    let topic = TopicName::from_kafka(&topic, &Namespace::default()).unwrap();
    let sub = backend
        .subscribe(SubscribeRequest::new(topic, "check"))
        .await
        .unwrap();
    let mut seen = HashSet::new();
    let total = STALL_PRODUCERS * STALL_RECORDS;
    while seen.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(30), sub.receive())
            .await
            .unwrap_or_else(|_| panic!("only {} of {total} records reached Pulsar", seen.len()))
            .unwrap();
        let id = message
            .payload
            .split(|&b| b == b'.')
            .next()
            .unwrap_or_default();
        seen.insert(id.to_vec());
    }
    sub.close().await.unwrap();
}
