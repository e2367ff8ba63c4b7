"""A process that names itself to attack the operator's terminal, on the real kernel:
its comm (prctl) and argv carry ESC, OSC, BEL, CR, newlines and bytes that are not
UTF-8. It is SIGKILLed, and then another such process is OOM-killed in a memcg.

The JSON events hold the exact names, losslessly; the text view, read as an
operator's terminal would get it, holds no control byte but its own line breaks.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from oomtrace.display import is_printable
from tests.support.agent import AgentProcess, repo_root, victim_pid
from tests.support.hostile import COMM, assert_exact, oom_in_hostile_memcg, spawn, stop

pytestmark = pytest.mark.kernel

MiB = 1 << 20


class TextAgent:
    """The agent as an operator runs it on a terminal: the text view on stdout."""

    def __init__(self, out: Path, err: Path) -> None:
        self.out, self.err = out, err
        command = ["-m", "oomtrace", "--follow", "--format", "text", "--log-format", "json"]
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            stdout=out.open("wb"),
            stderr=err.open("wb"),
            cwd=repo_root(),
        )
        end = time.monotonic() + 120
        while b'"ready"' not in err.read_bytes():
            assert self.proc.poll() is None, err.read_text(errors="replace")
            assert time.monotonic() < end, "the text agent never got ready"
            time.sleep(0.1)

    def stop(self) -> bytes:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=15) == 0
        return self.out.read_bytes()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[tuple[AgentProcess, TextAgent]]:
    json_agent = AgentProcess()
    text_agent: TextAgent | None = None
    try:
        json_agent.wait_ready()
        text_agent = TextAgent(tmp_path / "view.txt", tmp_path / "view.log")
        yield json_agent, text_agent
    finally:
        if text_agent is not None and text_agent.proc.poll() is None:
            text_agent.proc.kill()
            text_agent.proc.wait()
        json_agent.stop()


def _assert_text_view_is_safe(view: bytes, expect: list[str]) -> None:
    text = view.decode("utf-8")  # strict: the view itself is valid UTF-8
    lines = text.split("\n")
    for line in lines:
        assert is_printable(line), repr(line)
    assert not any("OOM KILL  forged" in line and line.startswith("2026-12-01") for line in lines)
    for part in expect:
        assert part in text


def test_hostile_names_signal_and_oom(agents: tuple[AgentProcess, TextAgent]) -> None:
    json_agent, text_agent = agents

    # A SIGKILL from one namer to another.
    victim = spawn(b"sleep")
    sender = spawn(f"kill:{victim.pid}".encode())
    try:
        assert victim.wait(timeout=10) == -signal.SIGKILL
        killed = json_agent.wait_for(victim_pid(victim.pid), what="the SIGKILL of the namer")
    finally:
        stop(victim, sender)
    assert killed["type"] == "signal"
    assert killed["sender"]["pid"] == sender.pid
    assert_exact(killed["victim"], argv=True)  # kept at exec, though it is gone
    assert_exact(killed["sender"], argv=True)
    assert is_printable(killed["explanation"])
    assert "\\x1b[2J\\x1b[31mEV\\n\\xff" in killed["explanation"]

    _oom, _cgroup, holder = oom_in_hostile_memcg(
        lambda pid: [json_agent.wait_for(victim_pid(pid), what="the OOM kill of the namer")]
    )
    # Every event the agent wrote is JSON that parses.
    for event in json_agent.events:
        orjson.loads(orjson.dumps(event))

    time.sleep(1.0)  # the text agent's events are written when the kills complete
    view = text_agent.stop()
    _assert_text_view_is_safe(
        view, ["\\x1b[2J\\x1b[31mEV\\n\\xff", f"pid {victim.pid}", f"pid {holder}"]
    )
    assert COMM not in view
