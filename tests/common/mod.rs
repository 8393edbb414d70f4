//! The end-to-end helper: runs the real `pulsar-gateway` binary with a
//! temporary data directory, finds the addresses it bound in its log, and
//! waits (with a deadline, never a fixed sleep) until it is ready.
//!
//! ```ignore
//! mod common;
//! use common::{BackendKind, Gateway};
//!
//! let gw = Gateway::start(BackendKind::Embedded).await;
//! assert_eq!(gw.get("/healthz").await.status, 200);
//! ```
//!
//! Every listener is given `127.0.0.1:0`, so parallel tests never fight
//! over ports; the gateway logs `<name> listening on <addr>` per listener and
//! the helper reads the addresses from there. The process is killed when the
//! [`Gateway`] is dropped.

#![allow(dead_code)] // Each test binary uses a different part.

pub mod tokens;

use std::ffi::OsString;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a gateway may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The gateway logs this once every listener is up.
pub const STARTED_MARKER: &str = " started (backend: ";

/// The interval at which [`eventually`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Which backend the gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The embedded store, in a temporary directory.
    Embedded,
    /// The real Pulsar standalone of [`test_pulsar_urls`].
    Pulsar,
}

/// The service and admin URLs of the Pulsar standalone `scripts/test.sh`
/// starts (`PULSAR_GATEWAY_TEST_PULSAR_URL`,
/// `PULSAR_GATEWAY_TEST_PULSAR_WEB_URL`). Panics when they are unset: the
/// Pulsar cases need a real cluster and are never skipped.
pub fn test_pulsar_urls() -> (String, String) {
    let url = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the Pulsar backend's cases need a real Pulsar; \
                 run scripts/test.sh, which starts one (deploy/pulsar-standalone.sh)"
            )
        })
    };
    (
        url("PULSAR_GATEWAY_TEST_PULSAR_URL"),
        url("PULSAR_GATEWAY_TEST_PULSAR_WEB_URL"),
    )
}

/// Waits until `condition` holds, re-checking it every 20 ms; false if it
/// still does not hold after `within`.
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The test virtual environment's interpreter (scripts/test.sh sets
/// `PULSAR_GATEWAY_PYTHON`).
pub fn python() -> String {
    std::env::var("PULSAR_GATEWAY_PYTHON").unwrap_or_else(|_| {
        panic!("PULSAR_GATEWAY_PYTHON is not set: run scripts/test.sh, which creates the venv")
    })
}

/// The path of a client program under `tests/clients/`.
pub fn client_script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `name` made unique to this run (a topic, a group).
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{nanos:x}")
}

/// Runs a client program to completion, fails the test (with its output)
/// unless it succeeded, and parses the JSON it printed last (client
/// libraries may log before it). `what` names it in failures.
pub async fn run_json(what: String, mut command: Command) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let last = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {stdout}"))
    })
    .await
    .expect("the client task")
}

/// An HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body as text.
    pub body: String,
}

/// Sends a GET and reads the whole response, whatever its status.
pub async fn http_get(url: String) -> Result<HttpResponse, String> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut response = agent.get(&url).call().map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok(HttpResponse {
            status,
            content_type,
            body,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Everything the process wrote to stdout and stderr so far, interleaved
/// line by line as it arrived.
#[derive(Debug, Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    /// A copy of the text so far.
    pub fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether some line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Starts copying `source` into this buffer on a thread of its own,
    /// which ends when `source` closes.
    fn capture(&self, mut source: impl Read + Send + 'static) -> JoinHandle<()> {
        let sink = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = source.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        })
    }
}

/// How a gateway process ended, for the tests of failed start-ups.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed.
    pub output: String,
}

impl Exited {
    /// The lines starting with `error:`.
    pub fn error_lines(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }
}

/// Sets up a gateway process before it starts.
#[derive(Debug)]
pub struct GatewayBuilder {
    /// Which backend to run on.
    backend: BackendKind,
    /// Extra command-line arguments, after the helper's own (so they win).
    args: Vec<OsString>,
    /// Extra environment variables.
    env: Vec<(OsString, OsString)>,
    /// Whether the helper passes `--http-addr 127.0.0.1:0`.
    default_http: bool,
    /// The data directory, if not a fresh temporary one.
    data_dir: Option<PathBuf>,
    /// For the Pulsar backend: a cluster other than the test standalone
    /// (service URL, admin URL).
    pulsar_urls: Option<(String, String)>,
}

impl GatewayBuilder {
    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Leaves `--http-addr` to the test (flag, env or config file).
    pub fn no_default_http(mut self) -> Self {
        self.default_http = false;
        self
    }

