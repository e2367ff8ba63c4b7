"""A process that names itself to attack the operator's terminal, on the real kernel:
its comm (prctl) and argv carry ESC, OSC, BEL, CR, newlines and bytes that are not
UTF-8. It is SIGKILLed, and then another such process is OOM-killed in a memcg.

The JSON events hold the exact names, losslessly; the text view, read as an
operator's terminal would get it, holds no control byte but its own line breaks.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from oomtrace.display import is_printable
from tests.support.agent import AgentProcess, repo_root, victim_pid
from tests.support.memcg import memcg

pytestmark = pytest.mark.kernel

MiB = 1 << 20
# cgroup_mkdir() refuses a name with a newline (EINVAL); anything else goes.
CGROUP_PREFIX = b"oomtrace-test \x1b[31mevil\r\xff"
# 15 bytes, what comm holds: clear screen, red, a newline, and a byte that is not UTF-8.
COMM = b"\x1b[2J\x1b[31mEV\n\xff"
ARGV = [
    b"\x1b]0;owned\x07",  # OSC: set the window title, ended by BEL
    b"\x1b]52;c;cGFzdGU=\x07",  # OSC 52: write the clipboard, where a terminal allows it
    b"ok\r2026-12-01T00:00:00Z  OOM KILL  forged",  # CR, then a forged header
    b"line\nbreak\xfe\xff",
]
# Sets its comm and says so, then does what argv[2] says: sleep; kill:<pid> and
# sleep (a sender, alive to be read); hold 36 MiB at oom_score_adj 1000 (the
# OOM's victim); alloc 40 MiB and sleep (the OOM's trigger, alive to be read).
NAMER = (
    "import ctypes, os, signal, sys, time\n"
    "ctypes.CDLL(None).prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])))\n"
    "mode = sys.argv[2]\n"
    "if mode == 'hold':\n"
    "    open('/proc/self/oom_score_adj', 'w').write('1000')\n"
    "    held = bytearray(36 << 20)\n"
    "print('named', flush=True)\n"
    "if mode.startswith('kill:'):\n"
    "    os.kill(int(mode[5:]), signal.SIGKILL)\n"
    "if mode == 'alloc':\n"
    "    more = bytearray(40 << 20)\n"
    "    print('allocated', flush=True)\n"
    "time.sleep(120)\n"
)


def _spawn(mode: bytes, **kwargs: Any) -> subprocess.Popen[bytes]:
    argv = [sys.executable.encode(), b"-c", NAMER.encode(), COMM.hex().encode(), mode, *ARGV]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, **kwargs)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"named"
    assert Path(f"/proc/{proc.pid}/comm").read_bytes() == COMM + b"\n"
    return proc


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


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _assert_exact(proc: dict[str, Any], *, argv: bool) -> None:
    assert _b64(proc["comm_b64"]) == COMM
    assert proc["comm"] == COMM.decode("utf-8", "backslashreplace")
    if argv:
        # The process was alive when its record came, so /proc gave its argv.
        assert [_b64(a) for a in proc["cmdline_b64"]][-len(ARGV) :] == ARGV
        # Valid UTF-8 arguments are exact text, control characters and all.
        assert proc["cmdline"][-len(ARGV)] == ARGV[0].decode()


def _assert_text_view_is_safe(view: bytes, expect: list[str]) -> None:
    text = view.decode("utf-8")  # strict: the view itself is valid UTF-8
    lines = text.split("\n")
    for line in lines:
        assert is_printable(line), repr(line)
    assert not any("OOM KILL  forged" in line and line.startswith("2026-12-01") for line in lines)
    for part in expect:
        assert part in text


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_hostile_names_signal_and_oom(agents: tuple[AgentProcess, TextAgent]) -> None:
    json_agent, text_agent = agents

    # A SIGKILL from one namer to another.
    victim = _spawn(b"sleep")
    sender = _spawn(f"kill:{victim.pid}".encode())
    try:
        assert victim.wait(timeout=10) == -signal.SIGKILL
        killed = json_agent.wait_for(victim_pid(victim.pid), what="the SIGKILL of the namer")
    finally:
        _stop(victim, sender)
    assert killed["type"] == "signal"
    assert killed["sender"]["pid"] == sender.pid
    _assert_exact(killed["victim"], argv=False)
    _assert_exact(killed["sender"], argv=True)
    assert is_printable(killed["explanation"])
    assert "\\x1b[2J\\x1b[31mEV\\n\\xff" in killed["explanation"]

    # An OOM kill in a 64 MiB memcg root named with a space, an escape, a CR and a
    # byte that is not UTF-8: a namer holds, another allocates.
    with memcg(64 * MiB, prefix=os.fsdecode(CGROUP_PREFIX)) as group:
        cgroup = os.fsencode(group.cgroup_path)
        holder = _spawn(b"hold", preexec_fn=group.preexec)
        allocator = _spawn(b"alloc", preexec_fn=group.preexec)
        try:
            assert allocator.stdout is not None
            assert allocator.stdout.readline().strip() == b"allocated"
            assert holder.wait(timeout=30) == -signal.SIGKILL
            oom = json_agent.wait_for(victim_pid(holder.pid), what="the OOM kill of the namer")
        finally:
            _stop(holder, allocator)
    assert oom["type"] == "oom_kill"
    assert oom["trigger"]["pid"] == allocator.pid
    _assert_exact(oom["victim"], argv=False)
    _assert_exact(oom["trigger"], argv=True)
    assert _b64(oom["victim"]["cgroup_b64"]) == cgroup
    assert _b64(oom["oom"]["memcg_b64"]) == cgroup
    assert oom["oom"]["memcg"] == cgroup.decode("utf-8", "backslashreplace")
    assert is_printable(oom["explanation"])
    # Every event the agent wrote is JSON that parses.
    for event in json_agent.events:
        orjson.loads(orjson.dumps(event))

    time.sleep(1.0)  # the text agent's events are written when the kills complete
    view = text_agent.stop()
    _assert_text_view_is_safe(
        view, ["\\x1b[2J\\x1b[31mEV\\n\\xff", f"pid {victim.pid}", f"pid {holder.pid}"]
    )
    assert COMM not in view
