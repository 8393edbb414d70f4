//! The sparse offset and time indexes of one segment, and their files.
//!
//! One offset-index entry (relative offset, byte position) is kept per
//! `index_interval_bytes` of records, so a lookup lands at most one interval
//! before the record wanted and an index grows with bytes / interval, never
//! with the number of records. At the same points a time-index entry
//! (publish time, relative offset) is kept whenever the time moved forward.
//!
//! The active segment's index lives in memory only and is rebuilt by the
//! scan that recovers the segment on open. When a segment is sealed, its
//! index is written beside it:
//!
//! ```text
//! {base:020}.index      (rel:u32 pos:u32)*  size:u64 end_offset:u64 max_publish_time:u64  crc:u32
//! {base:020}.timeindex  (time:u64 rel:u32)*                                                crc:u32
//! ```
//!
//! The crc32c covers everything before it. A sealed segment's index is not
//! kept in memory: it is loaded when a lookup needs it and held in the log's
//! [`IndexCache`] of a few recently used ones, so the memory of a log's
//! indexes does not grow with the bytes it retains. A load checks both
//! checksums and that the files describe the segment as the log knows it;
//! files that fail are never trusted, the segment is scanned instead.
//!
//! Open reads only the fixed footer of each `.index` (see [`read_footer`]);
//! the log's module docs say how it verifies those facts without the crc.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Entries of one segment's sparse offset and time indexes.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentIndex {
    /// (offset - base, byte position), increasing in both.
    offsets: Vec<(u32, u32)>,
    /// (publish time, offset - base), increasing in both.
    times: Vec<(u64, u32)>,
    /// Byte position of the last indexed record (0: the implicit entry at the
    /// segment start), to know when the next interval is full.
    last_indexed_pos: u32,
}

/// What a sealed segment's `.index` file records about the segment, so open
/// need not scan it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealInfo {
    /// Bytes of the segment file when sealed; a different size means the
    /// file changed since and the index cannot be trusted.
    pub(crate) size: u64,
    /// One past the offset of the segment's last record.
    pub(crate) end_offset: u64,
    /// Newest publish time in the segment, for retention by age.
    pub(crate) max_publish_time: u64,
}

/// The end of a sealed segment's `.index` file, read by open without
/// loading (or checksumming) the entries before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    /// What the file says about the segment.
    pub(crate) info: SealInfo,
    /// The last entry (offset - base, byte position), `None` when the index
    /// has none: a scan of the segment's tail may start there.
    pub(crate) last_entry: Option<(u32, u32)>,
}

const INDEX_ENTRY: usize = 8;
const TIME_ENTRY: usize = 12;
const INDEX_FOOTER: usize = 8 + 8 + 8;
const CRC: usize = 4;

impl SegmentIndex {
    /// Notes a record at `rel` (offset - base), byte `pos`, published at
    /// `time`; records must be observed in order.
    pub(crate) fn observe(&mut self, rel: u32, pos: u32, time: u64, interval: u32) {
        if pos.saturating_sub(self.last_indexed_pos) < interval.max(1) {
            return;
        }
        self.offsets.push((rel, pos));
        self.last_indexed_pos = pos;
        if self.times.last().is_none_or(|&(t, _)| time > t) {
            self.times.push((time, rel));
        }
    }

    /// The indexed record at or before `rel`: (its rel, its position);
    /// the segment start if none.
    pub(crate) fn floor(&self, rel: u32) -> (u32, u32) {
        let i = self.offsets.partition_point(|&(r, _)| r <= rel);
        if i == 0 {
            (0, 0)
        } else {
            self.offsets[i - 1]
        }
    }

    /// The last indexed record published before `time`: every record before
    /// it was too, so a search for the first record at or after `time` may
    /// start there. `None`: start at the segment start.
    pub(crate) fn time_floor(&self, time: u64) -> Option<u32> {
        let i = self.times.partition_point(|&(t, _)| t < time);
        i.checked_sub(1).map(|i| self.times[i].1)
    }

    /// Entries held, for tests of sparseness.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }
}

/// Where the offset index of the segment at `base` lives.
pub(crate) fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// Where the time index of the segment at `base` lives.
pub(crate) fn time_index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}

/// Writes and fdatasyncs both index files of a sealed segment. The caller
/// fsyncs the directory.
pub(crate) fn write_files(
    dir: &Path,
    base: u64,
    index: &SegmentIndex,
    info: SealInfo,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(index.offsets.len() * INDEX_ENTRY + INDEX_FOOTER + CRC);
    for &(rel, pos) in &index.offsets {
        buf.extend_from_slice(&rel.to_be_bytes());
        buf.extend_from_slice(&pos.to_be_bytes());
    }
    buf.extend_from_slice(&info.size.to_be_bytes());
    buf.extend_from_slice(&info.end_offset.to_be_bytes());
    buf.extend_from_slice(&info.max_publish_time.to_be_bytes());
    write_with_crc(&index_path(dir, base), buf)?;

    let mut buf = Vec::with_capacity(index.times.len() * TIME_ENTRY + CRC);
    for &(time, rel) in &index.times {
        buf.extend_from_slice(&time.to_be_bytes());
        buf.extend_from_slice(&rel.to_be_bytes());
    }
    write_with_crc(&time_index_path(dir, base), buf)
}

