"""Kubernetes pods as most nodes run them: cgroup v2, the systemd cgroup driver,
containerd with runc, and `memory.oom.group=1` on every container (run inside the
test VM). The pods are made by the CRI calls the kubelet makes
(tests/containerd/harness.py), and every scenario is checked on both tiers.

Next to what oomtrace says, each scenario records what containerd's
ContainerStatus says of the same container (state, reason, exit code) in
.vm-results/kubernetes-verdicts.jsonl: docs/kubernetes.md is made from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.containerd.harness import Container, Containerd, Pod
from tests.support.agent import AgentProcess
from tests.vm.conftest import CRI_DIR

pytestmark = pytest.mark.vm

MiB = 1 << 20
Event = dict[str, Any]
VERDICTS = Path(".vm-results/kubernetes-verdicts.jsonl")


def holding(mib: int) -> list[str]:
    """A shell that holds `mib` MiB in a variable and idles: busybox has no other way
    to keep memory without touching more. It waits on a child rather than ending on
    `sleep`, which the shell would exec in its own place, memory and all."""
    fill = f"x=$(head -c {mib << 20} /dev/zero | tr -c x x)"
    return ["sh", "-c", f"{fill}; echo held; sleep 600 & wait"]


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    daemon = Containerd(CRI_DIR, systemd=True)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()


def record(scenario: str, container: Container, oomtrace: str) -> None:
    """containerd's verdict on a container next to oomtrace's."""
    VERDICTS.parent.mkdir(exist_ok=True)
    line = {
        "scenario": scenario,
        "container": container.name,
        "containerd": _verdict(container),
        "oomtrace": oomtrace,
    }
    with VERDICTS.open("a") as out:
        out.write(json.dumps(line) + "\n")


_VERDICTS: dict[str, dict[str, Any]] = {}


def _verdict(container: Container) -> dict[str, Any]:
    return _VERDICTS.get(container.id) or {"state": "removed"}


def remember_verdict(containerd: Containerd, container: Container) -> dict[str, Any]:
    info = containerd.wait_exited(container, timeout=120)
    verdict = {"state": info.state, "reason": info.reason, "exit_code": info.exit_code}
    _VERDICTS[container.id] = verdict
    return verdict


def of_container(container: Container) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        k8s = (event.get("victim") or {}).get("k8s") or {}
        return event["type"] == "oom_kill" and k8s.get("container_id") == container.id

    return match


def events_of(
    agent: AgentProcess, container: Container, n: int, timeout: float = 60
) -> list[Event]:
    match = of_container(container)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [e for e in agent.collect(0.5) if match(e)]
        if len(found) >= n:
            agent.collect(1.0)  # and no more than n
            return [e for e in agent.events if match(e)]
    raise AssertionError(f"{len(found)} of {n} events for {container.name}: {found[-3:]}")


def assert_named(event: Event, pod: Pod, container: Container) -> None:
    k8s = event["victim"]["k8s"]
    assert (k8s["namespace"], k8s["pod"], k8s["pod_uid"]) == (pod.namespace, pod.name, pod.uid)
    assert (k8s["container"], k8s["container_id"]) == (container.name, container.id)
    assert k8s["attempt"] == container.attempt
    assert k8s["qos_class"] == pod.qos_class
    # The systemd driver's names: the pod's slice and the container's scope.
    cgroup = event["victim"]["cgroup"]
    assert cgroup.startswith("/kubepods.slice/"), cgroup
    assert cgroup.endswith(f"/cri-containerd-{container.id}.scope"), cgroup


def test_pod_level_limit_names_the_pod(
    agents: dict[str, AgentProcess], containerd: Containerd
) -> None:
    """Scenario 2: the pod's slice is limited; a sidecar's allocation OOM-kills the
    app (adj 1000 makes it the choice), in another container of the pod."""
    pod = containerd.run_pod("cart-7d9", "shop", qos_class="Burstable", memory_limit_bytes=96 * MiB)
    app = containerd.create_container(pod, "app", holding(40), oom_score_adj=1000, oom_group=False)
    containerd.start_container(app)
    wait_log(containerd, app, "held")
    sidecar = containerd.create_container(
        pod, "sidecar", ["sh", "-c", "sleep 1; exec dd if=/dev/zero of=/dev/null bs=80M"],
        oom_group=False,
    )  # fmt: skip
    containerd.start_container(sidecar)
    for name, agent in agents.items():
        [event, *_] = events_of(agent, app, 1)
        assert event["oom"]["scope"] == "pod", name
        assert event["oom"]["memcg"] == pod.cgroup_parent, name
        assert event["trigger"]["k8s"]["container"] == "sidecar", name
        assert "the allocation came from container sidecar" in event["explanation"], name
        assert_named(event, pod, app)
    remember_verdict(containerd, app)  # its main process was the victim: it exited
    record("pod-level limit hit by another container", app,
           "oom_kill of app, scope pod, trigger named in container sidecar")  # fmt: skip
    containerd.remove_pod(pod)


def test_oom_at_start_then_removed_at_once(
    agents: dict[str, AgentProcess], containerd: Containerd
) -> None:
    """Scenario 4: a container OOM-killed right after its start and removed at once,
    as the kubelet's restart and garbage collection do: its names survive it."""
    pod = containerd.run_pod("batch-1f2", "jobs")
    job = containerd.create_container(
        pod, "report", ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M"], 32 * MiB
    )
    containerd.start_container(job)
    remember_verdict(containerd, job)
    containerd.remove_container(job)
    for name, agent in agents.items():
        [event] = events_of(agent, job, 1)
        assert_named(event, pod, job)
        assert event["oom"]["scope"] == "container", name
        assert event["victim"]["age_s"] < 30, name
        assert event["enrichment"]["errors"] == [], name
    record("OOM right after start, container removed at once", job,
           "oom_kill with pod and container names, age under 30 s")  # fmt: skip
    containerd.remove_pod(pod)


