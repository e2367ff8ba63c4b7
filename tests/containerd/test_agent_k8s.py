"""The agent names pods and containers, with a real containerd driven through the CRI."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from oomtrace.text import render
from tests.support.agent import AgentProcess

from .harness import IMAGE, OOM_REASONS, Container, Containerd, Pod

pytestmark = pytest.mark.containerd

MIB = 1 << 20
HOG = ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M"]


def delayed_hog(seconds: float) -> list[str]:
    return ["sh", "-c", f"sleep {seconds}; exec dd if=/dev/zero of=/dev/null bs=100M"]


def in_container(container: Container, kind: str) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        k8s = (event.get("victim") or {}).get("k8s") or {}
        return event["type"] == kind and k8s.get("container_id") == container.id

    return match


def assert_names(k8s: dict[str, Any], pod: Pod, container: Container) -> None:
    assert k8s["namespace"] == pod.namespace
    assert k8s["pod"] == pod.name
    assert k8s["pod_uid"] == pod.uid
    assert k8s["container"] == container.name
    assert k8s["container_id"] == container.id
    assert k8s["image"] == IMAGE
    assert k8s["qos_class"] == pod.qos_class
    assert k8s["runtime"] == "containerd"
    assert k8s["attempt"] == container.attempt
    assert k8s["sandbox"] is False


def test_container_over_its_limit(containerd: Containerd, agent: AgentProcess) -> None:
    pod = containerd.run_pod("web-7d9", "shop", qos_class="Burstable")
    web = containerd.create_container(pod, "web", HOG, memory_limit_bytes=32 * MIB, attempt=2)
    containerd.start_container(web)
    info = containerd.wait_exited(web)
    assert info.exit_code == 137 and info.reason in OOM_REASONS

    event = agent.wait_for(in_container(web, "oom_kill"), what="the container's oom_kill")
    agent.collect(0.5)
    assert len([e for e in agent.events if in_container(web, "oom_kill")(e)]) == 1
    assert_names(event["victim"]["k8s"], pod, web)
    assert event["victim"]["exit"]["code"] == 137
    assert event["enrichment"]["errors"] == []
    # The OOM was the container's own: its memcg is the container's cgroup.
    assert event["oom"]["memcg"] == event["victim"]["cgroup"]
    assert event["oom"]["memcg_stat"]["limit_bytes"] == 32 * MIB
    first = render(event).splitlines()[0]
    assert "pod shop/web-7d9, container web" in first
    containerd.remove_pod(pod)


def test_stop_through_the_cri_names_the_runtime(
    containerd: Containerd, agent: AgentProcess
) -> None:
    pod = containerd.run_pod("batch", "jobs")
    worker = containerd.create_container(pod, "worker", ["sleep", "3600"])
    containerd.start_container(worker)
    # As the kubelet does on eviction: no grace period.
    containerd.stop_container(worker, timeout=0)
    assert containerd.wait_exited(worker).exit_code == 137

    event = agent.wait_for(in_container(worker, "signal"), what="the stop's signal event")
    assert event["signal"]["name"] == "SIGKILL"
    assert_names(event["victim"]["k8s"], pod, worker)
    sender = event["sender"]
    assert sender["comm"].startswith(("runc", "containerd-shim")), sender
    assert sender["k8s"] is None  # the runtime is a host process
    assert event["victim"]["exit"]["code"] == 137

    # Stopping the pod kills its sandbox (pause) process: reported as such.
    containerd.stop_pod(pod)

    def pause_killed(e: dict[str, Any]) -> bool:
        k8s = (e.get("victim") or {}).get("k8s") or {}
        return k8s.get("pod_uid") == pod.uid and k8s.get("sandbox") is True

    pause = agent.wait_for(pause_killed, what="the sandbox's kill")
    assert pause["victim"]["k8s"]["container"] is None
    containerd.remove_pod(pod)


def test_container_removed_right_after_its_oom_kill(
    containerd: Containerd, agent: AgentProcess
) -> None:
    pod = containerd.run_pod("short-lived", "shop", qos_class="BestEffort")
    job = containerd.create_container(pod, "job", delayed_hog(1.5), memory_limit_bytes=32 * MIB)
    containerd.start_container(job)
    # Let the agent see the container start, then freeze it: it resolves the
    # victim only after the container and its pod are gone from the runtime.
    agent.collect(0.7)
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        assert containerd.wait_exited(job).reason in OOM_REASONS
        containerd.remove_container(job)
        containerd.remove_pod(pod)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    event = agent.wait_for(in_container(job, "oom_kill"), what="the removed container's oom_kill")
    assert_names(event["victim"]["k8s"], pod, job)


def test_runtime_down_then_back(containerd: Containerd) -> None:
    pod = containerd.run_pod("api", "shop", qos_class="Burstable")
    early = containerd.create_container(pod, "early", delayed_hog(5), memory_limit_bytes=32 * MIB)
    late = containerd.create_container(pod, "late", delayed_hog(14), memory_limit_bytes=32 * MIB)
    containerd.start_container(early)
    containerd.start_container(late)
    containerd.kill()
    agent = AgentProcess("--cri-endpoint", containerd.endpoint)
    try:
        agent.wait_ready()
        event = agent.wait_for(in_container(early, "oom_kill"), timeout=20, what="early's kill")
        k8s = event["victim"]["k8s"]
        assert k8s["pod_uid"] == pod.uid
        assert k8s["container_id"] == early.id
        assert k8s["qos_class"] == "Burstable"
        assert k8s["container"] is None
        assert any("cri: unavailable" in e for e in event["enrichment"]["errors"])

        containerd.restart()
        event = agent.wait_for(in_container(late, "oom_kill"), timeout=30, what="late's kill")
        assert_names(event["victim"]["k8s"], pod, late)
        assert event["enrichment"]["errors"] == []
    finally:
        assert agent.stop() == 0
    containerd.remove_pod(pod)
