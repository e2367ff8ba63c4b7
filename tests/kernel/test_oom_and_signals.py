"""The agent against this machine's kernel: real OOM kills in memory-limited
cgroups and real signals, read back from the agent's JSON output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, victim_pid
from tests.support.memcg import Memcg, memcg

pytestmark = pytest.mark.kernel

MiB = 1 << 20

HOG = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"


def _with_adj(adj: int, code: str) -> list[str]:
    # oom_score_adj is set by the process itself before it allocates, as the
    # kubelet's runtime does for a container's first process.
    prologue = f"open('/proc/self/oom_score_adj', 'w').write('{adj}')\n"
    return [sys.executable, "-c", prologue + code]


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    proc = AgentProcess()
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.logs[-5:]


@pytest.fixture
def limited() -> Iterator[Memcg]:
    with memcg(64 * MiB) as group:
        yield group


def _oom_kills(agent: AgentProcess) -> list[dict[str, object]]:
    return [e for e in agent.events if e["type"] == "oom_kill"]


def test_hog_in_limited_memcg_gives_one_oom_kill(agent: AgentProcess, limited: Memcg) -> None:
    hog = subprocess.Popen(_with_adj(321, HOG), preexec_fn=limited.preexec)
    assert hog.wait(timeout=60) == -signal.SIGKILL

    event = agent.wait_for(victim_pid(hog.pid), what="the hog's oom_kill")
    agent.collect(1.0)
    assert len(_oom_kills(agent)) == 1, _oom_kills(agent)

    assert event["type"] == "oom_kill"
    assert event["schema"] == "oomtrace.event/v1"
    assert event["time"].endswith("Z")
    assert event["group_kill"] is False
    victim = event["victim"]
    assert victim["pid"] == hog.pid
    assert victim["cgroup"] == limited.cgroup_path
    assert victim["oom_score_adj"] == 321
    memory = victim["memory"]
    assert memory["anon_rss_kb"] > 40 * 1024
    assert memory["total_vm_kb"] >= memory["anon_rss_kb"]
    assert victim["exit"]["observed"] is True
    assert victim["exit"]["code"] == 137
    assert event["signal"]["code"] == "SI_KERNEL"
    assert event["trigger"]["pid"] == hog.pid

    oom = event["oom"]
    assert oom["memcg"] == limited.cgroup_path
    stat = oom["memcg_stat"]
    assert stat["limit_bytes"] == 64 * MiB
    assert 48 * MiB <= stat["usage_bytes"] <= 64 * MiB
    assert stat["usage_source"] == "kernel_at_kill"
    assert stat["working_set_bytes"] <= stat["usage_bytes"]
    # memory.stat is read from files a little after the kill, while the victim's
    # anon memory is being freed: present, not necessarily still at its peak.
    assert {"anon", "file", "active_file", "inactive_file"} <= stat["stat"].keys()
    assert 0 <= stat["stat_read_after_kill_ms"] < 1000


def test_idle_holder_is_victim_and_allocator_is_trigger(
    agent: AgentProcess, limited: Memcg
) -> None:
    holder = subprocess.Popen(
        _with_adj(
            1000,
            "import time\nb = bytearray(36 << 20)\nprint('held', flush=True)\ntime.sleep(120)\n",
        ),
        preexec_fn=limited.preexec,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    # Fits only once the holder is gone, so exactly one OOM kill happens.
    allocator = subprocess.Popen(
        _with_adj(0, "b = bytearray(40 << 20)\n"), preexec_fn=limited.preexec
    )
    assert allocator.wait(timeout=60) == 0
    assert holder.wait(timeout=10) == -signal.SIGKILL

    event = agent.wait_for(victim_pid(holder.pid), what="the holder's oom_kill")
    assert event["type"] == "oom_kill"
    assert event["victim"]["oom_score_adj"] == 1000
    assert event["victim"]["cgroup"] == limited.cgroup_path
    assert event["trigger"]["pid"] == allocator.pid
    assert event["trigger"]["comm"] == Path(sys.executable).name[:15]
    assert event["trigger"]["cgroup"] == limited.cgroup_path
    assert event["oom"]["memcg"] == limited.cgroup_path


def test_kill_9_names_the_sending_script(agent: AgentProcess, tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    script = tmp_path / "evict-by-hand.sh"
    script.write_text(f"#!/bin/sh\nkill -9 {victim.pid}\n")
    script.chmod(0o755)
    sender = subprocess.Popen([str(script)])
    assert sender.wait(timeout=10) == 0
    assert victim.wait(timeout=10) == -signal.SIGKILL

    event = agent.wait_for(victim_pid(victim.pid), what="the signal event")
    assert event["type"] == "signal"
    assert event["signal"]["name"] == "SIGKILL"
    assert event["signal"]["code"] == "SI_USER"
    assert event["sender"]["pid"] == sender.pid
    assert event["sender"]["comm"] == "evict-by-hand.s"
    parents = [p["pid"] for p in event["sender"]["parents"]]
    assert parents[0] == os.getpid()
    assert parents[-1] == 1
    assert event["victim"]["exit"]["code"] == 137
    assert event["victim"]["cgroup"]


def test_sigterm_only_when_asked() -> None:
    def term_one(agent: AgentProcess) -> int:
        victim = subprocess.Popen(["sleep", "300"])
        time.sleep(0.1)
        victim.terminate()
        assert victim.wait(timeout=10) == -signal.SIGTERM
        return victim.pid

    default = AgentProcess()
    try:
        # Only SIGKILL traced, and the task offsets read the target's tgid:
        # no program runs on the delivery of every signal of the node.
        assert "signal:signal_deliver" not in default.wait_ready()["hooks"]
        pid = term_one(default)
        marker = subprocess.Popen(["sleep", "300"])
        marker.kill()
        marker.wait()
        # The SIGKILL after it arrives, so the SIGTERM had its chance.
        default.wait_for(victim_pid(marker.pid))
        assert not [e for e in default.events if victim_pid(pid)(e)]
    finally:
        assert default.stop() == 0

    with_term = AgentProcess("--signals", "KILL,TERM")
    try:
        # A handler may catch SIGTERM: only its delivery tells.
        assert "signal:signal_deliver" in with_term.wait_ready()["hooks"]
        pid = term_one(with_term)
        event = with_term.wait_for(victim_pid(pid))
        assert event["signal"]["name"] == "SIGTERM"
        assert event["signal"]["number"] == 15
        assert event["victim"]["exit"]["code"] == 143
    finally:
        assert with_term.stop() == 0


def test_caught_sigterm_is_reported_at_delivery() -> None:
    agent = AgentProcess("--signals", "KILL,TERM")
    catcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: print('caught', flush=True))\n"
            "print('ready', flush=True)\n"
            "time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        agent.wait_ready()
        assert catcher.stdout is not None and catcher.stdout.readline().strip() == b"ready"
        catcher.terminate()
        assert catcher.stdout.readline().strip() == b"caught"
        # Complete at its delivery, well before the exit wait (5 s) would end it.
        event = agent.wait_for(victim_pid(catcher.pid), timeout=3.0)
        assert event["signal"]["name"] == "SIGTERM"
        assert event["victim"]["exit"] is None
        assert catcher.poll() is None
    finally:
        catcher.kill()
        catcher.wait()
        assert agent.stop() == 0


def test_storm_of_untraced_signals_reaches_nothing(agent: AgentProcess) -> None:
    target = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
            "print('ready', flush=True)\n"
            "time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert target.stdout is not None and target.stdout.readline().strip() == b"ready"
    for _ in range(100_000):
        os.kill(target.pid, signal.SIGUSR1)
    target.kill()
    target.wait()
    agent.wait_for(victim_pid(target.pid), what="the closing SIGKILL")
    agent.stop()
    assert [e["type"] for e in agent.events] == ["signal"]
    # The kernel filter dropped the storm: the agent decoded only the
    # SIGKILL's own records (generate, exit) and a few others.
    assert agent.stats()["records"] < 100


def test_victim_gone_before_userspace_reads(agent: AgentProcess) -> None:
    # Freeze the agent so its records wait in the ring buffer while the victim
    # exits, is reaped, and its cgroup is removed.
    with memcg(64 * MiB) as group:
        cgroup_path = group.cgroup_path
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            hog = subprocess.Popen(_with_adj(0, HOG), preexec_fn=group.preexec)
            assert hog.wait(timeout=60) == -signal.SIGKILL
        except BaseException:
            agent.proc.send_signal(signal.SIGCONT)
            raise
    assert not Path(f"/proc/{hog.pid}").exists()
    agent.proc.send_signal(signal.SIGCONT)

    event = agent.wait_for(victim_pid(hog.pid), what="the late oom_kill")
    assert event["type"] == "oom_kill"
    assert event["victim"]["cgroup"] == cgroup_path
    assert event["victim"]["exit"]["code"] == 137


def test_help_teaches_and_bad_flags_exit_2() -> None:
    run = [sys.executable, "-m", "oomtrace"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0
    assert "examples:" in helped.stdout and "--follow" in helped.stdout
    assert "--ebpf" not in helped.stdout
    for bad in (["--follow", "--signals", "NOPE"], ["--follow", "--format", "xml"], []):
        result = subprocess.run([*run, *bad], capture_output=True, text=True, check=False)
        assert result.returncode == 2, bad
        assert "oomtrace" in result.stderr


def test_not_root_names_missing_capabilities() -> None:
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-m",
            "oomtrace",
            "--follow",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "CAP_BPF" in result.stderr or "CAP_SYS_ADMIN" in result.stderr


def test_ebpf_prints_the_generated_c() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oomtrace", "--ebpf"], capture_output=True, text=True, check=True
    )
    assert "TRACEPOINT_PROBE(oom, mark_victim)" in result.stdout
    assert "#define OOMTRACE_RINGBUF_PAGES 1024" in result.stdout
    assert textwrap.dedent("struct oomtrace_signal_rec {") in result.stdout
