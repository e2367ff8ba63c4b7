"""Property tests: RecordDecoder.decode gives a record or a DecodeError, whatever the bytes.

The ring buffer hands over what the BPF programs wrote, but the reader must survive a
record cut short, a kind it does not know (a newer program, a stray write) and any bytes in
any field. Every input either decodes, into a record whose header fields are the bytes' own,
or raises DecodeError; no other exception may escape into the pipeline thread.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oomtrace.kernel import records
from oomtrace.kernel.records import DecodeError, Record, RecordDecoder, RecordKind

DATA = Path(__file__).resolve().parent.parent / "data" / "records-6.18.jsonl"
RECORDED = tuple(bytes.fromhex(json.loads(line)["hex"]) for line in DATA.read_text().splitlines())
LARGEST = max(kind.size for kind in records.RECORD_KINDS)

# Derandomized so that CI runs the same examples every time, and no example database is
# written next to the sources.
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)

DECODER = RecordDecoder()


def _decoded(data: bytes) -> Record | None:
    """The record, or None for a DecodeError; any other exception fails the test."""
    try:
        return DECODER.decode(data)
    except DecodeError:
        return None


def _kind_of(data: bytes) -> RecordKind[ctypes.Structure] | None:
    return records.BY_CODE.get(int.from_bytes(data[:2], "little")) if len(data) >= 2 else None


def _check(data: bytes) -> Record | None:
    """Decodes exactly when the kind is known and the bytes hold its whole struct, and
    the header of what it decodes is read from the first bytes."""
    rec = _decoded(data)
    kind = _kind_of(data)
    assert (rec is not None) == (kind is not None and len(data) >= kind.size), data[:16].hex()
    if rec is not None:
        assert rec.cpu == int.from_bytes(data[2:4], "little")
        assert rec.ktime_ns == int.from_bytes(data[8:16], "little")
    return rec


def test_the_recorded_records_cover_kinds() -> None:
    assert RECORDED
    assert {_kind_of(data) for data in RECORDED} >= {
        records.BY_CODE[records.REC_SIGNAL],
        records.BY_CODE[records.REC_EXIT],
    }


@PROPERTY
@given(st.binary(max_size=LARGEST + 64))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@PROPERTY
@given(st.sampled_from(RECORDED), st.data())
def test_truncated_recorded_records(record: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(record)), label="cut")
    rec = _check(record[:cut])
    # The ring buffer hands over whole structs: only the full record decodes.
    assert (rec is not None) == (cut == len(record))


@PROPERTY
@given(st.sampled_from(RECORDED), st.binary(min_size=1, max_size=64))
def test_recorded_records_with_bytes_after_them(record: bytes, tail: bytes) -> None:
    assert _check(record + tail) == DECODER.decode(record)


@PROPERTY
@given(st.sampled_from(RECORDED), st.data())
def test_recorded_records_with_garbage_in_their_body(record: bytes, data: st.DataObject) -> None:
    body = bytearray(record)
    for _ in range(data.draw(st.integers(min_value=1, max_value=32), label="writes")):
        at = data.draw(st.integers(min_value=2, max_value=len(record) - 1), label="at")
        body[at] = data.draw(st.integers(min_value=0, max_value=255), label="byte")
    rec = _check(bytes(body))
    assert rec is not None
    assert type(rec) is type(DECODER.decode(record))


@PROPERTY
@given(st.sampled_from(records.RECORD_KINDS), st.data())
def test_valid_kind_with_a_random_body(
    kind: RecordKind[ctypes.Structure], data: st.DataObject
) -> None:
    length = data.draw(st.integers(min_value=0, max_value=kind.size + 16), label="length")
    body = data.draw(st.binary(min_size=length, max_size=length), label="body")
    rec = _check(kind.code.to_bytes(2, "little") + body)
    assert (rec is not None) == (2 + length >= kind.size)


@PROPERTY
@given(st.sampled_from(records.RECORD_KINDS), st.sampled_from((0x00, 0xFF)))
def test_valid_kind_with_every_byte_the_same(kind: RecordKind[ctypes.Structure], fill: int) -> None:
    """All-zero and all-ones bodies: empty strings, and every number at its extreme."""
    rec = _check(kind.code.to_bytes(2, "little") + bytes([fill]) * (kind.size - 2))
    assert rec is not None


@PROPERTY
@given(st.integers(min_value=0, max_value=0xFFFF), st.binary(max_size=LARGEST + 16))
def test_any_kind_code(code: int, body: bytes) -> None:
    rec = _check(code.to_bytes(2, "little") + body)
    if code not in records.BY_CODE:
        assert rec is None
