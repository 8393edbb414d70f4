//! Behaviour tests of the partition log, each on its own temporary directory.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use gateway_api::NewMessage;

use super::*;

/// Frame bytes of a record with `payload_len` bytes of payload and nothing
/// else: header 8 + offset 8 + time 8 + flags 1 + property count 4.
const fn frame(payload_len: usize) -> u64 {
    (29 + payload_len) as u64
}

/// Frame bytes of each [`payload`] record (its payload is 79 bytes).
const RECORD: u64 = frame(79);

fn small_segments(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("message-{i:06}-{}", "x".repeat(64)))
}

async fn append_n(log: &PartitionLog, n: u64) {
    for i in 0..n {
        let next = log.next_offset();
        let (offset, _) = log.append(NewMessage::new(payload(next))).await.unwrap();
        assert_eq!(offset, next, "append {i}");
    }
}

async fn read_all(log: &PartitionLog, from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let batch = log.read(next, 100, 1 << 16).await.unwrap();
        let Some(last) = batch.last() else {
            return out;
        };
        next = last.offset + 1;
        out.extend(batch);
    }
}

fn assert_payloads(records: &[Record], from: u64) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, from + i as u64);
        assert_eq!(
            r.payload,
            payload(r.offset),
            "payload of offset {}",
            r.offset
        );
    }
}

#[tokio::test]
async fn append_then_read_returns_key_properties_and_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path().join("p0"), LogConfig::default())
        .await
        .unwrap();
    let mut message = NewMessage::new("hello")
        .with_key("device-7")
        .with_property("a", "1")
        .with_property("a", "2")
        .with_property("unicode", "héllo");
    message.event_time = Some(1_700_000_000_123);
    let (offset, publish_time) = log.append(message.clone()).await.unwrap();
    let (second, second_time) = log.append(NewMessage::new("")).await.unwrap();
    assert_eq!((offset, second), (0, 1));
    assert!(second_time >= publish_time && publish_time > 1_600_000_000_000);

    let records = log.read(0, 10, 1 << 20).await.unwrap();
    assert_eq!(records.len(), 2);
    let r = &records[0];
    assert_eq!(r.offset, 0);
    assert_eq!(r.publish_time, publish_time);
    assert_eq!(r.payload, message.payload);
    assert_eq!(r.key, message.key);
    assert_eq!(r.properties, message.properties);
    assert_eq!(r.event_time, Some(1_700_000_000_123));
    assert_eq!(records[1].payload, Bytes::new());
    assert_eq!(records[1].key, None);
    assert_eq!(records[1].event_time, None);
    assert_eq!((log.start_offset(), log.next_offset()), (0, 2));
    assert_eq!(
        log.size_bytes(),
        super::record::frame_len(&message) as u64 + frame(0)
    );
    assert!(log.read(2, 10, 1 << 20).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_get_contiguous_offsets_in_few_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(256 << 10))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..256u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..20u64 {
                    let m = NewMessage::new(format!("{t}:{i}")).with_key(t.to_string());
                    got.push((log.append(m).await.unwrap().0, t, i));
                }
                got
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let offsets: HashSet<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(offsets.len(), 256 * 20);
    assert_eq!(offsets.iter().max(), Some(&(256 * 20 - 1)));
    assert_eq!(log.next_offset(), 256 * 20);

    let records = read_all(&log, 0).await;
    assert_eq!(records.len(), 256 * 20);
    for (offset, t, i) in seen {
        let r = &records[offset as usize];
        assert_eq!(r.offset, offset);
        assert_eq!(r.payload, Bytes::from(format!("{t}:{i}")));
    }
    for pair in records.windows(2) {
        assert!(pair[1].publish_time >= pair[0].publish_time);
    }
    let stats = log.stats();
    assert_eq!(stats.records, 256 * 20);
    assert!(
        stats.group_commits < stats.records / 4,
        "group commit should coalesce: {stats:?}"
    );
}

