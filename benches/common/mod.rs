//! What every benchmark needs: a scratch directory on the disk it measures,
//! and numbers from the environment.

use std::path::{Path, PathBuf};

pub mod process;

/// A fresh directory under `BENCH_DIR` (default: the target dir's scratch
/// space, never /tmp, which may be tmpfs), removed when dropped.
#[allow(dead_code)] // not every benchmark writes files
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create BENCH_DIR");
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .expect("scratch dir")
}

/// The number in environment variable `name`, if set and valid.
pub fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// The file system type and device holding `path`, from `df`, so a table
/// says which disk it measured.
#[allow(dead_code)] // not every benchmark prints it
pub fn describe_fs(path: &Path) -> String {
    std::process::Command::new("df")
        .arg("-T")
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .nth(1)
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Starts `publishers` tasks that publish `payload` to `topic` through the
/// contract until `stop` is set; each task returns how many of its
/// publishes were acknowledged.
#[allow(dead_code)] // not every benchmark publishes through the contract
pub fn spawn_publishers<B: gateway_api::Backend + Clone>(
    backend: &B,
    topic: &gateway_api::TopicName,
    payload: &bytes::Bytes,
    publishers: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..publishers)
        .map(|_| {
            let (backend, topic) = (backend.clone(), topic.clone());
            let (payload, stop) = (payload.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    backend
                        .publish(&topic, gateway_api::NewMessage::new(payload.clone()))
                        .await
                        .expect("publish");
                    acked += 1;
                }
                acked
            })
        })
        .collect()
}
