"""Cause, scope, trigger and top holders for the pod incidents, with real pods."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, victim_pid
from tests.support.memcg import memory_root

from .harness import OOM_REASONS, Container, Containerd

pytestmark = pytest.mark.containerd

MIB = 1 << 20
HOG = ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M"]
# A shell holding 20 MB: the trailing echo keeps it from exec'ing sleep and
# dropping the memory.
HOLD = ["sh", "-c", "x=$(head -c 20000000 /dev/zero | tr '\\0' a); sleep 3600; echo ${#x}"]
Event = dict[str, Any]
# Past what the shell leaves of the node's 96 MiB (one OOM, the shell's), then a
# pause: the agent reads the holders while the hog is still on top, before its
# growth draws the second OOM, its own.
GROW_PAUSE_GROW = (
    "import time\nx = [bytearray(1 << 20) for _ in range(80)]\ntime.sleep(3)\n"
    "while True:\n    x.append(bytearray(1 << 20))\n"
)


def killed(container: Container) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        k8s = (event.get("victim") or {}).get("k8s") or {}
        return event["type"] == "oom_kill" and k8s.get("container_id") == container.id

    return match


def assert_died(event: Event) -> None:
    exit_info = event["victim"]["exit"]
    assert exit_info["observed"] is True
    assert exit_info["code"] == 137
    assert 0 <= exit_info["kill_to_exit_ms"] < 5000


def test_container_limit(containerd: Containerd, agent: AgentProcess) -> None:
    pod = containerd.run_pod("web-7d9", "shop", qos_class="Burstable")
    web = containerd.create_container(pod, "web", HOG, memory_limit_bytes=32 * MIB)
    containerd.start_container(web)
    assert containerd.wait_exited(web).reason in OOM_REASONS

    event = agent.wait_for(killed(web), what="web's oom_kill")
    assert event["cause"] == "oom_kill"
    assert event["oom"]["scope"] == "container"
    assert event["trigger"]["k8s"]["container"] == "web"
    assert event["oom"]["top_holders"][0]["k8s"]["container"] == "web"
    assert_died(event)
    assert event["explanation"].startswith("Container web (pod shop/web-7d9) was killed by the")
    assert "reached its 32 MiB limit" in event["explanation"]
    assert "the allocation came from the victim itself" in event["explanation"]
    badness = event["oom"]["victim_badness"]
    assert badness["rss_pages"] > 0
    assert badness["total_pages"] * 4096 == 32 * MIB
    containerd.remove_pod(pod)


def _memory_dir(cgroup: str) -> Path:
    root, _version = memory_root()
    return root / cgroup.lstrip("/")


def test_pod_limit_kills_the_other_container(containerd: Containerd, agent: AgentProcess) -> None:
    pod = containerd.run_pod("shop-api", "shop", qos_class="Burstable")
    _limit(_memory_dir(pod.cgroup_parent), 64 * MIB)
    # The kubelet gives each Burstable container its own adj from its memory
    # request: the sidecar's is the higher, so the OOM killer chooses it, even
    # though the app is the one allocating.
    sidecar = containerd.create_container(pod, "sidecar", HOLD, oom_score_adj=1000)
    containerd.start_container(sidecar)
    app = containerd.create_container(pod, "app", ["sh", "-c", "sleep 2; exec " + " ".join(HOG)])
    containerd.start_container(app)

    event = agent.wait_for(killed(sidecar), timeout=30, what="the sidecar's oom_kill")
    assert event["oom"]["scope"] == "pod"
    assert event["oom"]["memcg"] == pod.cgroup_parent
    assert event["victim"]["oom_score_adj"] == 1000
    assert event["trigger"]["k8s"]["container"] == "app"
    assert "container app in pod shop/shop-api" in event["explanation"]
    assert_died(event)
    containerd.remove_pod(pod)


def _limit(directory: Path, limit: int) -> None:
    name = (
        "memory.limit_in_bytes" if (directory / "memory.limit_in_bytes").exists() else "memory.max"
    )
    (directory / name).write_text(str(limit))


def _mkdir_memcg(path: Path) -> None:
    # cgroup v2 only creates a child's memory files if the parent delegates them.
    parent = path.parent
    if (parent / "cgroup.subtree_control").exists():
        (parent / "cgroup.subtree_control").write_text("+memory")
    path.mkdir()


def test_host_hog_under_a_limited_parent(containerd: Containerd, agent: AgentProcess) -> None:
    node = f"/oomtrace-node-{uuid.uuid4().hex[:6]}"
    node_dir = _memory_dir(node)
    _mkdir_memcg(node_dir)
    hog = None
    pod = None
    try:
        _limit(node_dir, 96 * MIB)
        uid = str(uuid.uuid4())
        pod = containerd.run_pod(
            "debug-shell",
            "tools",
            uid=uid,
            qos_class="BestEffort",
            cgroup_parent=f"{node}/kubepods/besteffort/pod{uid}",
        )
        shell = containerd.create_container(pod, "shell", HOLD, oom_score_adj=1000)
        containerd.start_container(shell)
        time.sleep(1)  # let it take its memory before the hog starts
        cron = node_dir / "system.slice"
        _mkdir_memcg(cron)
        cron = cron / "cron.service"
        _mkdir_memcg(cron)
        hog = subprocess.Popen(
            [sys.executable, "-c", GROW_PAUSE_GROW],
            preexec_fn=lambda: (cron / "cgroup.procs").write_text("0"),
        )
        event = agent.wait_for(killed(shell), timeout=30, what="the pod shell's oom_kill")
        assert event["victim"]["oom_score_adj"] == 1000
        assert event["victim"]["k8s"]["qos_class"] == "BestEffort"
        trigger = event["trigger"]
        assert trigger["pid"] == hog.pid
        assert trigger["cgroup"] == f"{node}/system.slice/cron.service"
        assert trigger["k8s"] is None
        assert event["oom"]["memcg"] == node
        assert event["oom"]["scope"] == "cgroup"
        top = event["oom"]["top_holders"]
        assert top[0]["pid"] == hog.pid
        assert top[0]["rss_kb"] > 32 * 1024
        assert "host process python" in event["explanation"]
        assert_died(event)
        assert hog.wait(timeout=60) == -signal.SIGKILL
        agent.wait_for(victim_pid(hog.pid), timeout=30, what="the hog's own oom_kill")
    finally:
        if hog is not None and hog.poll() is None:
            hog.kill()
            hog.wait()
        if pod is not None:
            containerd.remove_pod(pod)
        _remove_tree(node)


def _remove_tree(cgroup: str) -> None:
    """The test's own parent cgroup, in every hierarchy runc made it in."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / cgroup.lstrip("/")
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()
        top.rmdir()


def test_runtime_stop_cause(containerd: Containerd, agent: AgentProcess) -> None:
    pod = containerd.run_pod("evicted", "batch")
    job = containerd.create_container(pod, "job", ["sleep", "3600"])
    containerd.start_container(job)
    containerd.stop_container(job, timeout=0)

    def stopped(e: Event) -> bool:
        k8s = (e.get("victim") or {}).get("k8s") or {}
        return e["type"] == "signal" and k8s.get("container_id") == job.id

    event = agent.wait_for(stopped, what="the stop")
    assert event["cause"] == "runtime_stop"
    # StopContainer with no timeout: SIGKILL at once, and the pod's sandbox lives on.
    assert event["stop"]["kind"] == "container"
    assert event["stop"]["grace_s"] is None
    assert "alone was stopped (exit code 137) by runc with SIGKILL at once" in event["explanation"]
    assert event["victim"]["exit"]["code"] == 137
    containerd.remove_pod(pod)
