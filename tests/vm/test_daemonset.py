"""The DaemonSet's pod on a node as most run them (cgroup v2, the systemd driver,
inside the test VM): the same tests as on the host (tests/containerd/
test_daemonset.py), with the image scripts/test built before the VM started (the
VM has no Debian mirror to build one from). Figures go to .vm-results/daemonset.json.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.containerd.daemonset import BUILT_IMAGE, SocketDirContainerd, node_with_image
from tests.containerd.test_daemonset import (  # noqa: F401  # the host's tests and fixtures
    agent_pod,
    test_liveness_probe_endpoint,
    test_memory_next_to_the_agent_outside_a_pod,
    test_ready_with_every_source,
    test_the_pod_runs_with_the_manifests_privileges,
    test_workload_oom_in_the_agents_container_log,
    write_figures,
)

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

FIGURES = Path(".vm-results/daemonset.json")


@pytest.fixture(scope="module")
def image_archive() -> Path:
    assert BUILT_IMAGE.is_file(), (
        f"no image at {BUILT_IMAGE}: scripts/test builds it before the VM suite "
        "(scripts/build-image .image/oomtrace.tar)"
    )
    return BUILT_IMAGE


@pytest.fixture(scope="module")
def node(image_archive: Path) -> Iterator[SocketDirContainerd]:
    with node_with_image(image_archive, systemd=True) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def figures() -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {}
    yield found
    write_figures(FIGURES, found)
