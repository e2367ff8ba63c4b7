"""A kill -9 linked to its exit on this kernel, with and without the task offsets
that BTF gives: the two ways signals.bpf.c follows a kill, loaded for real."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oomtrace.correlate import Correlator, Kill
from oomtrace.kernel import features, probes
from oomtrace.kernel.records import DeliverRecord, ExitRecord, Record, RecordDecoder, SignalRecord

DELIVER = "signal:signal_deliver"


@pytest.fixture(scope="module")
def kernel() -> features.KernelFeatures:
    found = features.probe_kernel(features.find_tracefs(mount=True))
    assert found.offsets is not None, "this suite expects a kernel with BTF"
    return found


@pytest.fixture(scope="module")
def kernel_without_btf() -> features.KernelFeatures:
    return features.probe_kernel(
        features.find_tracefs(mount=True), btf_path=Path("/nonexistent/vmlinux")
    )


def _kill_9_records(p: probes.Plan) -> Iterator[Record]:
    """The records of one kill -9 of a sleep, loaded from plan `p`."""
    loaded = probes.Probes(p)
    raw: list[bytes] = []
    try:
        loaded.open(raw.append)
        victim = subprocess.Popen(["sleep", "300"])
        time.sleep(0.1)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        end = time.monotonic() + 5
        while time.monotonic() < end and not any(
            isinstance(r, ExitRecord) and r.victim.tgid == victim.pid
            for r in map(RecordDecoder().decode, raw)
        ):
            loaded.poll(100)
    finally:
        loaded.close()
    for record in map(RecordDecoder().decode, raw):
        if isinstance(record, SignalRecord):
            if record.target_tid == victim.pid:
                yield record
        elif isinstance(record, DeliverRecord | ExitRecord) and record.victim.tgid == victim.pid:
            yield record


def _one_kill(records: list[Record]) -> Kill:
    corr = Correlator()
    kills = [k for r in records for k in corr.feed(r)]
    assert len(kills) == 1
    assert kills[0].exit is not None and not kills[0].exit_timed_out
    return kills[0]


def test_with_btf_sigkill_goes_from_generate_to_exit(kernel: features.KernelFeatures) -> None:
    p = probes.plan(kernel, tier="tracepoint")
    assert DELIVER not in p.hooks
    assert "OOMTRACE_NEEDS_DELIVER" not in p.defines
    records = list(_kill_9_records(p))
    assert [type(r) for r in records] == [SignalRecord, ExitRecord]
    kill = _one_kill(records)
    assert kill.exit is not None and kill.exit.exit_code == signal.SIGKILL


def test_another_traced_signal_brings_deliver_back(kernel: features.KernelFeatures) -> None:
    p = probes.plan(kernel, tier="tracepoint", signals=frozenset({9, 15}))
    assert DELIVER in p.hooks
    # SIGKILL still needs no deliver record: nothing can catch it.
    assert [type(r) for r in _kill_9_records(p)] == [SignalRecord, ExitRecord]


def test_without_btf_deliver_names_the_process(
    kernel_without_btf: features.KernelFeatures,
) -> None:
    p = probes.plan(kernel_without_btf, tier="tracepoint")
    assert p.defines.get("OOMTRACE_HAVE_TASK_OFFSETS") is None
    assert DELIVER in p.hooks
    # The plain tracepoint knows only the target thread: delivery, in the
    # victim's own context, gives its process, and the exit follows.
    records = list(_kill_9_records(p))
    assert [type(r) for r in records] == [SignalRecord, DeliverRecord, ExitRecord]
    kill = _one_kill(records)
    assert kill.deliver is not None and kill.deliver.sig == signal.SIGKILL
