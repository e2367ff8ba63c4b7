"""Fixtures for the suite that runs inside the test VM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess


@pytest.fixture(scope="session")
def agents() -> Iterator[dict[str, AgentProcess]]:
    """Two agents side by side, one per tier. Compiling with headers under
    software emulation takes tens of seconds, so they start once."""
    started = {
        # SIGTERM too: earlyoom and the kubelet try it before SIGKILL.
        "kprobe": AgentProcess("--tier", "auto", "--signals", "KILL,TERM"),
        "tracepoint": AgentProcess("--tier", "tracepoint", "--signals", "KILL,TERM"),
    }
    try:
        for agent in started.values():
            agent.wait_ready()
        yield started
    finally:
        codes = {name: agent.stop() for name, agent in started.items()}
        assert codes == {"kprobe": 0, "tracepoint": 0}
