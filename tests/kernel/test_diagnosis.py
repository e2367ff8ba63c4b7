"""Causes that need no pods: cgroup.kill, a person's kill -9, a crash, a script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, victim_pid

pytestmark = pytest.mark.kernel


@pytest.fixture
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    args = getattr(request, "param", ())
    proc = AgentProcess(*args)
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.logs[-5:]


def _unified_root() -> Path:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] == "cgroup2":
                return Path(left.split()[4])
    raise RuntimeError("no cgroup2 mount")


def test_cgroup_kill(agent: AgentProcess) -> None:
    group = _unified_root() / f"oomtrace-kill-{uuid.uuid4().hex[:6]}"
    group.mkdir()
    try:
        victim = subprocess.Popen(
            ["sleep", "300"], preexec_fn=lambda: (group / "cgroup.procs").write_text("0")
        )
        (group / "cgroup.kill").write_text("1")
        assert victim.wait(timeout=10) == -signal.SIGKILL
        event = agent.wait_for(victim_pid(victim.pid), what="the cgroup.kill")
    finally:
        group.rmdir()
    assert event["cause"] == "cgroup_kill"
    assert event["signal"]["code"] == "SI_USER"
    assert event["sender"]["pid"] == os.getpid()
    assert "cgroup.kill" in event["explanation"]
    assert event["victim"]["exit"]["code"] == 137


def test_kill_9_from_an_interactive_shell(agent: AgentProcess) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    # script(1) gives the shell a pseudo-terminal, as an ssh or tmux session would.
    subprocess.run(
        ["script", "-qec", f"bash -c 'kill -9 {victim.pid}'", "/dev/null"],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        timeout=30,
    )
    assert victim.wait(timeout=10) == -signal.SIGKILL
    event = agent.wait_for(victim_pid(victim.pid), what="the manual kill")
    assert event["cause"] == "manual"
    assert event["sender"]["comm"] == "bash"
    assert event["sender"]["tty"].startswith("pts/")
    assert event["signal"]["code"] == "SI_USER"
    assert "interactive session on pts/" in event["explanation"]


def test_kill_9_from_a_script_is_a_process(agent: AgentProcess) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    subprocess.run(["sh", "-c", f"kill -9 {victim.pid}"], check=True, stdin=subprocess.DEVNULL)
    victim.wait(timeout=10)
    event = agent.wait_for(victim_pid(victim.pid))
    assert event["cause"] == "process"
    assert event["sender"]["tty"] is None


@pytest.mark.parametrize("agent", [("--signals", "KILL,SEGV")], indirect=True)
def test_segfault_is_a_kernel_signal_not_an_oom(agent: AgentProcess) -> None:
    crash = subprocess.Popen(
        [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], stderr=subprocess.DEVNULL
    )
    assert crash.wait(timeout=30) == -signal.SIGSEGV
    event = agent.wait_for(victim_pid(crash.pid), what="the SIGSEGV")
    assert event["type"] == "signal"
    assert event["cause"] == "kernel"
    assert event["signal"]["name"] == "SIGSEGV"
    assert event["signal"]["code"] == "SEGV_MAPERR"
    assert event["signal"]["from_kernel"] is True
    assert event["sender"]["pid"] == crash.pid
    assert event["victim"]["exit"]["code"] == 139
    agent.collect(0.5)
    assert not [e for e in agent.events if e["type"] == "oom_kill"]


def test_sigterm_is_told_apart_from_sigkill(tmp_path: Path) -> None:
    agent = AgentProcess("--signals", "KILL,TERM")
    try:
        agent.wait_ready()
        term, kill = subprocess.Popen(["sleep", "300"]), subprocess.Popen(["sleep", "300"])
        term.terminate()
        kill.kill()
        term.wait(timeout=10)
        kill.wait(timeout=10)
        by_term = agent.wait_for(victim_pid(term.pid))
        by_kill = agent.wait_for(victim_pid(kill.pid))
    finally:
        assert agent.stop() == 0
    assert (by_term["signal"]["name"], by_term["victim"]["exit"]["code"]) == ("SIGTERM", 143)
    assert (by_kill["signal"]["name"], by_kill["victim"]["exit"]["code"]) == ("SIGKILL", 137)
    assert "exit code 143" in by_term["explanation"]


def test_victim_that_cannot_exit_is_reported_as_stuck() -> None:
    # A task frozen by the v1 freezer stays in D state with SIGKILL pending: the
    # same "killed but not gone" that a stuck OOM victim shows.
    freezer = Path("/sys/fs/cgroup/freezer") / f"oomtrace-frz-{uuid.uuid4().hex[:6]}"
    freezer.mkdir()
    agent = AgentProcess("--exit-wait", "1")
    victim = subprocess.Popen(
        ["sleep", "300"], preexec_fn=lambda: (freezer / "cgroup.procs").write_text("0")
    )
    try:
        agent.wait_ready()
        (freezer / "freezer.state").write_text("FROZEN")
        victim.kill()
        event = agent.wait_for(victim_pid(victim.pid), what="the stuck victim's event")
        assert event["victim"]["exit"] == {"observed": False, "waited_ms": 1000}
        assert victim.poll() is None
    finally:
        (freezer / "freezer.state").write_text("THAWED")
        victim.wait(timeout=10)
        freezer.rmdir()
        assert agent.stop() == 0
