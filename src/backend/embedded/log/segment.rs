//! One segment file: `{base_offset:020}.log`, frames back to back.
//!
//! Everything here reads by positional reads (`FileExt::read_at`) through a
//! bounded window, so neither recovery nor a reader ever holds a whole
//! segment in memory, and many readers share one file handle without a
//! seek position to fight over.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

use super::index::{SealInfo, SegmentIndex};
use super::record::{self, HEADER_LEN, MIN_BODY_LEN, MIN_FRAME_LEN};
use super::{LogError, Record};

/// A segment as the log keeps it in memory: where it is, how much of it is
/// durable, and (the active one only) its sparse indexes.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Offset of its first record; also its file name.
    pub(crate) base_offset: u64,
    /// The file, for error messages and deletion.
    pub(crate) path: PathBuf,
    /// Open handle shared with readers and the writer; positional I/O needs
    /// no lock around it.
    pub(crate) file: Arc<File>,
    /// Bytes that are fsynced; readers never look past this, which is what
    /// keeps non-durable records invisible.
    pub(crate) size: u64,
    /// One past the offset of its last durable record (`base_offset` when
    /// empty).
    pub(crate) end_offset: u64,
    /// Newest publish time in it (0 when empty), for retention by age and
    /// for choosing the segment a timestamp lookup starts in.
    pub(crate) max_publish_time: u64,
    /// Sparse offset and time indexes of the active segment, updated by
    /// every commit. `None` for a sealed segment: its indexes are on disk,
    /// and in the log's index cache while recently used, so sealed segments
    /// cost a few fixed fields each, whatever their size.
    pub(crate) index: Option<SegmentIndex>,
}

impl Segment {
    /// The seal record written to its `.index` file.
    pub(crate) fn seal_info(&self) -> SealInfo {
        SealInfo {
            size: self.size,
            end_offset: self.end_offset,
            max_publish_time: self.max_publish_time,
        }
    }

    /// What loading its indexes needs, to take out of the log's lock.
    pub(crate) fn index_source(&self) -> IndexSource {
        IndexSource {
            base_offset: self.base_offset,
            path: self.path.clone(),
            file: self.file.clone(),
            seal: self.seal_info(),
        }
    }
}

/// A sealed segment whose indexes are to be loaded, as the log knew it when
/// the lookup began. The file handle stays readable even if retention deletes
/// the segment meanwhile.
#[derive(Debug, Clone)]
pub(crate) struct IndexSource {
    /// Offset of its first record.
    pub(crate) base_offset: u64,
    /// The segment file, for error messages.
    pub(crate) path: PathBuf,
    /// The segment file, to scan when its index files cannot be trusted.
    pub(crate) file: Arc<File>,
    /// Its size, end offset and newest publish time, which loaded index
    /// files must agree with.
    pub(crate) seal: SealInfo,
}

/// The file name of the segment starting at `base`.
pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The base offset a segment file name encodes, if `name` is one.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Opens a segment file for positional reads and writes.
pub(crate) fn open_file(path: &Path, create: bool) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .open(path)
        .map_err(|source| LogError::io(path, source))
}

/// What was found at a position.
enum Frame {
    /// The position is the end of the readable span.
    End,
    /// A frame whose checksum holds: its body and its total length.
    Valid(Bytes, u64),
    /// Not a valid frame, and why.
    Invalid(String),
}

/// What a window reads first (see [`Window::chunk`]).
const FIRST_CHUNK: usize = 64 << 10;

/// Read buffers kept for reuse ([`READ_BUFFERS`]).
struct ReadBuffers {
    /// Buffers given back, oldest first; some may still be pointed into.
    held: Mutex<VecDeque<Bytes>>,
}

/// Buffers [`ReadBuffers`] keeps at most: a few per log read at once.
const HELD_BUFFERS: usize = 16;
/// Smaller buffers are not kept: zeroing them costs little.
const SMALLEST_HELD: usize = FIRST_CHUNK;
/// Larger buffers are not kept (those of single large records), so what
/// the pool holds stays below `HELD_BUFFERS` MiB.
const LARGEST_HELD: usize = 1 << 20;

