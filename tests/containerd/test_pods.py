"""The pod scenarios (pods.py) on this machine's node: the cgroupfs driver with
the memory controller on cgroup v1, so no container is a group kill. The VM
suite runs the same scenarios with the systemd driver on cgroup v2
(tests/vm/test_pods.py). containerd's verdicts go to
.test-results/kubernetes-verdicts.jsonl, next to oomtrace's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess

from .harness import Containerd
from .pods import SCENARIOS, Node

pytestmark = pytest.mark.containerd

VERDICTS = Path(".test-results/kubernetes-verdicts.jsonl")


@pytest.fixture(scope="module")
def node(containerd: Containerd) -> Iterator[Node]:
    """One agent for the module (this kernel has one tier: tracepoints)."""
    agent = AgentProcess("--signals", "KILL,TERM", "--cri-endpoint", containerd.endpoint)
    try:
        agent.wait_ready()
        yield Node(containerd, {"tracepoint": agent}, VERDICTS)
    finally:
        assert agent.stop() == 0, agent.logs[-5:]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(node: Node, scenario: str) -> None:
    SCENARIOS[scenario](node)