#[tokio::test]
async fn segments_roll_by_size_and_reads_cross_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    // About 10 records per segment.
    let log = PartitionLog::open(dir.path(), small_segments(RECORD * 10))
        .await
        .unwrap();
    append_n(&log, 35).await;
    for base in [0, 10, 20, 30] {
        assert!(seg_path(dir.path(), base).exists(), "segment {base}");
    }
    assert!(dir.path().join(format!("{:020}.index", 0)).exists());
    assert!(dir.path().join(format!("{:020}.timeindex", 20)).exists());
    assert!(!dir.path().join(format!("{:020}.index", 30)).exists());
    assert_eq!(log.size_bytes(), 35 * RECORD);

    let across = log.read(7, 6, 1 << 20).await.unwrap();
    assert_payloads(&across, 7);
    assert_eq!(across.len(), 6);
    assert_payloads(&read_all(&log, 0).await, 0);
    assert_eq!(read_all(&log, 0).await.len(), 35);
}

#[tokio::test]
async fn reopen_keeps_records_offsets_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(RECORD * 10);
    let log = PartitionLog::open(dir.path(), config.clone())
        .await
        .unwrap();
    append_n(&log, 25).await;
    let before = read_all(&log, 0).await;
    log.close().await.unwrap();
    drop(log);

    // Also lose one sealed segment's index files: it is rescanned.
    std::fs::remove_file(dir.path().join(format!("{:020}.index", 10))).unwrap();

    let log = PartitionLog::open(dir.path(), config.clone())
        .await
        .unwrap();
    assert_eq!((log.start_offset(), log.next_offset()), (0, 25));
    assert_eq!(read_all(&log, 0).await, before);
    assert!(dir.path().join(format!("{:020}.index", 10)).exists());
    append_n(&log, 10).await;
    let (_, t) = log.append(NewMessage::new("later")).await.unwrap();
    assert!(t >= before.last().unwrap().publish_time);
    log.close().await.unwrap();

    let log = PartitionLog::open(dir.path(), config).await.unwrap();
    assert_eq!(log.next_offset(), 36);
    assert_payloads(&read_all(&log, 0).await[..35], 0);
}

#[tokio::test]
async fn torn_tail_is_truncated_and_appends_continue() {
    for tail in [
        // Half of a real frame.
        {
            let mut frame = Vec::new();
            super::record::encode(&mut frame, 5, 1, &NewMessage::new(payload(5)));
            frame.truncate(frame.len() / 2);
            frame
        },
        // Zeros, as a file system leaves after a crash.
        vec![0u8; 700],
        // A header claiming more than the file holds.
        vec![0, 0, 1, 0, 1, 2, 3, 4, 9],
        // Random garbage.
        (0..300u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        append_n(&log, 5).await;
        log.close().await.unwrap();
        let path = seg_path(dir.path(), 0);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&tail)
            .unwrap();

        let log = PartitionLog::open(dir.path(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.next_offset(), 5, "tail {tail:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 5 * RECORD);
        append_n(&log, 2).await;
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 7);
        assert_payloads(&all, 0);
    }
}

#[tokio::test]
async fn corruption_in_the_middle_of_a_segment_stops_open_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default())
        .await
        .unwrap();
    append_n(&log, 10).await;
    log.close().await.unwrap();
    let path = seg_path(dir.path(), 0);
    // Flip one payload byte of record 3; records 4..9 stay valid.
    let position = 3 * RECORD;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position + 40).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], position + 40).unwrap();

    match PartitionLog::open(dir.path(), LogConfig::default()).await {
        Err(LogError::Corrupt {
            path: p,
            position: at,
            reason,
        }) => {
            assert_eq!(p, path);
            assert_eq!(at, position);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was cut off.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 10 * RECORD);
}

