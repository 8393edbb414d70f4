//! Memory and speed of a consumer draining a large backlog from the embedded
//! store, through the handler contract (`Backend::subscribe`, `receive`,
//! `ack`, as every protocol handler calls them).
//!
//! It writes two backlogs, one of `BACKLOG_GIB` GiB and one a tenth of that,
//! each into its own store. A fresh child process then opens each store, and
//! one consumer drains it from the earliest message, acknowledging each
//! message. Before each drain the segment files are evicted from the page
//! cache, so the drain reads from the disk. The child reports its resident
//! memory after opening the store and its peak (`VmHWM`) at the end.
//!
//! Bounded memory shows as a peak that does not grow with the backlog: the
//! two rows side by side differ by ten times the data and should differ by
//! little in memory. The speed column is set against the same disk's raw
//! sequential read of the same segment files (also evicted first), as a ratio.
//!
//! ```text
//! cargo bench --bench embedded_backlog
//! BACKLOG_GIB=2 BACKLOG_PAYLOAD=1024 cargo bench --bench embedded_backlog
//! ```
//!
//! `BENCH_DIR` picks the file system (default: the target dir's scratch
//! space), `BACKLOG_GIB` the large backlog (default 10) and
//! `BACKLOG_PAYLOAD` the message size in bytes (default 4096).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod common;

use bytes::Bytes;
use gateway_api::topic::Namespace;
use gateway_api::{Backend, NewMessage, StartPosition, SubscribeRequest, TopicName};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};

/// Set in the child process: the store to drain.
const CHILD_DIR: &str = "BACKLOG_DRAIN_DIR";
/// Set in the child process: how many messages the backlog holds.
const CHILD_COUNT: &str = "BACKLOG_DRAIN_COUNT";
/// Concurrent publishers that fill a backlog.
const FILL_PUBLISHERS: u64 = 256;

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let count: u64 = common::env_number(CHILD_COUNT).expect("child needs BACKLOG_DRAIN_COUNT");
        drain_child(Path::new(&dir), count);
        return;
    }
    let gib = common::env_number("BACKLOG_GIB").unwrap_or(10);
    let payload = common::env_number("BACKLOG_PAYLOAD").unwrap_or(4096) as usize;
    let scratch = common::scratch_dir("embedded-backlog-");
    println!(
        "embedded_backlog: {payload} B payloads, backlogs of {} and {gib} GiB, in {}",
        gib as f64 / 10.0,
        scratch.path().display()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for (name, bytes) in [("small", (gib << 30) / 10), ("large", gib << 30)] {
        let dir = scratch.path().join(name);
        let count = bytes / payload as u64;
        let started = Instant::now();
        runtime.block_on(fill(&dir, count, payload));
        println!(
            "filled {name}: {count} messages, {:.2} GiB in {:.1} s",
            (count * payload as u64) as f64 / (1u64 << 30) as f64,
            started.elapsed().as_secs_f64()
        );
        let segments = segment_files(&dir);
        evict(&segments);
        let drained = run_child(&dir, count);
        evict(&segments);
        let raw = raw_read(&segments);
        rows.push((name, count, drained, raw));
        std::fs::remove_dir_all(&dir).expect("remove store");
    }

    println!();
    println!(
        "{:>7}  {:>10}  {:>10}  {:>12}  {:>12}  {:>12}  {:>12}  {:>6}",
        "backlog",
        "messages",
        "GiB",
        "RSS open MiB",
        "RSS peak MiB",
        "drain MiB/s",
        "raw MiB/s",
        "ratio"
    );
    for (name, count, drained, raw_mib_s) in rows {
        let gib = drained.bytes as f64 / (1u64 << 30) as f64;
        let drain_mib_s = drained.bytes as f64 / (1u64 << 20) as f64 / drained.seconds;
        println!(
            "{:>7}  {:>10}  {:>10.2}  {:>12.1}  {:>12.1}  {:>12.0}  {:>12.0}  {:>6.2}",
            name,
            count,
            gib,
            drained.rss_open_kib as f64 / 1024.0,
            drained.rss_peak_kib as f64 / 1024.0,
            drain_mib_s,
            raw_mib_s,
            drain_mib_s / raw_mib_s
        );
    }
}

