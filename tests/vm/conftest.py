"""Fixtures for the suite that runs inside the test VM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import service as installed_service
from tests.support.agent import AgentProcess

# Where the pod tests' containerd listens (tests/vm/test_pods.py). The agents are
# told from the start, as a node's agent is: until it answers, the agent retries.
CRI_DIR = Path("/run/oomtrace-test-cri")
CRI_ENDPOINT = f"unix://{CRI_DIR}/containerd.sock"


@pytest.fixture(scope="session")
def agents() -> Iterator[dict[str, AgentProcess]]:
    """Two agents side by side, one per tier. Compiling with headers under
    software emulation takes tens of seconds, so they start once."""
    started = {
        # SIGTERM too: earlyoom and the kubelet try it before SIGKILL.
        "kprobe": AgentProcess(
            "--tier", "auto", "--signals", "KILL,TERM", "--cri-endpoint", CRI_ENDPOINT
        ),
        "tracepoint": AgentProcess(
            "--tier", "tracepoint", "--signals", "KILL,TERM", "--cri-endpoint", CRI_ENDPOINT
        ),
    }
    try:
        for agent in started.values():
            agent.wait_ready()
        yield started
    finally:
        codes = {name: agent.stop() for name, agent in started.items()}
        assert codes == {"kprobe": 0, "tracepoint": 0}


@pytest.fixture(scope="session")
def service() -> Iterator[None]:
    """oomtrace installed as the node's service (scripts/install) once for the
    service tests (test_restart, then test_systemd, whose last test uninstalls
    it); scripts/uninstall at the end whatever happens."""
    installed_service.install()
    try:
        yield
    finally:
        installed_service.uninstall()
