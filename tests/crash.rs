//! Crash test of the embedded store: a child process publishes with
//! acknowledgements and is killed with SIGKILL at random points, several
//! times. After each kill the store is reopened and every acknowledged
//! message must be there, in its publisher's order, exactly once.
//!
//! The test binary plays both parts (`harness = false`): run plainly it is
//! the parent; with `CRASH_CHILD_DIR` set it is the publishing child.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway_api::topic::Namespace;
use gateway_api::{Backend, NewMessage, StartPosition, TopicName};
use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};

/// Kill-and-restart rounds.
const ROUNDS: u32 = 6;
/// Concurrent publishers in the child (so kills land inside group commits).
const PUBLISHERS: u32 = 16;

fn topic() -> TopicName {
    TopicName::from_kafka("crash", &Namespace::default()).expect("valid name")
}

fn config(dir: &str) -> EmbeddedConfig {
    let mut config = EmbeddedConfig::new(dir);
    // Small segments so kills also land around segment rolls.
    config.log.segment_bytes = 256 * 1024;
    config
}

fn main() {
    if let Ok(dir) = std::env::var("CRASH_CHILD_DIR") {
        let round: u32 = std::env::var("CRASH_ROUND")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child(&dir, round);
        return;
    }
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(parent);
    match outcome {
        Ok(()) => {
            println!(
                "acknowledged_messages_survive_sigkill ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            println!("crash: 1 passed, 0 failed");
        }
        Err(_) => {
            println!("acknowledged_messages_survive_sigkill ... FAILED");
            println!("crash: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}

/// Publishes until killed, printing `ack <round> <publisher> <seq> <offset>`
/// for each acknowledged message.
fn child(dir: &str, round: u32) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let backend = Arc::new(EmbeddedBackend::open(config(dir)).await.expect("open"));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
        for publisher in 0..PUBLISHERS {
            let backend = backend.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for seq in 0u64.. {
                    let payload = format!("{round}-{publisher}-{seq}-{}", "x".repeat(200));
                    let id = backend
                        .publish(&topic(), NewMessage::new(payload))
                        .await
                        .expect("publish");
                    let line = format!("ack {round} {publisher} {seq} {}\n", id.offset);
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            // The parent learns of an ack only after it is persisted.
            if out
                .write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return;
            }
        }
    });
}

/// A small xorshift: no dependency for a handful of random delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_str = dir.path().to_str().expect("utf-8 path").to_owned();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    // (round, publisher, seq) -> offset the child was told.
    let mut acked: BTreeMap<(u32, u32, u64), u64> = BTreeMap::new();
    let exe = std::env::current_exe().expect("own path");
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .env("CRASH_CHILD_DIR", &dir_str)
            .env("CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut lines = vec![lines_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child acknowledges a first message")];
        // The kill point: a random moment while it is publishing.
        let delay = Duration::from_millis(1 + rng.next() % 300);
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader thread");
        lines.extend(lines_rx.try_iter());
        let before = acked.len();
        for line in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["ack", r, p, s, o] = f.as_slice() {
                let key = (r.parse().unwrap(), p.parse().unwrap(), s.parse().unwrap());
                acked.insert(key, o.parse().unwrap());
            }
        }
        println!(
            "round {round}: killed after {delay:?}, {} acknowledged",
            acked.len() - before
        );
        verify(&dir_str, &acked);
    }
    assert!(
        acked.len() > 1000,
        "the child acknowledged too few messages ({}) for the test to mean anything",
        acked.len()
    );
}

/// Reopens the store (recovering the torn tail) and checks every
/// acknowledged message is present once, in publisher order, at its offset.
fn verify(dir: &str, acked: &BTreeMap<(u32, u32, u64), u64>) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let backend = EmbeddedBackend::open(config(dir))
            .await
            .expect("reopen after SIGKILL");
        let range = backend.offsets(&topic()).await.expect("offsets");
        let reader = backend
            .reader(&topic(), StartPosition::Earliest)
            .await
            .expect("reader");
        let mut stored: HashMap<(u32, u32, u64), u64> = HashMap::new();
        let mut last_seq: HashMap<(u32, u32), u64> = HashMap::new();
        for expected_offset in range.earliest..range.next {
            let m = reader.next().await.expect("read");
            assert_eq!(m.id.offset, expected_offset, "offsets are contiguous");
            let text = String::from_utf8_lossy(&m.payload);
            let mut parts = text.splitn(4, '-');
            let mut field = || {
                parts
                    .next()
                    .and_then(|f| f.parse::<u64>().ok())
                    .expect("payload")
            };
            let key = (field() as u32, field() as u32, field());
            assert!(
                stored.insert(key, m.id.offset).is_none(),
                "message {key:?} stored twice"
            );
            if let Some(prev) = last_seq.insert((key.0, key.1), key.2) {
                assert!(prev < key.2, "publisher {key:?} out of order");
            }
        }
        for (key, offset) in acked {
            assert_eq!(
                stored.get(key),
                Some(offset),
                "acknowledged message {key:?} lost or moved"
            );
        }
        backend.close().await.expect("close");
    });
}