#[tokio::test]
async fn a_damaged_sealed_segment_is_an_error_on_read_never_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(RECORD * 10))
        .await
        .unwrap();
    append_n(&log, 15).await;
    let path = seg_path(dir.path(), 0);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"Z", 2 * RECORD + 50).unwrap();

    assert_eq!(log.read(0, 2, 1 << 20).await.unwrap().len(), 2);
    match log.read(0, 10, 1 << 20).await {
        Err(LogError::Corrupt {
            path: p, position, ..
        }) => assert_eq!((p, position), (path.clone(), 2 * RECORD)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_payloads(&log.read(10, 10, 1 << 20).await.unwrap(), 10);
}

#[tokio::test]
async fn reads_respect_max_bytes_but_return_at_least_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(1 << 20))
        .await
        .unwrap();
    append_n(&log, 50).await;
    let one = log.read(0, 100, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    let three = log.read(10, 100, (RECORD * 3 + 10) as usize).await.unwrap();
    assert_eq!(three.len(), 3);
    assert_payloads(&three, 10);
    let capped = log.read(10, 4, 1 << 20).await.unwrap();
    assert_eq!(capped.len(), 4);
    assert!(log.read(0, 0, 1 << 20).await.unwrap().is_empty());
    assert!(log.read(50, 10, 1 << 20).await.unwrap().is_empty());
    assert!(log.read(1000, 10, 1 << 20).await.unwrap().is_empty());
}

#[tokio::test]
async fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(RECORD * 7))
        .await
        .unwrap();
    for _ in 0..6 {
        append_n(&log, 5).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let all = read_all(&log, 0).await;
    assert_eq!(all.len(), 30);
    for r in &all {
        let first = all
            .iter()
            .find(|x| x.publish_time >= r.publish_time)
            .unwrap();
        assert_eq!(
            log.offset_for_timestamp(r.publish_time).await.unwrap(),
            Some(first.offset)
        );
        let after = all.iter().find(|x| x.publish_time > r.publish_time);
        assert_eq!(
            log.offset_for_timestamp(r.publish_time + 1).await.unwrap(),
            after.map(|x| x.offset)
        );
    }
    assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
}

#[tokio::test]
async fn retention_deletes_only_old_sealed_segments_below_keep_from() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments(RECORD * 10))
        .await
        .unwrap();
    append_n(&log, 45).await; // segments 0, 10, 20, 30 sealed; 40 active
    let by_size = RetentionPolicy {
        max_bytes: Some(RECORD * 20),
        max_age: None,
    };
    // A subscription still needs offset 15: only segment 0 may go.
    assert_eq!(log.enforce_retention(by_size, 15).await.unwrap(), 1);
    assert_eq!(log.start_offset(), 10);
    assert!(!seg_path(dir.path(), 0).exists());
    assert!(!dir.path().join(format!("{:020}.index", 0)).exists());
    assert_eq!(log.size_bytes(), 35 * RECORD);
    // Reads before the start are raised to it.
    assert_payloads(&log.read(0, 3, 1 << 20).await.unwrap()[..1], 10);
    assert_eq!(log.read(0, 3, 1 << 20).await.unwrap()[0].offset, 10);

    // Everyone is caught up: delete until at most 20 records' worth remain,
    // never the active segment.
    assert_eq!(log.enforce_retention(by_size, 45).await.unwrap(), 2);
    assert_eq!(log.start_offset(), 30);
    assert_eq!(log.size_bytes(), 15 * RECORD);

    // Nothing old enough for an age limit of an hour.
    let by_age = RetentionPolicy {
        max_bytes: None,
        max_age: Some(Duration::from_secs(3600)),
    };
    assert_eq!(log.enforce_retention(by_age, 45).await.unwrap(), 0);
    // With no limit set, nothing is exceeded.
    assert_eq!(
        log.enforce_retention(RetentionPolicy::default(), 45)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let by_age = RetentionPolicy {
        max_bytes: None,
        max_age: Some(Duration::from_millis(1)),
    };
    assert_eq!(log.enforce_retention(by_age, 45).await.unwrap(), 1);
    assert_eq!(log.start_offset(), 40);
    assert_eq!(log.enforce_retention(by_age, 45).await.unwrap(), 0);
    assert_payloads(&read_all(&log, 0).await, 40);
    log.close().await.unwrap();

    // The retained state survives a reopen.
    let log = PartitionLog::open(dir.path(), small_segments(RECORD * 10))
        .await
        .unwrap();
    assert_eq!((log.start_offset(), log.next_offset()), (40, 45));
}

