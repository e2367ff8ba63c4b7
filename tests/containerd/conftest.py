"""Fixtures that run a real containerd for the tests in this directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess

from .harness import Containerd, unavailable_reason


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    """A started containerd with the busybox image imported; everything it made is removed
    after the module's last test, whatever state the tests left it in."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"containerd tests cannot run: {reason} (sudo scripts/setup --dev installs it)")
    daemon = Containerd()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def agent(containerd: Containerd) -> Iterator[AgentProcess]:
    """The agent, naming pods through this containerd."""
    proc = AgentProcess("--cri-endpoint", containerd.endpoint)
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.logs[-5:]
