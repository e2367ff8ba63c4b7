"""Raw ring-buffer records recorded from real kernels (tests/data/records-*.jsonl,
written by tests/data/record.py), decoded and grouped by scenario."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from oomtrace.kernel.records import Record, RecordDecoder

DATA = Path(__file__).resolve().parent.parent / "data"


def scenarios(kernel: str) -> dict[str, list[Record]]:
    """Each scenario's records in ring-buffer order, from records-<kernel>.jsonl."""
    decoder = RecordDecoder()
    out: dict[str, list[Record]] = defaultdict(list)
    with (DATA / f"records-{kernel}.jsonl").open() as f:
        for line in f:
            entry = json.loads(line)
            out[entry["scenario"]].append(decoder.decode(bytes.fromhex(entry["hex"])))
    return dict(out)