/// The read buffers of every log, reused once no record read into them is
/// alive any more: a fresh buffer is zeroed and its pages faulted in before
/// the disk read overwrites it, which cost as much as the read. Shared by
/// all logs so that memory kept is bounded by [`HELD_BUFFERS`], however
/// many partitions are read.
static READ_BUFFERS: ReadBuffers = ReadBuffers {
    held: Mutex::new(VecDeque::new()),
};

impl ReadBuffers {
    /// A buffer of at least `len` bytes, whose contents are stale: a kept
    /// one no record points into any more, of at most twice that size (a
    /// small read does not pin a large buffer), else a new one.
    fn take(&self, len: usize) -> BytesMut {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = |buf: &Bytes| buf.len() >= len && buf.len() / 2 <= len;
        // Unique: every slice of it (the records) has been dropped.
        let free = held.iter().position(|buf| fits(buf) && buf.is_unique());
        if let Some(buf) = free.and_then(|i| held.remove(i)) {
            match buf.try_into_mut() {
                Ok(reused) => return reused,
                Err(buf) => held.push_back(buf),
            }
        }
        drop(held);
        BytesMut::zeroed(len)
    }

    /// Keeps `buf` (whole, as [`ReadBuffers::take`] gave it) for reuse,
    /// letting go of the oldest kept one when there are enough.
    fn give_back(&self, buf: Bytes) {
        if !(SMALLEST_HELD..=LARGEST_HELD).contains(&buf.len()) {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() >= HELD_BUFFERS {
            held.pop_front();
        }
        held.push_back(buf);
    }
}

/// A bounded, refillable view of one file span `[.., limit)`.
struct Window<'a> {
    /// The file read from.
    file: &'a File,
    /// The file, for error messages.
    path: &'a Path,
    /// File position of `buf[0]`.
    start: u64,
    /// A buffer from [`READ_BUFFERS`], whole (it may be longer than what
    /// was read into it).
    buf: Bytes,
    /// Bytes of `buf` read at `start`; what follows is stale.
    filled: usize,
    /// Nothing at or past this position is read (durable size or file size).
    limit: u64,
    /// Bytes to read at the next refill when less is needed: doubled at
    /// each refill up to `max_chunk`, so a read that stops early (at its
    /// record count) has not read (and zeroed) much more than it used.
    chunk: usize,
    max_chunk: usize,
    /// Largest body accepted; bounds what one frame can make us allocate.
    max_body: u64,
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        READ_BUFFERS.give_back(std::mem::take(&mut self.buf));
    }
}

impl<'a> Window<'a> {
    fn new(file: &'a File, path: &'a Path, limit: u64, max_chunk: usize, max_body: u64) -> Self {
        Window {
            file,
            path,
            start: 0,
            buf: Bytes::new(),
            filled: 0,
            limit,
            chunk: FIRST_CHUNK.min(max_chunk),
            max_chunk,
            max_body,
        }
    }

    /// Bytes `[pos, pos + len)`, which the caller checked lie below `limit`.
    fn bytes(&mut self, pos: u64, len: u64) -> Result<Bytes, LogError> {
        let from = self.cover(pos, len)?;
        Ok(self.buf.slice(from..from + len as usize))
    }

