"""Processes that name themselves to attack an operator's terminal, for the tests
on this machine's kernel and in the VM."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oomtrace.display import is_printable
from tests.support.memcg import memcg

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
# OOM's victim); alloc 40 MiB and sleep (the OOM's trigger, alive to be read);
# hog: grow until killed.
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
    "if mode == 'hog':\n"
    "    x = []\n"
    "    while True:\n"
    "        x.append(bytearray(1 << 20))\n"
    "time.sleep(120)\n"
)


# The program comes from the environment, so that the hostile arguments fall
# within the head of argv the kernel keeps at exec (256 bytes).
LOADER = b"import os; exec(os.environ['OOMTRACE_NAMER'])"


def spawn(mode: bytes, **kwargs: Any) -> subprocess.Popen[bytes]:
    argv = [sys.executable.encode(), b"-c", LOADER, COMM.hex().encode(), mode, *ARGV]
    assert sum(len(a) + 1 for a in argv) <= 256, "the hostile arguments must be kept at exec"
    env = {**os.environ, "OOMTRACE_NAMER": NAMER}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, **kwargs)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"named"
    assert Path(f"/proc/{proc.pid}/comm").read_bytes() == COMM + b"\n"
    return proc


def b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def assert_exact(proc: dict[str, Any], *, argv: bool) -> None:
    assert b64(proc["comm_b64"]) == COMM
    assert proc["comm"] == COMM.decode("utf-8", "backslashreplace")
    if argv:
        # Kept by the kernel at exec (or, without BTF, read from /proc while it lived).
        assert [b64(a) for a in proc["cmdline_b64"]][-len(ARGV) :] == ARGV
        # Valid UTF-8 arguments are exact text, control characters and all.
        assert proc["cmdline"][-len(ARGV)] == ARGV[0].decode()


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def oom_in_hostile_memcg(
    wait_for: Callable[[int], list[dict[str, Any]]], *, separate_trigger: bool = True
) -> tuple[list[dict[str, Any]], bytes, int]:
    """An OOM kill in a 64 MiB memcg named with a space, an escape, a CR and a byte
    that is not UTF-8. With `separate_trigger`, a namer holds (the victim) and another
    allocates and lives on (the trigger, whose argv is read); else one namer grows
    until it is killed (where the victim's memory is freed slowly, as under software
    emulation, a second OOM would take a separate allocator too). `wait_for(victim
    pid)` returns the agents' events of it. Returns them, the cgroup path's bytes and
    the victim's pid."""
    with memcg(64 * MiB, prefix=os.fsdecode(CGROUP_PREFIX)) as group:
        cgroup = os.fsencode(group.cgroup_path)
        if separate_trigger:
            victim = spawn(b"hold", preexec_fn=group.preexec)
            trigger = spawn(b"alloc", preexec_fn=group.preexec)
        else:
            victim = trigger = spawn(b"hog", preexec_fn=group.preexec)
        try:
            if separate_trigger:
                assert trigger.stdout is not None
                assert trigger.stdout.readline().strip() == b"allocated"
            assert victim.wait(timeout=60) == -signal.SIGKILL
            events = wait_for(victim.pid)
        finally:
            stop(victim, trigger)
    for event in events:
        assert event["type"] == "oom_kill"
        assert event["trigger"]["pid"] == trigger.pid
        assert_exact(event["victim"], argv=True)
        assert_exact(event["trigger"], argv=True)
        assert b64(event["victim"]["cgroup_b64"]) == cgroup
        assert b64(event["oom"]["memcg_b64"]) == cgroup
        assert event["oom"]["memcg"] == cgroup.decode("utf-8", "backslashreplace")
        assert is_printable(event["explanation"])
    return events, cgroup, victim.pid