#[tokio::test]
async fn close_drains_queued_appends_then_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default())
        .await
        .unwrap();
    let queued: Vec<_> = (0..50)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(NewMessage::new(payload(i))).await })
        })
        .collect();
    tokio::task::yield_now().await;
    log.close().await.unwrap();
    let mut ok = 0;
    for q in queued {
        match q.await.unwrap() {
            Ok(_) => ok += 1,
            Err(LogError::Closed) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(log.next_offset(), ok);
    assert!(matches!(
        log.append(NewMessage::new("late")).await,
        Err(LogError::Closed)
    ));
    log.close().await.unwrap();
    let reopened = PartitionLog::open(dir.path(), LogConfig::default())
        .await
        .unwrap();
    assert_eq!(reopened.next_offset(), ok);
}

#[tokio::test]
async fn oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_record_bytes: 1024,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config).await.unwrap();
    assert!(matches!(
        log.append(NewMessage::new(vec![0u8; 1024])).await,
        Err(LogError::RecordTooLarge { limit: 1024, .. })
    ));
    assert_eq!(
        log.append(NewMessage::new(vec![0u8; 900])).await.unwrap().0,
        0
    );
}

#[tokio::test]
async fn subscribers_see_the_high_watermark_move_and_delete_removes_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-partition-0");
    let log = PartitionLog::open(&path, LogConfig::default())
        .await
        .unwrap();
    let mut watermark = log.subscribe_appends();
    assert_eq!(*watermark.borrow(), 0);
    let appender = log.clone();
    tokio::spawn(async move { append_n(&appender, 3).await });
    tokio::time::timeout(Duration::from_secs(5), watermark.wait_for(|&hw| hw == 3))
        .await
        .unwrap()
        .unwrap();
    log.delete().await.unwrap();
    assert!(!path.exists());
}

#[test]
fn handles_records_and_errors_can_cross_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Record>();
    send_sync::<LogError>();
    send_sync::<PartitionLog>();
}

/// Segments of ten records, and an index cache of `cache` sealed segments.
fn with_index_cache(cache: usize) -> LogConfig {
    LogConfig {
        sealed_index_cache: cache,
        ..small_segments(RECORD * 10)
    }
}

fn index_file(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

fn time_index_file(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}

/// Flips one bit of `path` at byte `at`.
fn flip(path: &Path, at: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
}

#[tokio::test]
async fn only_a_few_sealed_indexes_are_in_memory_however_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), with_index_cache(2))
        .await
        .unwrap();
    append_n(&log, 200).await; // 19 sealed segments, 190.. active
    assert!(log.stats().sealed_indexes_cached <= 2);
    log.close().await.unwrap();

    // Open reads the facts of the sealed segments, not their indexes.
    let log = PartitionLog::open(dir.path(), with_index_cache(2))
        .await
        .unwrap();
    let stats = log.stats();
    assert_eq!(
        (stats.sealed_indexes_cached, stats.sealed_index_loads),
        (0, 0)
    );

    // A sequential reader in small steps needs every sealed index, and
    // loads each once.
    let mut next = 0;
    while next < 200 {
        let batch = log.read(next, 3, 1 << 20).await.unwrap();
        assert_payloads(&batch, next);
        assert!(log.stats().sealed_indexes_cached <= 2);
        next += batch.len() as u64;
    }
    assert_eq!(log.stats().sealed_index_loads, 19);

    // Jumping around: right records, never more than two indexes held.
    for from in [155, 3, 77, 188, 14, 96, 121, 42, 199, 61] {
        let got = log.read(from, 2, 1 << 20).await.unwrap();
        assert_payloads(&got, from);
        assert!(!got.is_empty());
        assert!(log.stats().sealed_indexes_cached <= 2);
    }

    // Retention forgets the indexes of the segments it deletes.
    let policy = RetentionPolicy {
        max_bytes: Some(0),
        max_age: None,
    };
    assert_eq!(log.enforce_retention(policy, 200).await.unwrap(), 19);
    assert_eq!(log.stats().sealed_indexes_cached, 0);
    assert_payloads(&read_all(&log, 0).await, 190);
}