fn write_with_crc(path: &Path, mut buf: Vec<u8>) -> io::Result<()> {
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_be_bytes());
    let mut file = File::create(path)?;
    file.write_all(&buf)?;
    file.sync_data()
}

/// Loads the index files of the sealed segment at `base`, whose log file
/// is `segment_size` bytes. `None` when they are missing or cannot be
/// trusted; the caller then scans the segment.
pub(crate) fn load_files(
    dir: &Path,
    base: u64,
    segment_size: u64,
) -> io::Result<Option<(SegmentIndex, SealInfo)>> {
    // An entry stands for a record of at least MIN_FRAME_LEN > 12 bytes, so
    // an honest index file is never larger than its segment plus footer.
    let limit = segment_size + (INDEX_FOOTER + CRC) as u64;
    let Some(raw) = read_checked(&index_path(dir, base), limit)? else {
        return Ok(None);
    };
    let Some(raw_times) = read_checked(&time_index_path(dir, base), limit)? else {
        return Ok(None);
    };
    let Some(entries_len) = raw.len().checked_sub(INDEX_FOOTER) else {
        return Ok(None);
    };
    if entries_len % INDEX_ENTRY != 0 || raw_times.len() % TIME_ENTRY != 0 {
        return Ok(None);
    }
    let (entries, footer) = raw.split_at(entries_len);
    let Some(info) = parse_footer(footer, base, segment_size) else {
        return Ok(None);
    };
    let mut index = SegmentIndex::default();
    for e in entries.chunks_exact(INDEX_ENTRY) {
        let (rel, pos) = (be_u32(&e[0..4]), be_u32(&e[4..8]));
        let increasing = index
            .offsets
            .last()
            .is_none_or(|&(r, p)| rel > r && pos > p);
        if !increasing || u64::from(pos) >= segment_size {
            return Ok(None);
        }
        index.offsets.push((rel, pos));
        index.last_indexed_pos = pos;
    }
    for e in raw_times.chunks_exact(TIME_ENTRY) {
        let (time, rel) = (be_u64(&e[0..8]), be_u32(&e[8..12]));
        if !index.times.last().is_none_or(|&(t, r)| time > t && rel > r) {
            return Ok(None);
        }
        index.times.push((time, rel));
    }
    Ok(Some((index, info)))
}

/// The footer and last entry of the `.index` file of the sealed segment at
/// `base`, whose log file is `segment_size` bytes, from one small read at the
/// file's end. `None` when the file is missing, has an impossible length, or
/// plainly does not describe this segment (another size, an end before the
/// base, an entry past the end). The checksum is not verified here: the
/// caller must check the facts some other way before trusting them.
pub(crate) fn read_footer(dir: &Path, base: u64, segment_size: u64) -> io::Result<Option<Footer>> {
    let path = index_path(dir, base);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let tail = (INDEX_FOOTER + CRC) as u64;
    let Some(entries_len) = len.checked_sub(tail) else {
        return Ok(None);
    };
    if entries_len % INDEX_ENTRY as u64 != 0 || len > segment_size + tail {
        return Ok(None);
    }
    let has_entry = entries_len > 0;
    let mut raw = vec![0u8; INDEX_FOOTER + CRC + if has_entry { INDEX_ENTRY } else { 0 }];
    let at = len - raw.len() as u64;
    file.read_exact_at(&mut raw, at)?;
    let (entry, footer) = raw.split_at(raw.len() - INDEX_FOOTER - CRC);
    let Some(info) = parse_footer(footer, base, segment_size) else {
        return Ok(None);
    };
    let last_entry = has_entry.then(|| (be_u32(&entry[0..4]), be_u32(&entry[4..8])));
    let plausible = last_entry.is_none_or(|(_, pos)| u64::from(pos) < segment_size);
    Ok(plausible.then_some(Footer { info, last_entry }))
}

/// The facts an `.index` footer (its first `INDEX_FOOTER` bytes) records,
/// `None` if they cannot describe the segment at `base` of `segment_size`
/// bytes (another size, or an end before the base).
fn parse_footer(footer: &[u8], base: u64, segment_size: u64) -> Option<SealInfo> {
    let info = SealInfo {
        size: be_u64(&footer[0..8]),
        end_offset: be_u64(&footer[8..16]),
        max_publish_time: be_u64(&footer[16..24]),
    };
    (info.size == segment_size && info.end_offset >= base).then_some(info)
}

