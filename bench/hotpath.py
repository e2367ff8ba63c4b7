"""The per-event hot path by stage, outside the kernel: one SIGKILL's two records
(signal, exit) through decode, capture, correlate, build and serialize,
as the agent's pipeline runs them; and a prototype decoder that unpacks records
with one precompiled struct.Struct per kind instead of ctypes.

tests/unit/test_hot_path.py measures the same stages with pytest-benchmark; this
prints them as a table next to the prototype.

    .venv/bin/python -m bench.hotpath [--short]       (no root needed)
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
import time
import types
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import orjson
from tests.unit.test_hot_path import GONE_PID, kill_records

from bench import common
from oomtrace.config import Settings
from oomtrace.kernel import records
from oomtrace.pipeline import Agent
from oomtrace.sinks.stream import StreamSink

_CODES: dict[Any, str] = {
    ctypes.c_uint16: "H",
    ctypes.c_uint32: "I",
    ctypes.c_int32: "i",
    ctypes.c_uint64: "Q",
    ctypes.c_int64: "q",
}


class StructDecoder:
    """records.RecordDecoder's output, from struct.unpack_from into a namedtuple per
    record kind (attribute reads at C speed), then the same builder functions."""

    def __init__(self) -> None:
        self._kinds: dict[int, tuple[struct.Struct, Any, Callable[[Any], Any]]] = {}
        for kind, (raw_cls, build) in records._DECODERS.items():
            fmt, names = "<", []
            for entry in raw_cls._fields_:
                name, ctype = entry[0], entry[1]
                # Char and byte arrays (comm, argv) both unpack as bytes.
                if getattr(ctype, "_type_", None) in (ctypes.c_char, ctypes.c_ubyte):
                    fmt += f"{getattr(ctype, '_length_', 0)}s"
                elif ctype in _CODES:
                    fmt += _CODES[ctype]
                else:  # arrays of numbers (mark_victim's memcg levels): not prototyped
                    break
                names.append(name)
            else:
                st = struct.Struct(fmt)
                if st.size == ctypes.sizeof(raw_cls):
                    row = namedtuple(raw_cls.__name__, names)  # type: ignore[misc]
                    self._kinds[kind] = (st, row, build)

    def decode(self, data: bytes) -> Any:
        kind = data[0] | data[1] << 8
        st, row, build = self._kinds[kind]
        return build(row._make(st.unpack_from(data)))


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Median of 5 timings of as many calls as fit in seconds / 5, in us per call."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - start > 0.02:
            break
        n *= 2
    runs = []
    per_run = max(1, int(n * (seconds / 5) / 0.02))
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(per_run):
            fn()
        runs.append((time.perf_counter() - start) / per_run * 1e6)
    return common.median(runs)


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    seconds = 0.5 if args.short else 3.0
    raws = kill_records(GONE_PID, 12345 * 10**7)
    decoder = records.RecordDecoder()
    fast = StructDecoder()
    for raw in raws:
        assert fast.decode(raw) == decoder.decode(raw)

    sink = io.BytesIO()
    probes: Any = types.SimpleNamespace(
        plan=types.SimpleNamespace(tier="tracepoint"), commands=lambda: None
    )
    agent = Agent(Settings(), probes, [StreamSink(sink, fmt="json")])
    decoded = [decoder.decode(r) for r in raws]
    kills: list[Any] = []
    for record in decoded:
        kills += agent.correlator.feed(record, agent.capture.on_record(record))
    event = agent.event_of(kills[0])
    batches = [kill_records(GONE_PID, 12345 * 10**7) for _ in range(4096)]
    it = iter(range(1 << 62))

    def whole() -> None:
        for raw in batches[next(it) % len(batches)]:
            agent._process(raw)

    def correlate() -> None:
        fresh = [decoder.decode(r) for r in batches[next(it) % len(batches)]]
        for record in fresh:
            agent.correlator.feed(record)

    def capture() -> None:
        for record in decoded:
            agent.capture.on_record(record)

    decode_us = per_call_us(lambda: [decoder.decode(r) for r in raws], seconds)
    stages = [
        ("decode 2 records (ctypes, as shipped)", decode_us),
        (
            "capture: /proc lookups, victim gone",
            per_call_us(capture, seconds),
        ),
        ("correlate 2 records (incl. their decode)", per_call_us(correlate, seconds) - decode_us),
        (
            "build, enrich and classify the event",
            per_call_us(lambda: agent.event_of(kills[0]), seconds),
        ),
        ("serialize (orjson)", per_call_us(lambda: orjson.dumps(event) + b"\n", seconds)),
        ("whole pipeline (Agent._process x 2, sink)", per_call_us(whole, seconds)),
    ]
    proto = per_call_us(lambda: [fast.decode(r) for r in raws], seconds)
    report = common.Report("Hot path per event (bench.hotpath)")
    report.add(
        "One SIGKILL (2 records -> 1 JSON line), us per event, median of 5",
        ["stage", "us per event"],
        [[name, f"{us:.1f}"] for name, us in stages],
    )
    report.add(
        "Decoding prototype: struct.Struct + namedtuple per kind, same builders",
        ["decoder", "us per event (2 records)", "saving"],
        [
            ["records.RecordDecoder (ctypes)", f"{decode_us:.1f}", "-"],
            ["StructDecoder (bench.hotpath)", f"{proto:.1f}", f"{decode_us - proto:.1f} us"],
        ],
    )
    report.note(f"pid {os.getpid()}; target: under 50 us per event for the whole pipeline.")
    report.data = {"stages_us": dict(stages), "struct_decode_us": proto}
    report.emit(args.json)


if __name__ == "__main__":
    main()
