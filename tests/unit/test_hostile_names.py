"""Names a local user chose (comm, argv) and root chose (cgroups), through the whole
pipeline: JSON keeps them exactly and losslessly, and nothing a person reads carries
a character a terminal would act on.

The records are the recorded `kill -9` of a sleep (tests/data), with the comms the
kernel would have written for a hostile process put in their place."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import types
from typing import Any

import orjson
import pytest

from oomtrace.capture import NO_EVIDENCE, Evidence, Seen
from oomtrace.config import Settings
from oomtrace.display import is_printable
from oomtrace.host.procfs import Parent, ProcSnapshot
from oomtrace.kernel.records import Argv, ExitRecord, Record, SignalRecord, Task
from oomtrace.pipeline import Agent
from oomtrace.sinks.stream import StreamSink, json_line, text_block
from tests.support.recorded import scenarios

# What the kernel would hold: comm is at most 15 bytes, any but NUL.
HOSTILE_COMM = b"\x1b[2J\x1b[31mEV\n\xff"
SENDER_COMM = b"\x1b]0;pwn\x07\r\xfe"
HOSTILE_ARGV = [b"/bin/sleep", b"\x1b[2J\x1b]52;c;cGFzdGU=\x07", b"\r\nOOM KILL fake", b"\xff\xfe"]
HOSTILE_CGROUP = b"/evil \x1b[31m\ncg\xff"
PARENT_COMM = b"sh\x1b[1A\x9b"


def _hostile(task: Task, comm: bytes) -> Task:
    return dataclasses.replace(task, comm=os.fsdecode(comm))


def _records() -> list[Record]:
    out: list[Record] = []
    for recorded in scenarios("6.18")["sigkill"]:
        record = recorded
        if isinstance(recorded, SignalRecord):
            assert recorded.target is not None
            record = dataclasses.replace(
                recorded,
                sender=_hostile(recorded.sender, SENDER_COMM),
                target_comm=os.fsdecode(HOSTILE_COMM),
                target=_hostile(recorded.target, HOSTILE_COMM),
                # The kernel keeps the argv the process exec'd with.
                target_argv=Argv(tuple(os.fsdecode(a) for a in HOSTILE_ARGV), "exec", False),
            )
        elif isinstance(recorded, ExitRecord):
            record = dataclasses.replace(recorded, victim=_hostile(recorded.victim, HOSTILE_COMM))
        out.append(record)
    return out


def _evidence(record: Record) -> Evidence:
    cgroup = os.fsdecode(HOSTILE_CGROUP)
    if isinstance(record, SignalRecord):
        assert record.target is not None
        victim = ProcSnapshot(
            tgid=record.target.tgid,
            start_ticks=0,
            comm=record.target.comm,
            cmdline=[os.fsdecode(a) for a in HOSTILE_ARGV],
            uid=1000,
            ppid=1,
            parents=(),
            tty=None,
            oom_score_adj=0,
            memory_cgroup=cgroup,
            unified_cgroup=None,
            memory_kb={},
        )
        parents = (Parent(record.sender.ppid, os.fsdecode(PARENT_COMM)), Parent(1, "systemd"))
        return Evidence(
            sender=Seen(None, cgroup, parents=parents),
            target=Seen(victim, cgroup),
        )
    if isinstance(record, ExitRecord):
        return Evidence(victim=Seen(None, cgroup))
    return NO_EVIDENCE


@pytest.fixture(scope="module")
def event() -> dict[str, Any]:
    probes: Any = types.SimpleNamespace(
        plan=types.SimpleNamespace(tier="tracepoint"), commands=lambda: None
    )
    agent = Agent(Settings(), probes, [StreamSink(io.BytesIO(), fmt="json")])
    kills = []
    for record in _records():
        kills += agent.correlator.feed(record, _evidence(record))
    kills += agent.correlator.drain()
    [built] = [e for e in map(agent.event_of, kills) if e is not None]
    return built


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def test_json_keeps_every_name_exactly(event: dict[str, Any]) -> None:
    parsed = orjson.loads(json_line(event))
    victim, sender = parsed["victim"], parsed["sender"]
    # Valid UTF-8 control characters stay as they are (orjson escapes them);
    # bytes that are not UTF-8 are \xNN in the text and exact in *_b64.
    assert victim["comm"] == "\x1b[2J\x1b[31mEV\n\\xff"
    assert _b64(victim["comm_b64"]) == HOSTILE_COMM
    assert _b64(sender["comm_b64"]) == SENDER_COMM
    assert [_b64(a) for a in victim["cmdline_b64"]] == HOSTILE_ARGV
    assert victim["cmdline"][1] == "\x1b[2J\x1b]52;c;cGFzdGU=\x07"
    assert _b64(victim["cgroup_b64"]) == HOSTILE_CGROUP
    assert _b64(sender["parents"][0]["comm_b64"]) == PARENT_COMM
    # A name that is valid UTF-8 has no *_b64: its text is exact.
    assert "comm_b64" not in sender["parents"][1]


def test_explanation_is_printable(event: dict[str, Any]) -> None:
    assert is_printable(event["explanation"])
    assert "\\x1b[2J" in event["explanation"]


def test_text_view_holds_no_control_byte_but_its_line_breaks(event: dict[str, Any]) -> None:
    text = text_block(event).decode("utf-8")
    for line in text.split("\n"):
        assert is_printable(line), line
    # The forged line inside an argument did not become a line of its own.
    assert not any(line.startswith("OOM KILL") for line in text.split("\n"))
