#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs next to this script, one directory per
target: a few honest requests and record batches to start from, and the lying
inputs the kafka-protocol patch is about (vendor/kafka-protocol/PATCHES.md),
kept as regressions. Run it again after changing it; the files are committed.
"""
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def header_v1(api_key: int, version: int) -> bytes:
    """Request header v1: api key, version, correlation id, null client id."""
    return struct.pack(">hhih", api_key, version, 1, -1)


def header_v2(api_key: int, version: int) -> bytes:
    """Request header v2: v1 and no tagged fields."""
    return header_v1(api_key, version) + b"\x00"


def string(s: bytes) -> bytes:
    return struct.pack(">h", len(s)) + s


def compact_string(s: bytes) -> bytes:
    return bytes([len(s) + 1]) + s


def record_batch(record_count: int, records: bytes) -> bytes:
    """Magic 2, uncompressed, `record_count` claimed, `records` carried."""
    checked = struct.pack(">hiqqqhii", 0, 0, 0, 0, -1, -1, -1, record_count) + records
    return (
        struct.pack(">qiib", 0, 4 + 1 + 4 + len(checked), -1, 2)
        + struct.pack(">I", crc32c(checked))
        + checked
    )


# One record, no key, value "v", one header h=v: its size, then attributes,
# timestamp delta, offset delta, key length -1, value length 1, "v", one
# header, key length 1, "h", value length 1, "v" (zigzag varints).
RECORD = bytes([0x16, 0, 0, 0, 0x01, 0x02]) + b"v" + bytes([0x02, 0x02]) + b"h" + bytes([0x02]) + b"v"
# A record that claims 2^31 - 1 headers and carries none.
RECORD_HEADER_COUNT_LIES = bytes([0x14, 0, 0, 0, 0x01, 0x01, 0xFE, 0xFF, 0xFF, 0xFF, 0x0F])


def produce_v3(records: bytes) -> bytes:
    """Produce v3: one topic "t", partition 0, carrying `records`."""
    return (
        header_v1(0, 3)
        + struct.pack(">hhi", -1, -1, 30000)  # null transactional id, acks, timeout
        + struct.pack(">i", 1)
        + string(b"t")
        + struct.pack(">iii", 1, 0, len(records))
        + records
    )


SEEDS = {
    "kafka_request_decode": {
        "metadata_v0": header_v1(3, 0) + struct.pack(">i", 1) + string(b"a"),
        # The 7-byte body that asked for ~154 GB: 2^31 - 1 topics, one there.
        "metadata_v0_topic_count_lies": header_v1(3, 0) + bytes.fromhex("7fffffff") + string(b"a"),
        # A compact array of 2^32 - 2 topics, none there.
        "metadata_v12_topic_count_lies": header_v2(3, 12) + bytes.fromhex("ffffffff0f"),
        "api_versions_v3": header_v2(18, 3) + compact_string(b"a") + compact_string(b"1") + b"\x00",
        # A client id that claims 32767 bytes.
        "api_versions_v0_client_id_lies": struct.pack(">hhih", 18, 0, 1, 0x7FFF) + b"a",
        "produce_v3": produce_v3(record_batch(1, RECORD)),
        "produce_v3_record_count_lies": produce_v3(record_batch(0x7FFFFFFF, b"")),
        "produce_v3_header_count_lies": produce_v3(record_batch(1, RECORD_HEADER_COUNT_LIES)),
        "short_header": b"\x00\x03",
    },
    "kafka_record_batch_decode": {
        "three_records": record_batch(3, RECORD * 3),
        "record_count_lies": record_batch(0x7FFFFFFF, b""),
        "header_count_lies": record_batch(1, RECORD_HEADER_COUNT_LIES),
    },
}

for target, seeds in SEEDS.items():
    (HERE / target).mkdir(exist_ok=True)
    for name, data in seeds.items():
        (HERE / target / name).write_bytes(data)
