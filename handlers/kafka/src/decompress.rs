//! Decompression of produced record batches, under a cap.
//!
//! A Produce request's batch says how it is compressed, and Kafka's four
//! codecs are served: gzip, snappy (the xerial framing Java clients and
//! librdkafka write, or raw snappy, which Kafka reads too), lz4 (the LZ4
//! frame format) and zstd. kafka-protocol's own decompressors trust the
//! batch: they inflate without a limit, and its snappy allocates whatever
//! length a block declares, so a few bytes on the wire could take the
//! process down. The handler decodes batches through
//! `RecordBatchDecoder::decode_with_custom_compression` with [`decompress`]
//! instead, which never yields, nor holds, more than `cap` bytes:
//!
//! - gzip, lz4 and zstd are streams, read by [`read_capped`] into a buffer
//!   that grows with what actually comes out of the decoder (never with a
//!   size the stream declares) and stops at `cap + 1` bytes, the one byte
//!   too many that tells a bomb from a batch of exactly `cap`.
//! - snappy declares each block's length up front. Every block's length is
//!   read first; the output is allocated once, only if their sum fits the
//!   cap and each block could really expand to its length.
//! - The decoders' own buffers are bounded too: lz4's by the frame format
//!   (blocks of at most 4 MiB), zstd's window by the cap (a frame that asks
//!   for more is refused), gzip's by its 32 KiB window.

use std::io::{self, Read};

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use kafka_protocol::records::Compression;

/// Why a batch was not decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// The batch holds (or declares) more than the cap once decompressed.
    #[error("the batch decompresses to more than {cap} bytes")]
    TooLarge { cap: usize },
    /// The compressed bytes are not a valid stream of their codec.
    #[error("the batch's {codec:?} data does not decompress: {source}")]
    Corrupt {
        codec: Compression,
        #[source]
        source: io::Error,
    },
}

/// The first buffer of a streamed decompression; it doubles from there.
const FIRST_CHUNK: usize = 64 << 10;

/// The snappy magic that opens xerial's framing (then two 4-byte versions).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

/// The xerial header: the magic, its version and its compatible version.
const XERIAL_HEADER_LEN: usize = 16;

/// The most a snappy block can expand: its densest element is a 3-byte
/// copy of 64 bytes (snappy's `format_description.txt`), so no valid
/// block decompresses to more than 64/3 times its length.
const SNAPPY_MAX_EXPANSION: usize = 22;

/// zstd's smallest and largest window logs (`ZSTD_WINDOWLOG_ABSOLUTEMIN`,
/// and `ZSTD_WINDOWLOG_MAX_32`, which also holds on 64-bit machines).
const ZSTD_WINDOW_LOGS: (u32, u32) = (10, 30);

/// The records of a batch compressed with `codec`, at most `cap` bytes of
/// them; an uncompressed batch is taken as it is (the frame limit bounded
/// it already).
pub fn decompress(
    compressed: &mut Bytes,
    codec: Compression,
    cap: usize,
) -> Result<Bytes, DecompressError> {
    let out = match codec {
        Compression::None => return Ok(std::mem::take(compressed)),
        Compression::Gzip => read_capped(MultiGzDecoder::new(&compressed[..]), codec, cap)?,
        Compression::Snappy => snappy(compressed, cap)?,
        Compression::Lz4 => read_capped(
            lz4_flex::frame::FrameDecoder::new(&compressed[..]),
            codec,
            cap,
        )?,
        Compression::Zstd => zstd(compressed, cap)?,
    };
    Ok(Bytes::from(out))
}

/// Reads `source` to its end: at most `cap` bytes, else `TooLarge` as soon
/// as it yields one more. The buffer grows by doubling with the bytes read,
/// never past `cap + 1`.
fn read_capped(
    source: impl Read,
    codec: Compression,
    cap: usize,
) -> Result<Vec<u8>, DecompressError> {
    let limit = cap.saturating_add(1);
    let mut source = source.take(u64::try_from(limit).unwrap_or(u64::MAX));
    let mut out = Vec::new();
    let mut filled = 0;
    loop {
        if filled == out.len() {
            let room = limit - out.len();
            if room == 0 {
                break;
            }
            let grow = out.len().max(FIRST_CHUNK).min(room);
            // Exact, so the capacity never passes the limit.
            out.reserve_exact(grow);
            out.resize(out.len() + grow, 0);
        }
        match source.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(DecompressError::Corrupt { codec, source }),
        }
    }
    if filled > cap {
        return Err(DecompressError::TooLarge { cap });
    }
    out.truncate(filled);
    Ok(out)
}