#[tokio::test]
async fn offset_for_timestamp_finds_records_in_many_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), with_index_cache(1))
        .await
        .unwrap();
    for _ in 0..25 {
        append_n(&log, 3).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    log.close().await.unwrap();

    let log = PartitionLog::open(dir.path(), with_index_cache(1))
        .await
        .unwrap();
    let all = read_all(&log, 0).await;
    assert_eq!(all.len(), 75);
    for r in all.iter().rev() {
        let first = all.iter().find(|x| x.publish_time >= r.publish_time);
        assert_eq!(
            log.offset_for_timestamp(r.publish_time).await.unwrap(),
            first.map(|x| x.offset)
        );
        let after = all.iter().find(|x| x.publish_time > r.publish_time);
        assert_eq!(
            log.offset_for_timestamp(r.publish_time + 1).await.unwrap(),
            after.map(|x| x.offset)
        );
        assert!(log.stats().sealed_indexes_cached <= 1);
    }
}

#[tokio::test]
async fn a_corrupt_index_file_found_when_loaded_still_gives_the_right_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), with_index_cache(2))
        .await
        .unwrap();
    for _ in 0..10 {
        append_n(&log, 5).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before = read_all(&log, 0).await;
    log.close().await.unwrap();

    // Damage entries, not footers: open does not read them, the first
    // lookup in those segments does.
    flip(&index_file(dir.path(), 10), 3);
    flip(&time_index_file(dir.path(), 20), 5);
    let damaged_index = std::fs::read(index_file(dir.path(), 10)).unwrap();

    let log = PartitionLog::open(dir.path(), with_index_cache(2))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(index_file(dir.path(), 10)).unwrap(),
        damaged_index
    );
    for from in 10..30 {
        assert_eq!(
            log.read(from, 1, 1 << 20).await.unwrap(),
            before[from as usize..=from as usize]
        );
    }
    for r in &before[20..30] {
        let first = before.iter().find(|x| x.publish_time >= r.publish_time);
        assert_eq!(
            log.offset_for_timestamp(r.publish_time).await.unwrap(),
            first.map(|x| x.offset)
        );
    }
    assert_eq!(read_all(&log, 0).await, before);

    // The scan that replaced them wrote them again.
    for base in [10, 20] {
        let size = std::fs::metadata(seg_path(dir.path(), base)).unwrap().len();
        assert!(super::index::load_files(dir.path(), base, size)
            .unwrap()
            .is_some());
    }
}

#[tokio::test]
async fn an_index_entry_past_the_wanted_record_fails_the_read_instead_of_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), with_index_cache(2))
        .await
        .unwrap();
    append_n(&log, 15).await;
    log.close().await.unwrap();

    // A well-formed, checksummed index of segment 0 whose one entry says
    // relative offset 5 starts where record 7 does.
    let size = std::fs::metadata(seg_path(dir.path(), 0)).unwrap().len();
    let (_, seal) = super::index::load_files(dir.path(), 0, size)
        .unwrap()
        .unwrap();
    let mut lying = super::index::SegmentIndex::default();
    lying.observe(5, (7 * RECORD) as u32, 0, 1);
    super::index::write_files(dir.path(), 0, &lying, seal).unwrap();

    let log = PartitionLog::open(dir.path(), with_index_cache(2))
        .await
        .unwrap();
    assert_payloads(&log.read(7, 3, 1 << 20).await.unwrap(), 7);
    match log.read(6, 3, 1 << 20).await {
        Err(LogError::Corrupt { position, .. }) => assert_eq!(position, 7 * RECORD),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_damaged_index_footer_is_rebuilt_by_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), with_index_cache(2))
        .await
        .unwrap();
    append_n(&log, 25).await;
    let before = read_all(&log, 0).await;
    log.close().await.unwrap();

    // The end offset in the footer of segment 10 says 21 instead of 20.
    let path = index_file(dir.path(), 10);
    let len = std::fs::metadata(&path).unwrap().len();
    flip(&path, len - 4 - 16 + 7);

    let log = PartitionLog::open(dir.path(), with_index_cache(2))
        .await
        .unwrap();
    assert_eq!(read_all(&log, 0).await, before);
    let size = std::fs::metadata(seg_path(dir.path(), 10)).unwrap().len();
    let (_, seal) = super::index::load_files(dir.path(), 10, size)
        .unwrap()
        .unwrap();
    assert_eq!(seal.end_offset, 20);
}
