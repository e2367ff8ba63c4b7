"""The kprobe tier on Debian's stock kernel (run inside the test VM: kprobes,
headers, cgroup v2, systemd). Every scenario is checked against both agents of
the `agents` fixture, one per tier."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, victim_pid
from tests.support.memcg import memcg

pytestmark = pytest.mark.vm

MiB = 1 << 20
HOG = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
HOLD = "import time\nb = bytearray({mib} << 20)\nprint('held', flush=True)\ntime.sleep(300)\n"
Event = dict[str, Any]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def oom_kills_of(agent: AgentProcess, pid: int) -> list[Event]:
    return [e for e in agent.events if e["type"] == "oom_kill" and victim_pid(pid)(e)]


def test_ready_says_which_hooks_are_live(agents: dict[str, AgentProcess]) -> None:
    ready = agents["kprobe"].wait_ready()
    assert ready["tier"] == "kprobe"
    assert "kprobe:oom_kill_process" in ready["hooks"]
    assert ready["kernel_headers"] == "kernel"
    forced = agents["tracepoint"].wait_ready()
    assert forced["tier"] == "tracepoint"
    assert "kprobe:oom_kill_process" not in forced["hooks"]


def test_systemd_unit_over_memory_max(agents: dict[str, AgentProcess]) -> None:
    unit = f"oomtrace-hog-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        ["systemd-run", "--wait", "--quiet", f"--unit={unit}", "-p", "MemoryMax=50M",
         "-p", "MemorySwapMax=0", sys.executable, "-c", HOG],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    cgroup = f"/system.slice/{unit}.service"

    def in_unit(e: Event) -> bool:
        return e["type"] == "oom_kill" and e["victim"]["cgroup"] == cgroup

    event = agents["kprobe"].wait_for(in_unit, timeout=30, what="the unit's oom_kill")
    oom = event["oom"]
    assert oom["tier"] == "kprobe"
    assert oom["constraint"] == "memcg"
    assert oom["memcg"] == cgroup
    assert oom["memcg_source"] == "kprobe"
    assert oom["limit_bytes"] == 50 * MiB
    assert oom["limit_pages"] * 4096 == 50 * MiB
    assert oom["chosen"]["pid"] == event["victim"]["pid"]
    assert oom["chosen_points"] > 0
    assert oom["order"] >= 0
    assert oom["gfp_flags"]
    assert event["trigger"]["pid"] == event["victim"]["pid"]
    assert event["victim"]["exit"]["code"] == 137
    # The unit's argv as the kernel kept it at exec, and how long it lived.
    assert event["victim"]["cmdline"] == [sys.executable, "-c", HOG]
    assert event["victim"]["cmdline_source"] == "exec"
    assert 0 < event["victim"]["age_s"] < 120

    plain = agents["tracepoint"].wait_for(in_unit, timeout=30, what="the tracepoint tier's view")
    assert plain["victim"]["pid"] == event["victim"]["pid"]
    assert plain["victim"]["cgroup"] == cgroup
    assert plain["oom"]["tier"] == "tracepoint"
    assert plain["oom"]["memcg"] == cgroup
    assert "constraint" not in plain["oom"]
    assert "limit_pages" not in plain["oom"]
    assert plain["victim"]["cmdline"] == event["victim"]["cmdline"]


def test_limited_parent_is_the_oom_memcg(agents: dict[str, AgentProcess]) -> None:
    with memcg(64 * MiB) as parent:
        child = parent.child("worker")
        hog = subprocess.Popen(python(HOG), preexec_fn=child.preexec)
        assert hog.wait(timeout=120) == -signal.SIGKILL
        event = agents["kprobe"].wait_for(victim_pid(hog.pid), timeout=30)
        assert event["oom"]["memcg"] == parent.cgroup_path
        assert event["victim"]["cgroup"] == child.cgroup_path
        assert event["oom"]["limit_bytes"] == 64 * MiB
        plain = agents["tracepoint"].wait_for(victim_pid(hog.pid), timeout=30)
        assert plain["victim"]["cgroup"] == child.cgroup_path
        assert plain["oom"]["memcg"] == parent.cgroup_path


def test_oom_group_kills_every_member(agents: dict[str, AgentProcess]) -> None:
    with memcg(96 * MiB) as group:
        (group.path / "memory.oom.group").write_text("1")
        holders = []
        for _ in range(2):
            holder = subprocess.Popen(
                python(HOLD.format(mib=8)), preexec_fn=group.preexec, stdout=subprocess.PIPE
            )
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == b"held"
            holders.append(holder)
        hog = subprocess.Popen(python(HOG), preexec_fn=group.preexec)
        assert hog.wait(timeout=120) == -signal.SIGKILL
        for holder in holders:
            assert holder.wait(timeout=30) == -signal.SIGKILL
        pids = [hog.pid, *(h.pid for h in holders)]
        for name, agent in agents.items():
            events = [
                agent.wait_for(victim_pid(pid), timeout=30, what=f"{name}: {pid}") for pid in pids
            ]
            assert [e["type"] for e in events] == ["oom_kill"] * 3
            assert [e["group_kill"] for e in events] == [False, True, True], name
            assert len({e["oom"]["context_id"] for e in events}) == 1, name
            # Every member's own argv, though every one is gone.
            assert [e["victim"]["cmdline"] for e in events] == [
                python(HOG),
                *[python(HOLD.format(mib=8))] * 2,
            ], name
            for pid in pids:
                assert len(oom_kills_of(agent, pid)) == 1


def test_kprobe_tier_from_btf_when_headers_are_hidden() -> None:
    release = subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True)
    modules = Path("/lib/modules")
    assert (modules / release.stdout.strip() / "build").is_dir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(modules)], check=True)
    try:
        agent = AgentProcess()
        try:
            ready = agent.wait_ready()
            assert ready["kernel_headers"] == "stub"
            assert ready["tier"] == "kprobe"
            with memcg(48 * MiB) as group:
                hog = subprocess.Popen(python(HOG), preexec_fn=group.preexec)
                assert hog.wait(timeout=120) == -signal.SIGKILL
                event = agent.wait_for(victim_pid(hog.pid), timeout=30)
                assert event["oom"]["constraint"] == "memcg"
                assert event["oom"]["memcg"] == group.cgroup_path
                assert event["oom"]["limit_bytes"] == 48 * MiB
                assert event["victim"]["cgroup"] == group.cgroup_path
        finally:
            assert agent.stop() == 0
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(modules)], check=False).returncode == 0:
                break
            time.sleep(0.5)