    /// Uses this data directory instead of a temporary one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Runs on the Pulsar cluster at these URLs instead of the test
    /// standalone.
    pub fn pulsar_urls(mut self, url: impl Into<String>, web_url: impl Into<String>) -> Self {
        self.pulsar_urls = Some((url.into(), web_url.into()));
        self
    }

    fn spawn(&self) -> (Child, Output, Vec<JoinHandle<()>>, tempfile::TempDir) {
        let temp = tempfile::tempdir().expect("create a temporary directory");
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| temp.path().join("data"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulsar-gateway"));
        // The test's own environment must not leak into the gateway's config.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PULSAR_GATEWAY_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env_remove("RUST_LOG");
        match self.backend {
            BackendKind::Embedded => cmd.arg("--backend").arg("embedded"),
            BackendKind::Pulsar => {
                let (url, web_url) = self.pulsar_urls.clone().unwrap_or_else(test_pulsar_urls);
                cmd.arg("--backend")
                    .arg("pulsar")
                    .arg("--pulsar-url")
                    .arg(url)
                    .arg("--pulsar-admin-url")
                    .arg(web_url)
            }
        };
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .arg("--log-level")
            .arg("info");
        for flag in ["--kafka-addr", "--mqtt-addr", "--amqp-addr"] {
            cmd.arg(flag).arg("127.0.0.1:0");
        }
        if self.default_http {
            cmd.arg("--http-addr").arg("127.0.0.1:0");
        }
        // Each gateway its own Kafka cluster, so that tests sharing the test
        // Pulsar never see each other's brokers (a killed one stays listed
        // for seconds); a test of several gateways names one cluster.
        if !self.args.iter().any(|a| a == "--kafka-cluster-id") {
            let id = temp.path().file_name().map_or_else(
                || format!("test-{}", std::process::id()),
                |name| name.to_string_lossy().into_owned(),
            );
            cmd.arg("--kafka-cluster-id").arg(id);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(temp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run the pulsar-gateway binary");
        let output = Output::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(output.capture(out));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(output.capture(err));
        }
        (child, output, readers, temp)
    }

    /// Starts the gateway and waits until it logged its start and, when it
    /// serves HTTP, `/readyz` answers 200. Panics with the gateway's output
    /// if it exits or is not ready within [`START_TIMEOUT`].
    pub async fn start(self) -> Gateway {
        self.launch(true).await
    }

    /// Like [`GatewayBuilder::start`], without waiting for `/readyz`: for a
    /// gateway whose backend cannot be reached.
    pub async fn start_unready(self) -> Gateway {
        self.launch(false).await
    }

    async fn launch(self, wait_ready: bool) -> Gateway {
        let (child, output, _readers, temp) = self.spawn();
        let mut gw = Gateway {
            child,
            output,
            _temp: temp,
            http_addr: None,
            kafka_addr: None,
            mqtt_addr: None,
            amqp_addr: None,
        };
        let started = eventually(START_TIMEOUT, || {
            let done = gw.output.contains(STARTED_MARKER);
            let exited = matches!(gw.child.try_wait(), Ok(Some(_)));
            async move { done || exited }
        })
        .await;
        if let Ok(Some(status)) = gw.child.try_wait() {
            panic!(
                "the gateway exited during start-up ({status}):\n{}",
                gw.output()
            );
        }
        assert!(started, "no start-up line in time:\n{}", gw.output());
        gw.http_addr = gw.logged_addr("http");
        gw.kafka_addr = gw.logged_addr("kafka");
        gw.mqtt_addr = gw.logged_addr("mqtt");
        gw.amqp_addr = gw.logged_addr("amqp");
        if wait_ready && gw.http_addr.is_some() {
            let url = gw.url("/readyz");
            let ready = eventually(START_TIMEOUT, || {
                let url = url.clone();
                async move { matches!(http_get(url).await, Ok(r) if r.status == 200) }
            })
            .await;
            assert!(ready, "/readyz never answered 200:\n{}", gw.output());
        }
        gw
    }

    /// Runs the gateway expecting it to exit by itself (a failed start-up),
    /// within `within`; panics if it is still running then.
    pub async fn run_to_exit(self, within: Duration) -> Exited {
        let (mut child, output, readers, _temp) = self.spawn();
        let status = exit_within(&mut child, within).await;
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the gateway did not exit within {within:?}:\n{}",
                output.text()
            );
        };
        // The pipes close at exit: the readers finish once they drained them.
        for reader in readers {
            let _ = reader.join();
        }
        Exited {
            status,
            output: output.text(),
        }
    }
}

