"""Which process was it: every victim's command line and age, kept while it lived.

A victim is gone (its memory freed, /proc/<pid>/cmdline empty) before userspace
can read it, so the kernel keeps each process's argv from its exec (or its
fork) and copies it into the records of its kill. Processes that exec'd before
the agent started are read from /proc once, at start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, Event, victim_pid
from tests.support.cgroupv1 import task_room
from tests.support.memcg import memcg

pytestmark = pytest.mark.kernel

MiB = 1 << 20


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    proc = AgentProcess()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def _started(event: Event) -> datetime:
    return datetime.fromisoformat(event["victim"]["started"][:26] + "+00:00")


def test_sleep_killed_a_second_after_it_started(agent: AgentProcess) -> None:
    sleeper = subprocess.Popen(["sleep", "500"])
    time.sleep(1.0)
    sleeper.kill()
    assert sleeper.wait() == -signal.SIGKILL
    event = agent.wait_for(victim_pid(sleeper.pid))
    victim = event["victim"]
    assert victim["cmdline"] == ["sleep", "500"]
    assert victim["cmdline_source"] == "exec"
    assert victim["cmdline_truncated"] is False
    assert 0.9 <= victim["age_s"] < 3.0, victim["age_s"]
    # started + age is the kill's time, to the clocks' agreement.
    kill_time = datetime.fromisoformat(event["time"][:26] + "+00:00")
    assert abs((kill_time - _started(event)).total_seconds() - victim["age_s"]) < 0.05
    assert "after it started" in event["explanation"]


def test_oom_kill_right_after_exec_keeps_the_whole_argv(agent: AgentProcess) -> None:
    # Allocates at once: python's start-up and one bytearray past the limit.
    argv = ["python3", "-S", "-c", "b = bytearray(256 << 20)", "--job", "nightly-report-42"]
    with memcg(64 * MiB) as group:
        hog = subprocess.Popen(argv, executable=sys.executable, preexec_fn=group.preexec)
        assert hog.wait(timeout=60) == -signal.SIGKILL
    event = agent.wait_for(victim_pid(hog.pid))
    victim = event["victim"]
    assert event["type"] == "oom_kill"
    assert victim["cmdline"] == argv
    assert victim["cmdline_source"] == "exec"
    # Killed within its first second: the age says a limit too small at start.
    assert victim["age_s"] < 1.0, victim["age_s"]
    # The trigger is the victim itself here, with the same argv.
    assert event["trigger"]["cmdline"] == argv


def _execd(proc: subprocess.Popen[bytes], comm: str) -> subprocess.Popen[bytes]:
    """``proc`` once it runs its program and waits (a read, a sleep): killed
    between fork and exec, a child still has (and is reported with) its parent's
    argv. The new comm alone is not enough: exec sets it before it loads the
    program, and its tracepoint fires only once that is done."""
    deadline = time.monotonic() + 10
    while not _waiting_as(proc.pid, comm):
        assert time.monotonic() < deadline, f"{proc.args!r} did not exec"
        time.sleep(0.005)
    return proc


def _waiting_as(pid: int, comm: str) -> bool:
    # /proc/<pid>/stat: "pid (comm) state ..."; S is an interruptible sleep.
    stat = Path(f"/proc/{pid}/stat").read_text()
    name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
    return name == comm and rest.startswith("S")


def _reader(*args: str) -> subprocess.Popen[bytes]:
    """A shell that waits on its stdin: alive for as long as needed, any argv."""
    return _execd(subprocess.Popen(["sh", "-c", "read line", *args], stdin=subprocess.PIPE), "sh")


def test_a_long_argv_is_cut_and_says_so(agent: AgentProcess) -> None:
    args = [f"--option-{n:03d}=value" for n in range(40)]
    short = _reader("worker", *args[:3])
    short.kill()
    short.wait()
    event = agent.wait_for(victim_pid(short.pid))
    assert event["victim"]["cmdline"] == ["sh", "-c", "read line", "worker", *args[:3]]
    assert event["victim"]["cmdline_truncated"] is False
    # 40 options are more than the kernel keeps: the head, and the mark.
    long = _reader("worker", *args)
    long.kill()
    long.wait()
    cut = agent.wait_for(victim_pid(long.pid))["victim"]
    assert cut["cmdline_truncated"] is True
    assert cut["cmdline"][:4] == ["sh", "-c", "read line", "worker"]
    assert len("\0".join(cut["cmdline"])) == 256  # the first 256 bytes, cut mid-argument
    # Whole arguments up to the cut, then the start of the one it fell in.
    *whole, last = cut["cmdline"][4:]
    assert whole == args[: len(whole)]
    assert args[len(whole)].startswith(last)


def test_a_sender_script_that_exits_at_once(agent: AgentProcess) -> None:
    sleeper = _execd(subprocess.Popen(["sleep", "500"]), "sleep")
    script = ["sh", "-c", 'kill -9 "$1"; exit 0', "evict-by-hand", str(sleeper.pid)]
    subprocess.run(script, check=True)
    assert sleeper.wait() == -signal.SIGKILL
    event = agent.wait_for(victim_pid(sleeper.pid))
    sender = event["sender"]
    assert sender["comm"] == "sh"
    assert sender["cmdline"] == script
    assert sender["cmdline_source"] == "exec"


def test_a_forked_worker_has_its_parents_argv(agent: AgentProcess) -> None:
    # A pre-fork server's worker never execs: its argv is its parent's.
    code = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(600)\n"
        "print(pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    argv = ["gunicorn-like", "-c", code, "--workers", "1"]
    parent = subprocess.Popen(argv, executable=sys.executable, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        os.kill(worker, signal.SIGKILL)
        event = agent.wait_for(victim_pid(worker))
    finally:
        parent.kill()
        parent.wait()
    assert event["victim"]["cmdline"] == argv
    assert event["victim"]["cmdline_source"] == "exec"


# -- a burst -------------------------------------------------------------------------

N_BEFORE = 3000  # started before the agent: their argv comes from /proc at its start
N_AFTER = 3000  # started after: the kernel keeps their argv at exec
BASE = 400_000  # sleep BASE+i: each process's argv is its own


def _sleepers(first: int, n: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(["sleep", str(BASE + first + i)], stdin=subprocess.DEVNULL)
        for i in range(n)
    ]


def test_a_burst_of_6000_long_lived_processes_keeps_every_argv() -> None:
    n = N_BEFORE + N_AFTER
    procs: list[subprocess.Popen[bytes]] = []
    with task_room(n):
        try:
            procs += _sleepers(0, N_BEFORE)
            agent = AgentProcess(
                "--ring-buffer-pages",
                "8192",
                "--record-queue-size",
                str(4 * n),
                "--sink-queue-size",
                str(4 * n),
            )
            try:
                ready = agent.wait_ready()
                assert ready["commands_seeded"] >= N_BEFORE
                procs += _sleepers(N_BEFORE, N_AFTER)
                for proc in procs:
                    proc.send_signal(signal.SIGKILL)
                for proc in procs:
                    proc.wait()
                expected = {p.pid: ["sleep", str(BASE + i)] for i, p in enumerate(procs)}
                deadline = time.monotonic() + 120
                seen: dict[int, Event] = {}
                while len(seen) < n and time.monotonic() < deadline:
                    seen = {
                        pid: e
                        for e in agent.collect(1.0)
                        if (pid := (e.get("victim") or {}).get("pid")) in expected
                    }
                assert not [e for e in agent.events if e["type"] == "lost"]
            finally:
                agent.stop()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert len(seen) == n
    wrong = {
        pid: e["victim"]["cmdline"]
        for pid, e in seen.items()
        if e["victim"]["cmdline"] != expected[pid]
    }
    assert not wrong, list(wrong.items())[:5]
    sources = [seen[p.pid]["victim"]["cmdline_source"] for p in procs]
    assert sources[:N_BEFORE] == ["proc"] * N_BEFORE
    assert sources[N_BEFORE:] == ["exec"] * N_AFTER
