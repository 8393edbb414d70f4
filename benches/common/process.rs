//! Processes a benchmark starts (brokers, gateways) and stops, also when
//! a step fails; ports and health checks.

#![allow(dead_code)] // not every benchmark uses every helper

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker or gateway may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped process may take to exit before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A process this bench started, stopped when dropped (SIGTERM, then
/// SIGKILL after [`STOP_TIMEOUT`]), so a failing step leaves nothing behind.
pub struct Proc {
    /// For messages.
    pub name: String,
    /// The running process.
    pub child: Child,
    /// Where its output goes, shown when it fails to start.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its stdout and stderr in `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create a log file");
        let err = out.try_clone().expect("clone a log file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    /// Waits until `ready` holds, panicking with the log's tail if the
    /// process exits or [`START_TIMEOUT`] passes first.
    pub fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if ready(&log) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.name,
                    tail(&log)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not {what} within {START_TIMEOUT:?}:\n{}",
                    self.name,
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log, for failure messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Whether `GET path` on the local `port` answers 200 (plain HTTP/1.0, so
/// the bench needs no HTTP client).
pub fn http_ok(port: u16, path: &str) -> bool {
    use std::io::Write as _;
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}