/// A corrupt snappy stream, with what is wrong with it.
fn snappy_corrupt(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DecompressError {
    DecompressError::Corrupt {
        codec: Compression::Snappy,
        source: io::Error::new(io::ErrorKind::InvalidData, reason),
    }
}

/// Snappy, xerial-framed (a header, then blocks each after its 4-byte
/// big-endian length) or, without the magic, one raw block.
fn snappy(compressed: &[u8], cap: usize) -> Result<Vec<u8>, DecompressError> {
    let blocks = if compressed.starts_with(XERIAL_MAGIC) {
        let body = compressed
            .get(XERIAL_HEADER_LEN..)
            .ok_or_else(|| snappy_corrupt("truncated xerial header"))?;
        xerial_blocks(body)?
    } else {
        vec![compressed]
    };
    let mut total = 0usize;
    for block in &blocks {
        let declared = snap::raw::decompress_len(block).map_err(snappy_corrupt)?;
        total = total.saturating_add(declared);
        if total > cap {
            return Err(DecompressError::TooLarge { cap });
        }
        if declared > block.len().saturating_mul(SNAPPY_MAX_EXPANSION) {
            return Err(snappy_corrupt(format!(
                "a block of {} bytes cannot expand to the {declared} it declares",
                block.len()
            )));
        }
    }
    // Checked against the cap, and backed by the bytes received.
    let mut out = vec![0; total];
    let mut start = 0;
    let mut decoder = snap::raw::Decoder::new();
    for block in blocks {
        let written = decoder
            .decompress(block, &mut out[start..])
            .map_err(snappy_corrupt)?;
        start += written;
    }
    out.truncate(start);
    Ok(out)
}

/// The blocks of a xerial-framed snappy stream after its header.
fn xerial_blocks(mut body: &[u8]) -> Result<Vec<&[u8]>, DecompressError> {
    let mut blocks = Vec::new();
    while !body.is_empty() {
        let (length, rest) = body
            .split_first_chunk::<4>()
            .ok_or_else(|| snappy_corrupt("truncated block length"))?;
        let length = usize::try_from(u32::from_be_bytes(*length)).unwrap_or(usize::MAX);
        if length > rest.len() {
            return Err(snappy_corrupt("a block is longer than the stream"));
        }
        let (block, rest) = rest.split_at(length);
        blocks.push(block);
        body = rest;
    }
    Ok(blocks)
}

/// zstd: a frame declaring more content than the cap is refused before
/// decoding; the decoder's window (which it allocates as the frame header
/// asks) is held to the largest power of two within the cap.
fn zstd(compressed: &[u8], cap: usize) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |source| DecompressError::Corrupt {
        codec: Compression::Zstd,
        source,
    };
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(compressed) {
        if declared > u64::try_from(cap).unwrap_or(u64::MAX) {
            return Err(DecompressError::TooLarge { cap });
        }
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed).map_err(corrupt)?;
    decoder
        .window_log_max(zstd_window_log_max(cap))
        .map_err(corrupt)?;
    read_capped(decoder, Compression::Zstd, cap)
}