    /// The frame header at `pos`, which the caller checked lies below
    /// `limit`: copied, where [`Window::bytes`] would count a reference.
    fn header(&mut self, pos: u64) -> Result<[u8; HEADER_LEN], LogError> {
        let from = self.cover(pos, HEADER_LEN as u64)?;
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&self.buf[from..from + HEADER_LEN]);
        Ok(raw)
    }

    /// Reads so that the buffer holds `[pos, pos + len)`; where it starts
    /// in the buffer.
    fn cover(&mut self, pos: u64, len: u64) -> Result<usize, LogError> {
        let end_in_buf = self.start + self.filled as u64;
        if pos < self.start || pos + len > end_in_buf {
            let want = len.max(self.chunk as u64).min(self.limit - pos) as usize;
            self.chunk = (self.chunk * 2).min(self.max_chunk);
            let mut fresh = READ_BUFFERS.take(want);
            let read = match fresh.get_mut(..want) {
                Some(span) => self.file.read_exact_at(span, pos),
                None => Err(std::io::Error::other("a read buffer shorter than asked")),
            };
            READ_BUFFERS.give_back(std::mem::replace(&mut self.buf, fresh.freeze()));
            self.filled = 0;
            read.map_err(|source| LogError::io(self.path, source))?;
            self.start = pos;
            self.filled = want;
        }
        Ok((pos - self.start) as usize)
    }

    /// The frame at `pos`, with its checksum verified. Lengths are checked
    /// against `max_body` and `limit` before anything is read for them.
    fn frame(&mut self, pos: u64) -> Result<Frame, LogError> {
        if pos >= self.limit {
            return Ok(Frame::End);
        }
        if self.limit - pos < HEADER_LEN as u64 {
            return Ok(Frame::Invalid(format!(
                "{} bytes left, too few for a record header",
                self.limit - pos
            )));
        }
        let header = record::parse_header(self.header(pos)?);
        let body_len = u64::from(header.body_len);
        if body_len < MIN_BODY_LEN as u64 || body_len > self.max_body {
            return Ok(Frame::Invalid(format!(
                "record length {body_len} outside {MIN_BODY_LEN}..={}",
                self.max_body
            )));
        }
        let frame_len = HEADER_LEN as u64 + body_len;
        if frame_len > self.limit - pos {
            return Ok(Frame::Invalid(format!(
                "record of {frame_len} bytes runs past the end ({} bytes left)",
                self.limit - pos
            )));
        }
        let body = self.bytes(pos + HEADER_LEN as u64, body_len)?;
        match record::verify(header, &body) {
            Ok(()) => Ok(Frame::Valid(body, frame_len)),
            Err(e) => Ok(Frame::Invalid(e.to_string())),
        }
    }

    /// Whether a plausible, checksum-valid frame holding an offset of at
    /// least `min_offset` starts anywhere in `[from, limit)`. Used to tell a
    /// torn tail (nothing valid after the damage) from corruption in the
    /// middle (valid records after it).
    fn valid_frame_after(&mut self, from: u64, min_offset: u64) -> Result<Option<u64>, LogError> {
        // Cheap filters first (length range, fits, offset plausible), so the
        // checksum runs only on real candidates.
        let max_records_left = (self.limit / MIN_FRAME_LEN as u64) + 1;
        let probe = (HEADER_LEN + 8) as u64;
        let mut pos = from;
        while pos + MIN_FRAME_LEN as u64 <= self.limit {
            let head = self.bytes(pos, probe)?;
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&head[..HEADER_LEN]);
            let body_len = u64::from(record::parse_header(raw).body_len);
            let fits = body_len >= MIN_BODY_LEN as u64
                && body_len <= self.max_body
                && pos + HEADER_LEN as u64 + body_len <= self.limit;
            let offset_ok = record::peek_offset(&head[HEADER_LEN..])
                .is_some_and(|o| o >= min_offset && o - min_offset <= max_records_left);
            if fits && offset_ok {
                if let Frame::Valid(..) = self.frame(pos)? {
                    return Ok(Some(pos));
                }
            }
            pos += 1;
        }
        Ok(None)
    }
}

/// How recovery treats a bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// The active segment: a bad record with nothing valid after it is a
    /// torn tail from a crash mid-write and is cut off.
    TruncateTornTail,
    /// A sealed segment was fully fsynced before it was sealed: any bad
    /// record is corruption.
    Strict,
}

/// What a scan of part of a segment found.
pub(crate) struct Scan {
    /// Indexes of the records scanned.
    pub(crate) index: SegmentIndex,
    /// Position after the last valid record: the end of the scanned span,
    /// or where the damage starts.
    pub(crate) end_pos: u64,
    /// One past the offset of the last valid record.
    pub(crate) end_offset: u64,
    /// Newest publish time of the records scanned (0 if none).
    pub(crate) max_publish_time: u64,
    /// Why the scan stopped before the end, if it did.
    pub(crate) damage: Option<String>,
}

impl Scan {
    /// The facts of the span scanned, to compare with a seal record.
    pub(crate) fn seal_info(&self) -> SealInfo {
        SealInfo {
            size: self.end_pos,
            end_offset: self.end_offset,
            max_publish_time: self.max_publish_time,
        }
    }
}

