//! Publish throughput of the embedded store, through the handler contract
//! (`Backend::publish`, as every protocol handler calls it), against the raw
//! limit of the same disk.
//!
//! For 1, 16 and 256 concurrent publishers (tokio tasks publishing 1 KiB
//! messages to one topic in a loop for a few seconds), it measures msg/s and
//! the mean group-commit size the topic's log reached. It then measures what the disk itself
//! does with that batch size: sequential writes of the same number of bytes,
//! each followed by fdatasync, into a file in the same directory. The ratio
//! says how much of the disk's synchronous-write capacity the log turns into
//! acknowledged messages. The disk's speed drifts, so the two take turns in
//! four short rounds per row and each column sums its rounds.
//!
//! ```text
//! cargo bench --bench embedded_publish
//! BENCH_DIR=/data/scratch BENCH_SECONDS=5 cargo bench --bench embedded_publish
//! ```
//!
//! `BENCH_DIR` picks the file system (default: the target dir's scratch
//! space, never /tmp, which may be tmpfs); `BENCH_SECONDS` the time per
//! measurement (default 4).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use gateway_api::topic::Namespace;
use gateway_api::{Backend, NewMessage, TopicName};
use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};

const PAYLOAD_BYTES: usize = 1024;
const PUBLISHERS: [usize; 3] = [1, 16, 256];
const ROUNDS: u32 = 4;

/// What one slice of publishing achieved.
struct Slice {
    /// Appends acknowledged.
    acked: u64,
    /// How long it ran.
    seconds: f64,
    /// Group commits the log made meanwhile.
    commits: u64,
    /// Records those commits covered.
    records: u64,
    /// Bytes those commits wrote.
    bytes: u64,
}

/// A row of the table for the log.
struct LogRow {
    /// Acknowledged messages per second.
    msgs_per_sec: f64,
    /// Mean bytes per group commit.
    batch_bytes: u64,
    /// Mean records per group commit.
    batch_records: f64,
}

fn log_stats_row(acked: u64, seconds: f64, commits: u64, bytes: u64) -> LogRow {
    LogRow {
        msgs_per_sec: acked as f64 / seconds,
        batch_bytes: bytes / commits.max(1),
        batch_records: acked as f64 / commits.max(1) as f64,
    }
}

fn main() {
    let scratch = common::scratch_dir("embedded-publish-");
    let seconds = common::env_number("BENCH_SECONDS").unwrap_or(4);
    let duration = Duration::from_secs(seconds);

    println!(
        "embedded_publish: {PAYLOAD_BYTES} B payloads, {seconds} s per measurement, in {}",
        scratch.path().display()
    );
    println!("file system: {}", common::describe_fs(scratch.path()));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // The disk's speed drifts over seconds (a shared virtual disk more so),
    // so the log and the raw test take turns in short rounds and each row
    // sums its rounds.
    let slice = duration / ROUNDS;
    let mut rows = Vec::new();
    for publishers in PUBLISHERS {
        let dir = scratch.path().join(format!("store-{publishers}"));
        let store = runtime
            .block_on(EmbeddedBackend::open(EmbeddedConfig::new(&dir)))
            .expect("open store");
        let topic = TopicName::from_kafka("bench", &Namespace::default()).expect("topic name");
        let (mut acked, mut log_secs, mut commits, mut bytes) = (0u64, 0f64, 0u64, 0u64);
        let (mut raw_msgs, mut raw_secs) = (0f64, 0f64);
        for round in 0..ROUNDS {
            let run = runtime.block_on(publish(&store, &topic, publishers, slice));
            acked += run.acked;
            log_secs += run.seconds;
            commits += run.commits;
            bytes += run.bytes;
            let records_per_fsync = run.records as f64 / run.commits.max(1) as f64;
            let raw_path = scratch.path().join(format!("raw-{publishers}-{round}"));
            let batch_bytes = run.bytes / run.commits.max(1);
            let (fsyncs, secs) = raw_fsyncs(&raw_path, batch_bytes, slice);
            raw_msgs += fsyncs as f64 * records_per_fsync;
            raw_secs += secs;
        }
        runtime.block_on(store.close()).expect("close store");
        std::fs::remove_dir_all(&dir).expect("remove store");
        let stats = log_stats_row(acked, log_secs, commits, bytes);
        rows.push((publishers, stats, raw_msgs / raw_secs));
    }

    println!();
    println!(
        "{:>10}  {:>14}  {:>14}  {:>6}  {:>16}  {:>14}",
        "publishers", "gateway msg/s", "raw msg/s", "ratio", "msgs per fsync", "bytes per fsync"
    );
    for (publishers, run, raw) in rows {
        println!(
            "{:>10}  {:>14.0}  {:>14.0}  {:>6.2}  {:>16.1}  {:>14}",
            publishers,
            run.msgs_per_sec,
            raw,
            run.msgs_per_sec / raw,
            run.batch_records,
            run.batch_bytes
        );
    }
}

/// `publishers` tasks publish 1 KiB messages to `topic` for `duration`.
async fn publish(
    store: &EmbeddedBackend,
    topic: &TopicName,
    publishers: usize,
    duration: Duration,
) -> Slice {
    let payload = Bytes::from(vec![0xA5u8; PAYLOAD_BYTES]);
    let stop = Arc::new(AtomicBool::new(false));
    // The first publish creates the topic; stats exist from then on.
    store
        .publish(topic, NewMessage::new(payload.clone()))
        .await
        .expect("first publish");
    let before = store.log_stats(topic).await.expect("stats");
    let started = Instant::now();
    let tasks = common::spawn_publishers(store, topic, &payload, publishers, &stop);
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("publisher task");
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = store.log_stats(topic).await.expect("stats");
    Slice {
        acked,
        seconds,
        commits: after.group_commits - before.group_commits,
        records: after.records - before.records,
        bytes: after.bytes - before.bytes,
    }
}

/// Sequential writes of `batch_bytes` each followed by fdatasync, appended to
/// a fresh file, for `duration`: the disk's own rate for that batch size.
/// Returns (fsyncs, seconds).
fn raw_fsyncs(path: &Path, batch_bytes: u64, duration: Duration) -> (u64, f64) {
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("raw file");
    let batch = vec![0x5Au8; batch_bytes.max(1) as usize];
    let mut position = 0u64;
    let mut fsyncs = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        file.write_all_at(&batch, position).expect("raw write");
        file.sync_data().expect("raw fdatasync");
        position += batch.len() as u64;
        fsyncs += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    (fsyncs, seconds)
}
