"""oomtrace's image and DaemonSet on a real containerd: the image built by
scripts/build-image and imported, the DaemonSet's pod run from deploy/kubernetes/ as the
kubelet runs it (daemonset.py), and a workload pod OOM-killed beside it, whose oom_kill
event must reach the agent's container log with the workload's names.

Figures (start-up to `ready` in the pod, RSS in the pod and outside one, the pod's memory
peak) go to .test-results/daemonset.json. OOMTRACE_IMAGE_ARCHIVE names an image archive
already built, to skip the build.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, repo_root
from tests.support.memcg import memory_root

from .daemonset import (
    BUILT_IMAGE,
    AgentPod,
    SocketDirContainerd,
    cap_mask,
    find,
    manifests,
    memory_peak,
    node_name,
    node_with_image,
    proc_status,
    rss_bytes,
    run_daemonset_pod,
    seconds_to,
    this_node,
)
from .harness import Containerd, memory_cgroup

pytestmark = [pytest.mark.containerd, pytest.mark.timeout(900)]

MIB = 1 << 20
# A child that allocates past the container's limit, under a main process that
# lives on: the container's cgroup stays, so its files are there to be read through
# the pod's mount (an exited container's cgroup may be gone within milliseconds).
HOG = ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=100M; echo survived; sleep 600 & wait"]
READY_TIMEOUT = 180.0
FIGURES = Path(".test-results/daemonset.json")
Event = dict[str, Any]


@pytest.fixture(scope="module")
def image_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image as scripts/build-image writes it: the one scripts/test built (or
    OOMTRACE_IMAGE_ARCHIVE), else built here (about a minute, with the Debian mirror and
    the pip index at hand)."""
    given = os.environ.get("OOMTRACE_IMAGE_ARCHIVE")
    if given:
        return Path(given)
    if BUILT_IMAGE.is_file():
        return BUILT_IMAGE
    out = tmp_path_factory.mktemp("image") / "oomtrace.tar"
    build = subprocess.run(
        [sys.executable, str(repo_root() / "scripts" / "build-image"), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def node(image_archive: Path, request: pytest.FixtureRequest) -> Iterator[SocketDirContainerd]:
    """The containerd of the module's node: SYSTEMD in the module that runs the tests says
    which cgroup driver (this machine's cgroupfs unless it says otherwise)."""
    systemd = getattr(request.module, "SYSTEMD", False)
    with node_with_image(image_archive, systemd=systemd) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Figures of the module's run, written to its FIGURES file at the end."""
    found: dict[str, Any] = {}
    yield found
    path = Path(request.module.FIGURES)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def agent_pod(node: SocketDirContainerd, figures: dict[str, Any]) -> Iterator[AgentPod]:
    """The DaemonSet's pod, running until `ready`; stopped at the end as the kubelet stops
    a pod (StopContainer with the pod's grace period), which the agent must survive with
    exit status 0."""
    started = time.monotonic()
    pod = run_daemonset_pod(node, this_node(node))
    stamp, _ready = pod.wait_log("ready", READY_TIMEOUT)
    figures["startup_wall_s"] = round(time.monotonic() - started, 2)
    figures["startup_to_ready_s"] = round(seconds_to(node, pod, stamp), 2)
    try:
        yield pod
    finally:
        grace = int(pod.spec.get("terminationGracePeriodSeconds", 30))
        node.stop_container(pod.container, timeout=grace)
        info = node.wait_exited(pod.container, timeout=grace + 10)
        assert info.exit_code == 0, pod.tail()
        assert any(e.get("event") == "sinks_closed" for e in pod.logs()), pod.tail()
        node.remove_pod(pod.pod)


@pytest.fixture
def agent_outside_a_pod(node: SocketDirContainerd) -> Iterator[tuple[str, int]]:
    """The same agent as a plain process of this node, once ready: (how it runs, its pid).
    This machine has no systemd; the VM's tests run it as a systemd service."""
    outside = AgentProcess("--cri-endpoint", node.endpoint)
    try:
        outside.wait_ready()
        yield "process", outside.proc.pid
    finally:
        assert outside.stop() == 0, outside.logs[-5:]


def _agent_pid(node: Containerd, pod: AgentPod) -> int:
    pid = node.status(pod.container).pid
    assert pid is not None
    return pid


def test_the_pod_runs_with_the_manifests_privileges(
    node: SocketDirContainerd, agent_pod: AgentPod, figures: dict[str, Any]
) -> None:
    """The runtime applied what the manifest asks: the two capabilities and no other, the
    runtime's seccomp filter, the node's pid and network namespaces, the limit."""
    pid = _agent_pid(node, agent_pod)
    status = proc_status(pid)
    container_spec = agent_pod.spec["containers"][0]
    added = container_spec["securityContext"]["capabilities"]["add"]
    assert int(status["CapEff"], 16) == cap_mask(added), status["CapEff"]
    assert int(status["CapBnd"], 16) == cap_mask(added), status["CapBnd"]
    assert status["Seccomp"] == "2", "no seccomp filter: RuntimeDefault was not applied"
    assert status["NoNewPrivs"] == "0"
    for ns in ("pid", "net", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/self/ns/{ns}"), ns
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    # Not the manifest's to choose: the runtime gives a container that is not privileged a
    # cgroup namespace of its own on cgroup v2, and the agent must work in either.
    own_cgroupns = os.readlink(f"/proc/{pid}/ns/cgroup") != os.readlink("/proc/self/ns/cgroup")
    figures["cgroup_namespace"] = "the pod's own" if own_cgroupns else "the node's"
    # The kubelet's oom_score_adj for a node-critical pod, -997, which the harness's
    # containerd raises to its own (restrict_oom_score_adj). The agent cannot lower it
    # further without CAP_SYS_RESOURCE, and says so.
    assert node.pid is not None
    own = int(Path(f"/proc/{node.pid}/oom_score_adj").read_text())
    assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) == max(-997, own)
    assert any(e.get("event") == "oom_score_adj_unchanged" for e in agent_pod.logs())
    # The node's memory hierarchy through the pod's /sys/fs/cgroup: the agent's own memcg
    # is there under the path the node knows it by, as any victim's must be.
    root, _version = memory_root()
    memcg = memory_cgroup(pid).lstrip("/")
    seen = Path(f"/proc/{pid}/root") / str(root).lstrip("/") / memcg
    mounts = [x for x in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if "cgroup" in x]
    assert seen.is_dir() and seen.stat().st_ino == (root / memcg).stat().st_ino, mounts


def test_ready_with_every_source(agent_pod: AgentPod) -> None:
    """The agent in the pod reaches the kernel (tracefs, BTF: the stub headers), the
    proc connector (host network, NET_ADMIN) and the CRI socket through the mount."""
    [ready] = [e for e in agent_pod.logs() if e.get("event") == "ready"]
    assert "netlink:proc_connector" in ready["hooks"], ready
    assert ready["kernel_headers"] == "stub", ready
    names = {e.get("event") for e in agent_pod.logs()}
    assert "cri_unavailable" not in names, agent_pod.tail()
    assert "ignored unknown environment variables" not in json.dumps(agent_pod.logs())


def test_liveness_probe_endpoint(agent_pod: AgentPod, figures: dict[str, Any]) -> None:
    """The probe as the kubelet makes it: GET on the pod's IP (the node's) at the named port."""
    container_spec = agent_pod.spec["containers"][0]
    probe = container_spec["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container_spec["ports"]}
    port = ports.get(probe["port"], probe["port"])
    url = f"http://{agent_pod.env['POD_IP']}:{port}{probe['path']}"
    with urllib.request.urlopen(
        url, timeout=container_spec["livenessProbe"]["timeoutSeconds"]
    ) as r:
        assert r.status == 200
        body = r.read().decode()
    [rss_line] = [
        x for x in body.splitlines() if x.startswith("oomtrace_agent_resident_memory_bytes")
    ]
    figures["metrics_rss_mb"] = round(float(rss_line.split()[-1]) / 1e6, 1)
    annotations = find(manifests(), "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_workload_oom_in_the_agents_container_log(
    node: SocketDirContainerd, agent_pod: AgentPod, figures: dict[str, Any]
) -> None:
    pod = node.run_pod("web-7d9", "shop", qos_class="Burstable")
    # The child alone is killed, as on a cgroup v2 node with singleProcessOOMKill.
    web = node.create_container(pod, "web", HOG, memory_limit_bytes=32 * MIB, oom_group=False)
    node.start_container(web)

    def killed(event: Event) -> bool:
        k8s = (event.get("victim") or {}).get("k8s") or {}
        return event["type"] == "oom_kill" and k8s.get("container_id") == web.id

    end = time.monotonic() + 30
    while not (found := [e for e in agent_pod.events() if killed(e)]):
        assert time.monotonic() < end, f"no oom_kill of web in the agent's log: {agent_pod.tail()}"
        time.sleep(0.2)
    [event] = found
    # The paths as the agent in the pod sees them (its own cgroup namespace on cgroup v2).
    figures["oom_kill_paths"] = {
        "victim": event["victim"]["cgroup"],
        "memcg": event["oom"]["memcg"],
    }
    k8s = event["victim"]["k8s"]
    assert (k8s["namespace"], k8s["pod"], k8s["container"]) == ("shop", "web-7d9", "web")
    assert k8s["pod_uid"] == pod.uid
    assert event["node"]["hostname"] == socket.gethostname()
    assert event["node"]["name"] == node_name()  # spec.nodeName, from the downward API
    assert event["victim"]["exit"]["code"] == 137
    assert event["victim"]["comm"] == "dd"
    assert event["oom"]["scope"] == "container"
    # The memcg files were read through the pod's /sys/fs/cgroup mount.
    assert event["oom"]["memcg_stat"]["stat"] is not None, event["oom"]["memcg_stat"]
    assert event["enrichment"]["errors"] == []
    assert event["explanation"].startswith("Container web (pod shop/web-7d9)")
    assert node.status(web).state == "running"
    node.remove_pod(pod)


def test_memory_next_to_the_agent_outside_a_pod(
    node: SocketDirContainerd,
    agent_pod: AgentPod,
    figures: dict[str, Any],
    agent_outside_a_pod: tuple[str, int],
) -> None:
    """RSS of the agent in the pod, within the manifest's memory request, and the same
    agent's RSS outside a pod. The pod's peak charge is recorded, not judged: it counts the
    page cache of LLVM and clang, which grows to any limit and is reclaimed at it."""
    pid = _agent_pid(node, agent_pod)
    rss = rss_bytes(pid)
    figures["pod_rss_mb"] = round(rss / 1e6, 1)
    peak = memory_peak(memory_cgroup(pid))
    assert peak is not None
    figures["pod_memory_peak_mb"] = round(peak / 1e6, 1)
    requests = agent_pod.spec["containers"][0]["resources"]["requests"]
    assert rss < int(requests["memory"].removesuffix("Mi")) * MIB
    how, outside = agent_outside_a_pod
    time.sleep(2)
    figures["outside_a_pod"] = how
    figures["outside_a_pod_rss_mb"] = round(rss_bytes(outside) / 1e6, 1)