/// Scans `file` from byte `start_pos`, where the record with offset
/// `start_offset` must begin, up to `limit`, verifying every record and
/// that offsets follow each other, and indexes what it read (relative to
/// `base_offset`). Stops at the first bad record, reported in
/// [`Scan::damage`]; only I/O failures are errors.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    base_offset: u64,
    (start_pos, start_offset): (u64, u64),
    limit: u64,
    max_body: u64,
    index_interval: u32,
) -> Result<Scan, LogError> {
    let mut window = Window::new(file, path, limit, 1 << 20, max_body);
    let mut index = SegmentIndex::default();
    let mut pos = start_pos;
    let mut expected = start_offset;
    let mut max_publish_time = 0u64;
    let damage = loop {
        let (body, frame_len) = match window.frame(pos)? {
            Frame::End => break None,
            Frame::Invalid(reason) => break Some(reason),
            Frame::Valid(body, len) => (body, len),
        };
        let rec = match record::decode_body(body) {
            Ok(r) if r.offset == expected => r,
            Ok(r) => {
                break Some(format!(
                    "record holds offset {} where {expected} was expected",
                    r.offset
                ))
            }
            Err(e) => break Some(e.to_string()),
        };
        // Positions fit u32 and relative offsets too: segments are capped
        // below 4 GiB (see LogConfig::validate).
        index.observe(
            (expected - base_offset) as u32,
            pos as u32,
            rec.publish_time,
            index_interval,
        );
        max_publish_time = max_publish_time.max(rec.publish_time);
        expected += 1;
        pos += frame_len;
    };
    Ok(Scan {
        index,
        end_pos: pos,
        end_offset: expected,
        max_publish_time,
        damage,
    })
}

/// Scans the segment at `base` from its start, verifying every record, and
/// rebuilds its indexes. A bad record followed by a valid one is
/// `LogError::Corrupt`; under `TruncateTornTail` a bad record with nothing
/// valid after it is cut off (and the file fsynced).
pub(crate) fn recover(
    path: PathBuf,
    base_offset: u64,
    mode: Recovery,
    max_body: u64,
    index_interval: u32,
) -> Result<Segment, LogError> {
    let file = open_file(&path, false)?;
    let file_size = file
        .metadata()
        .map_err(|source| LogError::io(&path, source))?
        .len();
    let found = scan(
        &file,
        &path,
        base_offset,
        (0, base_offset),
        file_size,
        max_body,
        index_interval,
    )?;
    let pos = found.end_pos;
    if let Some(reason) = found.damage {
        let corrupt = |reason: String| LogError::Corrupt {
            path: path.clone(),
            position: pos,
            reason,
        };
        if mode == Recovery::Strict {
            return Err(corrupt(reason));
        }
        let mut window = Window::new(&file, &path, file_size, 1 << 20, max_body);
        if let Some(next) = window.valid_frame_after(pos + 1, found.end_offset)? {
            return Err(corrupt(format!(
                "{reason}; a valid record follows at byte {next}, so this is not a torn tail"
            )));
        }
        tracing::warn!(
            path = %path.display(),
            position = pos,
            dropped_bytes = file_size - pos,
            %reason,
            "truncating the torn tail of the active segment"
        );
        file.set_len(pos)
            .and_then(|()| file.sync_all())
            .map_err(|source| LogError::io(&path, source))?;
    }
    Ok(Segment {
        base_offset,
        path,
        file: Arc::new(file),
        size: pos,
        end_offset: found.end_offset,
        max_publish_time: found.max_publish_time,
        index: Some(found.index),
    })
}

/// One segment's part of a read: which bytes to look at.
pub(crate) struct ReadPlan {
    /// The file to read.
    pub(crate) file: Arc<File>,
    /// The file, for error messages.
    pub(crate) path: PathBuf,
    /// Position of an indexed record at or before the first wanted one
    /// (checked when read: a record past the wanted one is an error).
    pub(crate) start_pos: u64,
    /// The durable size when the read began; nothing past it is read.
    pub(crate) end_pos: u64,
}

