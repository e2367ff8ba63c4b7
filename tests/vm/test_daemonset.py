"""The DaemonSet's pod on a node as most run them (cgroup v2, the systemd driver,
inside the test VM): the same tests as on the host (tests/containerd/
test_daemonset.py), with the image scripts/test built before the VM started (the
VM has no Debian mirror to build one from), and the agent outside the pod run as a
systemd service. Figures go to .vm-results/daemonset.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containerd.daemonset import BUILT_IMAGE, SocketDirContainerd
from tests.containerd.test_daemonset import (  # noqa: F401  # the host's tests and fixtures
    agent_pod,
    figures,
    node,
    test_liveness_probe_endpoint,
    test_memory_next_to_the_agent_outside_a_pod,
    test_ready_with_every_source,
    test_the_pod_runs_with_the_manifests_privileges,
    test_workload_oom_in_the_agents_container_log,
)

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

FIGURES = Path(".vm-results/daemonset.json")
# The node's containerd with the systemd cgroup driver, as the kubelet's on this node.
SYSTEMD = True


@pytest.fixture(scope="module")
def image_archive() -> Path:
    assert BUILT_IMAGE.is_file(), (
        f"no image at {BUILT_IMAGE}: scripts/test builds it before the VM suite "
        "(scripts/build-image .image/oomtrace.tar)"
    )
    return BUILT_IMAGE


@pytest.fixture
def agent_outside_a_pod(
    node: SocketDirContainerd,  # noqa: F811  # the fixture imported above
) -> Iterator[tuple[str, int]]:
    """The same agent as a transient systemd service, Type=notify as the unit is: systemd-run
    returns once the agent has sent READY=1."""
    unit = f"oomtrace-rss-{uuid.uuid4().hex[:8]}.service"
    started = subprocess.run(
        ["systemd-run", "--unit", unit, "--property=Type=notify",
         "--property=NotifyAccess=main", "--property=TimeoutStartSec=10min",
         f"--setenv=PYTHONPATH={os.environ['PYTHONPATH']}", "--",
         sys.executable, "-m", "oomtrace", "--follow", "--format", "json",
         "--log-format", "json", "--cri-endpoint", node.endpoint],
        capture_output=True, text=True, check=False, timeout=660,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        shown = subprocess.run(
            ["systemctl", "show", unit, "--property=MainPID", "--value"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        yield "systemd", int(shown.stdout)
    finally:
        subprocess.run(["systemctl", "stop", unit], check=False, timeout=60)
        subprocess.run(["systemctl", "reset-failed", unit], check=False, capture_output=True)
