"""Runtime stops on this machine's node (cgroupfs driver, cgroup v1): a deletion, a
probe restart, and a hard eviction judged by two agents whose kubelet configs
disagree about the pressure. The host may not be driven into low memory, so the
node is "under pressure" by its config: one agent's threshold lies above the
host's memory.available, the other's far below it. The VM suite evicts under
real pressure (tests/vm/test_stops.py). containerd's verdicts go to
.test-results/kubernetes-verdicts.jsonl, next to oomtrace's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess

from .harness import Containerd
from .pods import Node
from .stops import (
    CURRENT_HARD_EVICTION_GRACE_S,
    HARD_EVICTION_GRACE_S,
    deletion,
    hard_eviction,
    kubelet_config,
    probe_restart,
)

pytestmark = pytest.mark.containerd

VERDICTS = Path(".test-results/kubernetes-verdicts.jsonl")
PRESSURE = "under pressure"
CALM = "no pressure"


def above_the_node() -> str:
    """A memory.available threshold above what this node has at all."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) // 1024 + 1024}Mi"
    raise AssertionError("no MemTotal in /proc/meminfo")


@pytest.fixture(scope="module")
def agents(
    containerd: Containerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, AgentProcess]]:
    configs = tmp_path_factory.mktemp("kubelet")
    started = {
        name: AgentProcess(
            "--cri-endpoint",
            containerd.endpoint,
            "--kubelet-config",
            str(kubelet_config(configs / f"{i}.yaml", threshold)),
        )
        for i, (name, threshold) in enumerate(((PRESSURE, above_the_node()), (CALM, "1Mi")))
    }
    try:
        for agent in started.values():
            agent.wait_ready()
        yield started
    finally:
        codes = {name: agent.stop() for name, agent in started.items()}
        assert codes == dict.fromkeys(started, 0), codes


def test_deletion(containerd: Containerd, agents: dict[str, AgentProcess]) -> None:
    deletion(Node(containerd, {CALM: agents[CALM]}, VERDICTS))


def test_probe_restart(containerd: Containerd, agents: dict[str, AgentProcess]) -> None:
    probe_restart(Node(containerd, {CALM: agents[CALM]}, VERDICTS))


@pytest.mark.parametrize(
    "grace",
    [HARD_EVICTION_GRACE_S, CURRENT_HARD_EVICTION_GRACE_S],
    ids=["StopContainer 1 s", "StopContainer 2 s (current kubelet)"],
)
def test_hard_eviction_by_the_config(
    containerd: Containerd, agents: dict[str, AgentProcess], grace: int
) -> None:
    """The same stop judged by both agents: only the node's memory against each one's
    thresholds tells an eviction, whichever timeout the kubelet's release sends."""
    events = hard_eviction(
        Node(containerd, agents, VERDICTS), {PRESSURE: "eviction", CALM: "runtime_stop"}, grace
    )
    # Each agent read its own --kubelet-config: the configs differ, not the node.
    quantities = {
        t["quantity"]
        for e in events
        for t in e["node"]["memory"]["thresholds"]
        if t["signal"] == "memory.available"
    }
    assert quantities == {above_the_node(), "1Mi"}, quantities