/// Publishes `count` messages of `payload` bytes into a new store at `dir`.
async fn fill(dir: &Path, count: u64, payload: usize) {
    let store = EmbeddedBackend::open(EmbeddedConfig::new(dir))
        .await
        .expect("open store");
    let topic = backlog_topic();
    let body = Bytes::from(vec![0xA5u8; payload]);
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..FILL_PUBLISHERS)
        .map(|_| {
            let (store, topic, body, next) =
                (store.clone(), topic.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    store
                        .publish(&topic, NewMessage::new(body.clone()))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher task");
    }
    store.close().await.expect("close store");
}

fn backlog_topic() -> TopicName {
    TopicName::from_kafka("backlog", &Namespace::default()).expect("topic name")
}

/// What the child reported.
struct Drained {
    /// Payload bytes received.
    bytes: u64,
    /// Seconds from subscribe to the last message.
    seconds: f64,
    /// Resident memory after opening the store, KiB.
    rss_open_kib: u64,
    /// Peak resident memory of the child's whole life, KiB.
    rss_peak_kib: u64,
}

/// Drains the store at `dir` in a fresh process, so its peak memory is the
/// drain's alone.
fn run_child(dir: &Path, count: u64) -> Drained {
    let exe = std::env::current_exe().expect("own path");
    let output = Command::new(exe)
        .env(CHILD_DIR, dir)
        .env(CHILD_COUNT, count.to_string())
        .output()
        .expect("run drain child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "drain child failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DRAINED "))
        .expect("child result line");
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(|f| f.parse().expect("number"))
        .collect();
    Drained {
        bytes: fields[0] as u64,
        seconds: fields[1],
        rss_open_kib: fields[2] as u64,
        rss_peak_kib: fields[3] as u64,
    }
}

/// The child: opens the store, drains `count` messages with one consumer
/// that acknowledges each, and prints `DRAINED bytes seconds rss_open peak`.
fn drain_child(dir: &Path, count: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = EmbeddedBackend::open(EmbeddedConfig::new(dir))
            .await
            .expect("open store");
        let rss_open = proc_status_kib("VmRSS");
        let topic = backlog_topic();
        let started = Instant::now();
        let consumer = store
            .subscribe(
                SubscribeRequest::new(topic.clone(), "drain")
                    .initial_position(StartPosition::Earliest),
            )
            .await
            .expect("subscribe");
        let mut bytes = 0u64;
        for _ in 0..count {
            let message = consumer.receive().await.expect("receive");
            bytes += message.payload.len() as u64;
            consumer.ack(&topic, message.id).await.expect("ack");
        }
        let seconds = started.elapsed().as_secs_f64();
        consumer.close().await.expect("close consumer");
        store.close().await.expect("close store");
        let peak = proc_status_kib("VmHWM");
        println!("DRAINED {bytes} {seconds} {rss_open} {peak}");
    });
}

/// A `kB` field of /proc/self/status.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("status field")
}

/// Every `.log` segment under `dir`, in name order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Drops the files' pages from the page cache, so the next read comes from
/// the disk. They were fsynced when written, so their pages are clean.
fn evict(files: &[PathBuf]) {
    for path in files {
        let file = File::open(path).expect("open segment");
        posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).expect("posix_fadvise");
    }
}

/// Reads the files sequentially in 1 MiB chunks: the disk's own rate, MiB/s.
fn raw_read(files: &[PathBuf]) -> f64 {
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let started = Instant::now();
    for path in files {
        let mut file = File::open(path).expect("open segment");
        loop {
            let n = file.read(&mut buffer).expect("read segment");
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    bytes as f64 / (1u64 << 20) as f64 / started.elapsed().as_secs_f64()
}
