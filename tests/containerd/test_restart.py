"""A container OOM-killed, restarted as the kubelet restarts it, and killed again: each
event names the run it killed by its restart count and start time."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.agent import AgentProcess

from .harness import OOM_REASONS, Container, Containerd

pytestmark = pytest.mark.containerd

MIB = 1 << 20
HOG = ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M"]
Event = dict[str, Any]
_RFC3339_NS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


def delayed_hog(seconds: float) -> list[str]:
    return ["sh", "-c", f"sleep {seconds}; exec {' '.join(HOG)}"]


def killed(container: Container) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        k8s = (event.get("victim") or {}).get("k8s") or {}
        return event["type"] == "oom_kill" and k8s.get("container_id") == container.id

    return match


def ns_since_epoch(text: str) -> int:
    """An event's RFC 3339 time (UTC, nanoseconds) read back, to compare with the CRI's."""
    assert _RFC3339_NS.fullmatch(text), text
    seconds = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(seconds.timestamp()) * 1_000_000_000 + int(text[20:29])


def assert_run(event: Event, container: Container, started_at: int | None) -> None:
    k8s = event["victim"]["k8s"]
    assert (k8s["container"], k8s["container_id"]) == (container.name, container.id)
    assert (k8s["attempt"], k8s["restart_count"]) == (container.attempt, container.attempt)
    assert started_at is not None
    assert ns_since_epoch(k8s["container_started"]) == started_at
    # The same clock and style as the event's own time (the runtime notes the start only
    # once the process runs, so a kill at once may come before it).
    assert abs(ns_since_epoch(event["time"]) - started_at) < 60 * 1_000_000_000
    assert event["enrichment"]["errors"] == []


def test_restart_count_and_start_of_each_run(containerd: Containerd, agent: AgentProcess) -> None:
    pod = containerd.run_pod("crashy-0", "shop", qos_class="Burstable")
    # Killed at once: the event itself asks the runtime when this run started.
    first = containerd.create_container(pod, "app", HOG, memory_limit_bytes=32 * MIB)
    containerd.start_container(first)
    first_info = containerd.wait_exited(first)
    assert first_info.reason in OOM_REASONS
    event = agent.wait_for(killed(first), what="the first run's oom_kill")
    assert_run(event, first, first_info.started_at)
    assert event["victim"]["k8s"]["restart_count"] == 0

    # Killed a second later: the agent has read the start before the kill.
    second = containerd.restart_container(first, delayed_hog(1), memory_limit_bytes=32 * MIB)
    assert second.attempt == 1
    second_info = containerd.wait_exited(second)
    assert second_info.reason in OOM_REASONS
    event = agent.wait_for(killed(second), what="the second run's oom_kill")
    assert_run(event, second, second_info.started_at)
    assert event["victim"]["k8s"]["restart_count"] == 1
    assert second_info.started_at is not None and first_info.started_at is not None
    assert second_info.started_at > first_info.started_at
    containerd.remove_pod(pod)


def test_a_removed_run_keeps_its_restart_count_and_start(
    containerd: Containerd, agent: AgentProcess
) -> None:
    pod = containerd.run_pod("batch-0", "jobs", qos_class="BestEffort")
    job = containerd.create_container(
        pod, "job", delayed_hog(2), memory_limit_bytes=32 * MIB, attempt=3
    )
    containerd.start_container(job)
    # Let the agent see the run start, then freeze it: it resolves the victim only after
    # the container and its pod are gone from the runtime.
    agent.collect(1.2)
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        info = containerd.wait_exited(job)
        assert info.reason in OOM_REASONS
        containerd.remove_container(job)
        containerd.remove_pod(pod)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    event = agent.wait_for(killed(job), what="the removed run's oom_kill")
    assert_run(event, job, info.started_at)
    assert event["victim"]["k8s"]["restart_count"] == 3