/// The budget of a read, shared across the segments it spans.
pub(crate) struct ReadBudget {
    /// First offset wanted; records before it are skipped.
    pub(crate) from: u64,
    /// Stop after this many records.
    pub(crate) max_records: usize,
    /// Stop before a record that would take the total past this, unless
    /// nothing was read yet.
    pub(crate) max_bytes: usize,
    /// Largest body accepted from disk.
    pub(crate) max_body: u64,
    /// Frame bytes of the records collected so far.
    pub(crate) used_bytes: usize,
    /// Records collected so far.
    pub(crate) out: Vec<Record>,
}

impl ReadBudget {
    /// Whether the read has all it may take.
    pub(crate) fn full(&self) -> bool {
        self.out.len() >= self.max_records
    }
}

/// Reads the records of one segment into `budget`, verifying each checksum.
/// Returns `true` when the budget stopped the read, `false` at the
/// segment's end.
pub(crate) fn read_into(plan: &ReadPlan, budget: &mut ReadBudget) -> Result<bool, LogError> {
    let chunk = budget.max_bytes.clamp(4096, 1 << 20);
    let mut window = Window::new(&plan.file, &plan.path, plan.end_pos, chunk, budget.max_body);
    let mut pos = plan.start_pos;
    loop {
        if budget.full() {
            return Ok(true);
        }
        let corrupt = |reason: String| LogError::Corrupt {
            path: plan.path.clone(),
            position: pos,
            reason,
        };
        // Peek at the length first so the byte budget is checked before the
        // record is read.
        if pos < plan.end_pos && plan.end_pos - pos >= HEADER_LEN as u64 {
            let head = record::parse_header(window.header(pos)?);
            let frame_len = HEADER_LEN + head.body_len as usize;
            let past_budget = budget.used_bytes.saturating_add(frame_len) > budget.max_bytes;
            if past_budget && !budget.out.is_empty() {
                return Ok(true);
            }
        }
        let (body, frame_len) = match window.frame(pos)? {
            Frame::End => return Ok(false),
            Frame::Invalid(reason) => return Err(corrupt(reason)),
            Frame::Valid(body, len) => (body, len),
        };
        let rec = record::decode_body(body).map_err(|e| corrupt(e.to_string()))?;
        if pos == plan.start_pos && pos > 0 && rec.offset > budget.from {
            // An indexed start past the wanted record would skip records
            // silently; refuse it, as a bad record is refused.
            return Err(corrupt(format!(
                "the index points at offset {} for offset {}",
                rec.offset, budget.from
            )));
        }
        if rec.offset >= budget.from {
            budget.used_bytes += frame_len as usize;
            budget.out.push(rec);
        }
        pos += frame_len;
    }
}

/// fsyncs a directory, so creating, renaming or removing a file in it is
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| LogError::io(dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_are_reused_once_nothing_points_into_them_and_stay_bounded() {
        let buffers = ReadBuffers {
            held: Mutex::new(VecDeque::new()),
        };
        let first = buffers.take(SMALLEST_HELD).freeze();
        let address = first.as_ptr();
        let record = first.slice(10..20);
        buffers.give_back(first);
        let while_read = buffers.take(SMALLEST_HELD);
        assert_ne!(
            while_read.as_ptr(),
            address,
            "a record still points into it"
        );
        drop(record);
        let again = buffers.take(SMALLEST_HELD / 2);
        assert_eq!(again.as_ptr(), address, "reused once the record is gone");
        assert!(again.len() >= SMALLEST_HELD / 2);
        buffers.give_back(again.freeze());
        let small = buffers.take(SMALLEST_HELD / 4);
        assert_ne!(small.as_ptr(), address, "a small read pins a large buffer");

        buffers.give_back(BytesMut::zeroed(LARGEST_HELD + 1).freeze());
        assert_eq!(buffers.held.lock().unwrap().len(), 1, "a huge buffer kept");
        for _ in 0..HELD_BUFFERS + 4 {
            buffers.give_back(BytesMut::zeroed(SMALLEST_HELD).freeze());
        }
        buffers.give_back(Bytes::from(vec![0u8; 16]));
        assert_eq!(buffers.held.lock().unwrap().len(), HELD_BUFFERS);
    }

    #[test]
    fn file_names_round_trip_and_others_are_ignored() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("00000000000000000042.index"), None);
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("0000000000000000004x.log"), None);
    }
}