/// The largest zstd window log whose window fits `cap`, within zstd's
/// bounds.
fn zstd_window_log_max(cap: usize) -> u32 {
    let floor_log2 = usize::BITS - 1 - cap.max(1).leading_zeros();
    floor_log2.clamp(ZSTD_WINDOW_LOGS.0, ZSTD_WINDOW_LOGS.1)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::io::Write;

    use super::*;

    /// The system allocator, noting the largest single allocation each
    /// thread asks for, so a test can tell that a bomb's claimed size was
    /// never allocated.
    struct LargestAllocation;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }

    // SAFETY: every call goes to `System` unchanged; noting a size touches
    // only a thread-local `Cell` that never allocates.
    unsafe impl GlobalAlloc for LargestAllocation {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            System.realloc(ptr, layout, new_size)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }

    #[global_allocator]
    static ALLOCATOR: LargestAllocation = LargestAllocation;

    /// Runs `f`; its result and the largest allocation it made.
    pub(crate) fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|largest| largest.set(0));
        let out = f();
        (out, LARGEST.with(Cell::get))
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Xerial framing, in blocks of 32 KiB as snappy-java writes them.
    pub(crate) fn xerial_snappy(data: &[u8]) -> Vec<u8> {
        let mut out = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        for chunk in data.chunks(32 << 10) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            out.extend_from_slice(&u32::try_from(block.len()).unwrap().to_be_bytes());
            out.extend_from_slice(&block);
        }
        out
    }

    pub(crate) fn raw_snappy(data: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(data).unwrap()
    }

    pub(crate) fn lz4(data: &[u8]) -> Vec<u8> {
        let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// A streamed zstd frame (no content size) with a 128 KiB window.
    pub(crate) fn zstd_stream(data: &[u8]) -> Vec<u8> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(17).unwrap();
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn run(codec: Compression, compressed: Vec<u8>, cap: usize) -> Result<Bytes, DecompressError> {
        decompress(&mut Bytes::from(compressed), codec, cap)
    }

    const CAP: usize = 256 << 10;

    /// Bytes that compress somewhat, so blocks and windows are exercised.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    #[test]
    fn every_codec_gives_back_what_was_compressed() {
        let data = sample(200 << 10);
        for (codec, compressed) in [
            (Compression::Gzip, gzip(&data)),
            (Compression::Snappy, xerial_snappy(&data)),
            (Compression::Snappy, raw_snappy(&data)),
            (Compression::Lz4, lz4(&data)),
            (Compression::Zstd, zstd_stream(&data)),
            (Compression::Zstd, zstd::bulk::compress(&data, 3).unwrap()),
        ] {
            let out = run(codec, compressed, CAP).unwrap();
            assert_eq!(&out[..], &data[..], "{codec:?}");
        }
    }

    #[test]
    fn exactly_the_cap_is_accepted_and_one_byte_more_refused() {
        let data = vec![7u8; CAP + 1];
        for (codec, compress) in [
            (Compression::Gzip, gzip as fn(&[u8]) -> Vec<u8>),
            (Compression::Snappy, xerial_snappy),
            (Compression::Lz4, lz4),
            (Compression::Zstd, zstd_stream),
        ] {
            let out = run(codec, compress(&data[..CAP]), CAP).unwrap();
            assert_eq!(out.len(), CAP, "{codec:?}");
            let refused = run(codec, compress(&data), CAP);
            assert!(
                matches!(refused, Err(DecompressError::TooLarge { .. })),
                "{codec:?}: {refused:?}"
            );
        }
    }

    /// Zeros far past the cap, small on the wire: refused, and no
    /// allocation came near their size.
    #[test]
    fn bombs_are_refused_without_allocating_their_size() {
        let bomb = 16usize << 20;
        let zeros = vec![0u8; bomb];
        for (codec, compressed) in [
            (Compression::Gzip, gzip(&zeros)),
            (Compression::Snappy, xerial_snappy(&zeros)),
            (Compression::Snappy, raw_snappy(&zeros)),
            (Compression::Lz4, lz4(&zeros)),
            (Compression::Zstd, zstd_stream(&zeros)),
            (Compression::Zstd, zstd::bulk::compress(&zeros, 3).unwrap()),
        ] {
            assert!(compressed.len() < bomb / 10, "{codec:?} is no bomb");
            let (refused, largest) = largest_allocation(|| run(codec, compressed, CAP));
            assert!(
                matches!(refused, Err(DecompressError::TooLarge { .. })),
                "{codec:?}: {refused:?}"
            );
            // lz4's frame decoder holds up to two 4 MiB blocks and a 64 KiB
            // window whatever the cap; everything else stays within it.
            let bound = if codec == Compression::Lz4 {
                9 << 20
            } else {
                CAP + 1
            };
            assert!(largest <= bound, "{codec:?} allocated {largest} bytes");
        }
    }

    /// Raw snappy states its length in its first bytes; kafka-protocol's
    /// decompressor allocates it. Here: refused, nothing allocated.
    #[test]
    fn a_snappy_length_claim_is_checked_before_anything_is_allocated() {
        // A varint of 2^32 - 1, then one literal byte.
        let claim = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, b'x'];
        let (refused, largest) =
            largest_allocation(|| run(Compression::Snappy, claim.clone(), usize::MAX >> 1));
        assert!(
            matches!(refused, Err(DecompressError::Corrupt { .. })),
            "{refused:?}"
        );
        assert!(largest < 4096, "allocated {largest} bytes");
        let (refused, largest) = largest_allocation(|| run(Compression::Snappy, claim, CAP));
        assert!(
            matches!(refused, Err(DecompressError::TooLarge { .. })),
            "{refused:?}"
        );
        assert!(largest < 4096, "allocated {largest} bytes");
    }

    /// A zstd frame asking for a window larger than the cap is refused
    /// before its window is allocated.
    #[test]
    fn a_zstd_window_beyond_the_cap_is_refused() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(24).unwrap();
        encoder.long_distance_matching(true).unwrap();
        encoder.write_all(&sample(64 << 10)).unwrap();
        let frame = encoder.finish().unwrap();
        let (refused, largest) = largest_allocation(|| run(Compression::Zstd, frame, CAP));
        assert!(
            matches!(refused, Err(DecompressError::Corrupt { .. })),
            "{refused:?}"
        );
        assert!(largest <= CAP, "allocated {largest} bytes");
    }

    #[test]
    fn garbage_is_corrupt_for_every_codec() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let refused = run(codec, b"\x82SNAPPY\x00not really compressed".to_vec(), CAP);
            assert!(
                matches!(refused, Err(DecompressError::Corrupt { .. })),
                "{codec:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn zstd_windows_stay_within_the_cap() {
        assert_eq!(zstd_window_log_max(100 << 20), 26);
        assert_eq!(zstd_window_log_max(1 << 20), 20);
        assert_eq!(zstd_window_log_max(0), 10);
        assert_eq!(zstd_window_log_max(usize::MAX), 30);
    }
}