def test_kubepods_limit_takes_a_besteffort_pod(
    agents: dict[str, AgentProcess], containerd: Containerd
) -> None:
    """Scenario 3: kubepods.slice at its limit (the node's allocatable); the trigger
    is in one pod, the victim a BestEffort pod's process (adj 1000) in another."""
    idle = containerd.run_pod("cache-0", "web")
    holder = containerd.create_container(idle, "cache", holding(40), oom_score_adj=1000)
    containerd.start_container(holder)
    wait_log(containerd, holder, "held")
    busy = containerd.run_pod("etl-9", "jobs", qos_class="Burstable")
    containerd.set_memory_limit("/kubepods.slice", 160 * MiB)
    grower = containerd.create_container(
        busy, "etl", ["sh", "-c", "sleep 1; exec dd if=/dev/zero of=/dev/null bs=150M"]
    )
    containerd.start_container(grower)
    for name, agent in agents.items():
        [event, *_] = events_of(agent, holder, 1)
        assert_named(event, idle, holder)
        assert event["oom"]["scope"] == "kubepods", name
        assert event["oom"]["memcg"] == "/kubepods.slice", name
        assert event["victim"]["oom_score_adj"] == 1000, name
        assert event["trigger"]["k8s"]["pod"] == "etl-9", name
        pods = {(h.get("k8s") or {}).get("pod") for h in event["oom"]["top_holders"]}
        assert {"cache-0", "etl-9"} <= pods, (name, event["oom"]["top_holders"])
    remember_verdict(containerd, holder)
    record(
        "kubepods-level limit: a BestEffort pod killed for another",
        holder,
        "oom_kill of cache, scope kubepods, trigger in pod etl-9, both pods in top_holders",
    )
    containerd.stop_container(grower)
    containerd.remove_pod(busy)
    containerd.remove_pod(idle)


def wait_log(containerd: Containerd, container: Container, word: str, timeout: float = 60) -> None:
    """Waits until the container has printed `word` (its CRI log file)."""
    log = containerd.log_path(container)
    end = time.monotonic() + timeout
    while not (log.exists() and word in log.read_text(errors="replace")):
        assert time.monotonic() < end, f"{container.name} did not print {word!r}"
        time.sleep(0.1)