/// A running gateway process. Killed on drop.
#[derive(Debug)]
pub struct Gateway {
    /// The process.
    child: Child,
    /// What it printed.
    output: Output,
    /// Holds the data directory (and the working directory) until the end.
    _temp: tempfile::TempDir,
    /// The HTTP address it listens on, if it serves HTTP.
    pub http_addr: Option<SocketAddr>,
    /// The Kafka address, once a Kafka handler exists.
    pub kafka_addr: Option<SocketAddr>,
    /// The MQTT address, once an MQTT handler exists.
    pub mqtt_addr: Option<SocketAddr>,
    /// The AMQP address, once an AMQP handler exists.
    pub amqp_addr: Option<SocketAddr>,
}

impl Gateway {
    /// Starts a gateway with the defaults of the helper.
    pub async fn start(backend: BackendKind) -> Gateway {
        Gateway::builder(backend).start().await
    }

    /// Prepares a gateway to adjust before starting it.
    pub fn builder(backend: BackendKind) -> GatewayBuilder {
        GatewayBuilder {
            backend,
            args: Vec::new(),
            env: Vec::new(),
            default_http: true,
            data_dir: None,
            pulsar_urls: None,
        }
    }

    /// The URL of `path` on the HTTP listener.
    pub fn url(&self, path: &str) -> String {
        match self.http_addr {
            Some(addr) => format!("http://{addr}{path}"),
            None => panic!("this gateway has no HTTP listener"),
        }
    }

    /// GETs `path` from the HTTP listener; panics if the request fails.
    pub async fn get(&self, path: &str) -> HttpResponse {
        match http_get(self.url(path)).await {
            Ok(response) => response,
            Err(e) => panic!("GET {path} failed: {e}\n{}", self.output()),
        }
    }

    /// The value of the counter `name` (without its `_total`) for
    /// `labels` (as written between the braces) in `/metrics`; 0 when it
    /// is absent.
    pub async fn counter(&self, name: &str, labels: &str) -> u64 {
        self.counter_series(name)
            .await
            .into_iter()
            .find_map(|(l, value)| (l == labels).then_some(value))
            .unwrap_or(0)
    }

    /// The sum of the counter `name` over every series whose labels hold
    /// `label` (as `key="value"`).
    pub async fn counter_sum(&self, name: &str, label: &str) -> u64 {
        self.counter_series(name)
            .await
            .into_iter()
            .filter(|(labels, _)| labels.contains(label))
            .map(|(_, value)| value)
            .sum()
    }

    /// The value of the gauge `name` with exactly `labels` (as written
    /// between the braces), 0 when it has no such series.
    pub async fn gauge(&self, name: &str, labels: &str) -> u64 {
        self.series(&format!("pulsar_gateway_{name}"))
            .await
            .into_iter()
            .find_map(|(l, value)| (l == labels).then_some(value))
            .unwrap_or(0)
    }

    /// Every series of the counter `name` in `/metrics`: its labels (as
    /// written between the braces) and its value.
    async fn counter_series(&self, name: &str) -> Vec<(String, u64)> {
        self.series(&format!("pulsar_gateway_{name}_total")).await
    }

    /// Every series of the metric `metric` (its full name) in `/metrics`.
    async fn series(&self, metric: &str) -> Vec<(String, u64)> {
        let metrics = self.get("/metrics").await.body;
        let prefix = format!("{metric}{{");
        metrics
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix)?.split_once("} "))
            .map(|(labels, value)| {
                let value = value
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{metric}{{{labels}}} {value}: {e}"));
                (labels.to_owned(), value)
            })
            .collect()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory (a temporary one unless the builder set it).
    pub fn temp_dir(&self) -> &Path {
        self._temp.path()
    }

    /// Kills the gateway (SIGKILL): it writes nothing more, as if its
    /// machine were lost.
    pub fn kill(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("send {signal} to the gateway: {e}"));
    }

    /// Waits up to `within` for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        exit_within(&mut self.child, within).await
    }

    /// The address logged as `<name> listening on <addr>`.
    fn logged_addr(&self, name: &str) -> Option<SocketAddr> {
        let marker = format!(" {name} listening on ");
        self.output().lines().find_map(|line| {
            let rest = &line[line.find(&marker)? + marker.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Waits up to `within` for `child` to exit; its status if it did.
async fn exit_within(child: &mut std::process::Child, within: Duration) -> Option<ExitStatus> {
    let mut status = None;
    eventually(within, || {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
        }
        let done = status.is_some();
        async move { done }
    })
    .await;
    status
}