/// The indexes of the sealed segments a log used most recently, at most
/// `capacity` of them. This bound, not the number of segments, is what a
/// log's sealed indexes cost in memory.
#[derive(Debug)]
pub(crate) struct IndexCache {
    /// (segment base offset, its index), least recently used first.
    entries: Vec<(u64, Arc<SegmentIndex>)>,
    /// Most entries kept.
    capacity: usize,
    /// Indexes loaded from disk (or rebuilt by a scan) since open, for
    /// [`super::LogStats`].
    loads: u64,
}

impl IndexCache {
    /// An empty cache keeping at most `capacity` indexes (at least one).
    pub(crate) fn new(capacity: usize) -> IndexCache {
        IndexCache {
            entries: Vec::new(),
            capacity: capacity.max(1),
            loads: 0,
        }
    }

    /// The index of the segment at `base`, now the most recently used.
    pub(crate) fn get(&mut self, base: u64) -> Option<Arc<SegmentIndex>> {
        let i = self.entries.iter().position(|&(b, _)| b == base)?;
        let entry = self.entries.remove(i);
        let index = entry.1.clone();
        self.entries.push(entry);
        Some(index)
    }

    /// Keeps `index` for the segment at `base` as the most recently used,
    /// dropping the least recently used beyond the capacity.
    pub(crate) fn insert(&mut self, base: u64, index: Arc<SegmentIndex>) {
        self.entries.retain(|&(b, _)| b != base);
        self.entries.push((base, index));
        if self.entries.len() > self.capacity {
            let excess = self.entries.len() - self.capacity;
            self.entries.drain(..excess);
        }
    }

    /// Counts a load from disk.
    pub(crate) fn count_load(&mut self) {
        self.loads += 1;
    }

    /// Drops the indexes of segments below `start_offset` (deleted by
    /// retention).
    pub(crate) fn forget_below(&mut self, start_offset: u64) {
        self.entries.retain(|&(b, _)| b >= start_offset);
    }

    /// Indexes held now.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Indexes loaded since open.
    pub(crate) fn loads(&self) -> u64 {
        self.loads
    }
}

/// The contents of `path` without its crc trailer, if the file exists, is
/// at most `limit` bytes, and its checksum holds.
fn read_checked(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > limit || len < CRC as u64 {
        return Ok(None);
    }
    let mut raw = std::fs::read(path)?;
    let Some(body_len) = raw.len().checked_sub(CRC) else {
        return Ok(None);
    };
    let stored = be_u32(&raw[body_len..]);
    raw.truncate(body_len);
    Ok((crc32c::crc32c(&raw) == stored).then_some(raw))
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_interval_and_lookups_round_down() {
        let mut index = SegmentIndex::default();
        // 1000 records of 100 bytes, an entry per 1000 bytes.
        for i in 0..1000u32 {
            index.observe(i, i * 100, u64::from(i / 10), 1000);
        }
        assert_eq!(index.len(), 99);
        assert_eq!(index.floor(0), (0, 0));
        assert_eq!(index.floor(9), (0, 0));
        assert_eq!(index.floor(10), (10, 1000));
        assert_eq!(index.floor(25), (20, 2000));
        assert_eq!(index.time_floor(0), None);
        assert_eq!(index.time_floor(5), Some(40));
    }

    #[test]
    fn files_round_trip_and_a_changed_segment_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SegmentIndex::default();
        for i in 0..100u32 {
            index.observe(i, i * 50, u64::from(i), 200);
        }
        let info = SealInfo {
            size: 5000,
            end_offset: 107,
            max_publish_time: 99,
        };
        write_files(dir.path(), 7, &index, info).unwrap();
        let (loaded, got) = load_files(dir.path(), 7, 5000).unwrap().unwrap();
        assert_eq!(got, info);
        assert_eq!(loaded.offsets, index.offsets);
        assert_eq!(loaded.times, index.times);
        assert!(load_files(dir.path(), 7, 4999).unwrap().is_none());
        assert!(load_files(dir.path(), 8, 5000).unwrap().is_none());

        let footer = read_footer(dir.path(), 7, 5000).unwrap().unwrap();
        assert_eq!(footer.info, info);
        assert_eq!(footer.last_entry, index.offsets.last().copied());
        assert!(read_footer(dir.path(), 7, 4999).unwrap().is_none());
        assert!(read_footer(dir.path(), 8, 5000).unwrap().is_none());
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used() {
        let mut cache = IndexCache::new(2);
        for base in [0, 10, 20] {
            cache.insert(base, Arc::default());
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(0).is_none());
        assert!(cache.get(10).is_some());
        cache.insert(30, Arc::default());
        assert!(cache.get(20).is_none());
        assert!(cache.get(10).is_some() && cache.get(30).is_some());
        cache.forget_below(30);
        assert_eq!(cache.len(), 1);
    }
}
