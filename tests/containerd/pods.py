"""Pod scenarios written once and run on both kinds of node: the host suite's
(cgroupfs driver, cgroup v1 memory; tests/containerd/test_pods.py) and the VM
suite's (systemd driver, cgroup v2, `memory.oom.group=1` on every container as
the kubelet sets it; tests/vm/test_pods.py). The pods are made by the CRI calls
the kubelet makes (harness.py); where the two nodes differ, the scenario says
what the kernel does differently, not what the tool does.

Each scenario checks every agent it is given (the VM runs one per tier) and
records containerd's own verdict on the same container next to oomtrace's in
`verdicts` (a JSON-lines file): docs/kubernetes.md is made from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.agent import AgentProcess

from .harness import Container, Containerd, Pod

MiB = 1 << 20
Event = dict[str, Any]
Agents = dict[str, AgentProcess]


def holding(mib: int) -> list[str]:
    """A shell that holds `mib` MiB in a variable and idles: busybox has no other way
    to keep memory without touching more. It waits on a child rather than ending on
    `sleep`, which the shell would exec in its own place, memory and all."""
    fill = f"x=$(head -c {mib << 20} /dev/zero | tr -c x x)"
    return ["sh", "-c", f"{fill}; echo held; sleep 600 & wait"]


def allocating(mib: int, after_s: float = 1) -> list[str]:
    """Waits, then allocates `mib` MiB at once (dd's buffer) and keeps touching it."""
    return ["sh", "-c", f"sleep {after_s}; exec dd if=/dev/zero of=/dev/null bs={mib}M"]


def with_workers(hog_mib: int) -> list[str]:
    """A main process that forks 3 workers, as a pre-fork server does: two idle and
    one that allocates `hog_mib` MiB once they are all up. The main process waits on
    them, so none is exec'd in its place."""
    return ["sh", "-c", "sleep 600 & sleep 600 & sleep 1; "
            f"echo workers; dd if=/dev/zero of=/dev/null bs={hog_mib}M & wait"]  # fmt: skip


@dataclass
class Node:
    """One node's containerd, the agents watching it, and where verdicts go."""

    containerd: Containerd
    agents: Agents
    verdicts: Path

    @property
    def group_kill(self) -> bool:
        """Whether a container OOM kills the whole container: `memory.oom.group`
        is a cgroup v2 file, which the kubelet sets on v2 only."""
        controllers = Path("/sys/fs/cgroup/cgroup.controllers")
        return controllers.exists() and "memory" in controllers.read_text().split()

    @property
    def kubepods(self) -> str:
        return "/kubepods.slice" if self.containerd.systemd else "/kubepods"

    def record(self, scenario: str, container: Container, verdict: dict[str, Any],
               oomtrace: str, explanation: str | None = None) -> None:  # fmt: skip
        """containerd's verdict on a container next to oomtrace's (its cause, and the
        explanation when given)."""
        self.verdicts.parent.mkdir(parents=True, exist_ok=True)
        line = {
            "scenario": scenario,
            "node": "systemd driver, cgroup v2" if self.containerd.systemd else
                    "cgroupfs driver, cgroup v1",
            "container": container.name,
            "containerd": verdict,
            "oomtrace": oomtrace,
            "explanation": explanation,
        }  # fmt: skip
        with self.verdicts.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def verdict(self, container: Container, *, running: bool = False) -> dict[str, Any]:
        """ContainerStatus as containerd gives it: once exited, unless `running`."""
        if running:
            info = self.containerd.status(container)
        else:
            info = self.containerd.wait_exited(container, timeout=120)
        return {"state": info.state, "reason": info.reason, "exit_code": info.exit_code}

    def wait_log(self, container: Container, word: str, timeout: float = 60) -> None:
        """Waits until the container has printed `word` (its CRI log file)."""
        log = self.containerd.log_path(container)
        end = time.monotonic() + timeout
        while not (log.exists() and word in log.read_text(errors="replace")):
            assert time.monotonic() < end, f"{container.name} did not print {word!r}"
            time.sleep(0.1)

    def assert_named(self, event: Event, pod: Pod, container: Container) -> None:
        k8s = event["victim"]["k8s"]
        assert (k8s["namespace"], k8s["pod"], k8s["pod_uid"]) == (pod.namespace, pod.name, pod.uid)
        assert (k8s["container"], k8s["container_id"]) == (container.name, container.id)
        assert k8s["attempt"] == container.attempt
        assert k8s["qos_class"] == pod.qos_class
        cgroup = event["victim"]["cgroup"]
        if self.containerd.systemd:
            # The systemd driver's names: the pod's slice and the container's scope.
            assert cgroup == f"{pod.cgroup_parent}/cri-containerd-{container.id}.scope", cgroup
        else:
            assert cgroup == f"{pod.cgroup_parent}/{container.id}", cgroup


def killed_in(container: Container) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        k8s = (event.get("victim") or {}).get("k8s") or {}
        return event["type"] == "oom_kill" and k8s.get("container_id") == container.id

    return match


def signalled_in(container: Container) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        k8s = (event.get("victim") or {}).get("k8s") or {}
        return event["type"] == "signal" and k8s.get("container_id") == container.id

    return match


def events_of(
    agent: AgentProcess, container: Container, n: int, timeout: float = 60
) -> list[Event]:
    """The container's oom_kill events once there are `n`, and a second more to show
    that no more come."""
    match = killed_in(container)
    end = time.monotonic() + timeout
    found: list[Event] = []
    while time.monotonic() < end:
        agent.collect(0.5)
        found = [e for e in agent.events if match(e)]
        if len(found) >= n:
            agent.collect(1.0)
            return [e for e in agent.events if match(e)]
    raise AssertionError(f"{len(found)} of {n} events for {container.name}: {found[-3:]}")


# -- the scenarios ----------------------------------------------------------------


def multi_process_container(node: Node) -> None:
    """Scenario 1: a container whose main process forks 3 workers; one worker
    allocates past the container's limit. On cgroup v2 the kernel kills the whole
    container (memory.oom.group): the chosen victim and every other member, in one
    run of the OOM killer. On v1 it kills the chosen victim alone, and the main
    process lives on."""
    containerd = node.containerd
    pod = containerd.run_pod("api-5c8", "shop", qos_class="Burstable")
    app = containerd.create_container(pod, "api", with_workers(80), 48 * MiB)
    containerd.start_container(app)
    for name, agent in node.agents.items():
        events = events_of(agent, app, 4 if node.group_kill else 1)
        [chosen] = [e for e in events if not e["group_kill"]]
        assert chosen["victim"]["comm"] == "dd", name
        assert chosen["trigger"]["pid"] == chosen["victim"]["pid"], name
        members = [e for e in events if e["group_kill"]]
        assert sorted(e["victim"]["comm"] for e in members) == (
            ["sh", "sleep", "sleep"] if node.group_kill else []
        ), name
        assert {e["oom"]["context_id"] for e in events} == {chosen["oom"]["context_id"]}, name
        for event in events:
            node.assert_named(event, pod, app)
            assert event["oom"]["scope"] == "container", name
            assert event["trigger"]["k8s"]["container"] == "api", name
        # The dying main process SIGKILLs what is left of its pid namespace; those
        # were already killed: no kill of their own.
        assert [e for e in agent.events if signalled_in(app)(e)] == [], name
        if not node.group_kill:
            assert chosen["victim"]["k8s"]["main_process_lives"] is True, name
    if node.group_kill:
        verdict = node.verdict(app)
        said = "4 oom_kill events, one context: dd chosen, sh and 2 sleep as group kills"
    else:
        verdict = node.verdict(app, running=True)
        said = "1 oom_kill (dd); the main process lives on"
    node.record("multi-process container OOM", app, verdict, said)
    containerd.remove_pod(pod)


def pod_level_limit(node: Node) -> None:
    """Scenario 2: the pod's cgroup is limited; a sidecar's allocation OOM-kills the
    app (adj 1000 makes it the choice), in another container of the pod."""
    containerd = node.containerd
    pod = containerd.run_pod("cart-7d9", "shop", qos_class="Burstable", memory_limit_bytes=96 * MiB)
    app = containerd.create_container(pod, "app", holding(40), oom_score_adj=1000, oom_group=False)
    containerd.start_container(app)
    node.wait_log(app, "held")
    sidecar = containerd.create_container(pod, "sidecar", allocating(80), oom_group=False)
    containerd.start_container(sidecar)
    for name, agent in node.agents.items():
        [event, *_] = events_of(agent, app, 1)
        assert event["oom"]["scope"] == "pod", name
        assert event["oom"]["memcg"] == pod.cgroup_parent, name
        assert event["trigger"]["k8s"]["container"] == "sidecar", name
        assert "the allocation came from container sidecar" in event["explanation"], name
        node.assert_named(event, pod, app)
    node.record("pod-level limit hit by another container", app, node.verdict(app),
                "oom_kill of app, scope pod, trigger named in container sidecar")  # fmt: skip
    containerd.remove_pod(pod)


def kubepods_level_limit(node: Node) -> None:
    """Scenario 3: kubepods at its limit (the node's allocatable); the trigger is in
    one pod, the victim a BestEffort pod's process (adj 1000) in another."""
    containerd = node.containerd
    idle = containerd.run_pod("cache-0", "web")
    holder = containerd.create_container(idle, "cache", holding(40), oom_score_adj=1000)
    containerd.start_container(holder)
    node.wait_log(holder, "held")
    busy = containerd.run_pod("etl-9", "jobs", qos_class="Burstable")
    containerd.set_memory_limit(node.kubepods, 160 * MiB)
    grower = containerd.create_container(busy, "etl", allocating(150))
    containerd.start_container(grower)
    for name, agent in node.agents.items():
        [event, *_] = events_of(agent, holder, 1)
        node.assert_named(event, idle, holder)
        assert event["oom"]["scope"] == "kubepods", name
        assert event["oom"]["memcg"] == node.kubepods, name
        assert event["victim"]["oom_score_adj"] == 1000, name
        assert event["trigger"]["k8s"]["pod"] == "etl-9", name
        pods = {(h.get("k8s") or {}).get("pod") for h in event["oom"]["top_holders"]}
        assert {"cache-0", "etl-9"} <= pods, (name, event["oom"]["top_holders"])
    node.record(
        "kubepods-level limit: a BestEffort pod killed for another",
        holder,
        node.verdict(holder),
        "oom_kill of cache, scope kubepods, trigger in pod etl-9, both pods in top_holders",
    )
    containerd.stop_container(grower)
    containerd.remove_pod(busy)
    containerd.remove_pod(idle)


def oom_at_start_then_removed(node: Node) -> None:
    """Scenario 4: a container OOM-killed right after its start and removed at once,
    as the kubelet's restart and garbage collection do: its names survive it."""
    containerd = node.containerd
    pod = containerd.run_pod("batch-1f2", "jobs")
    job = containerd.create_container(
        pod, "report", ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M"], 32 * MiB
    )
    containerd.start_container(job)
    verdict = node.verdict(job)
    containerd.remove_container(job)
    for name, agent in node.agents.items():
        [event] = events_of(agent, job, 1)
        node.assert_named(event, pod, job)
        assert event["oom"]["scope"] == "container", name
        assert event["victim"]["age_s"] < 30, name
        assert event["enrichment"]["errors"] == [], name
    node.record("OOM right after start, container removed at once", job, verdict,
                "oom_kill with pod and container names, age under 30 s")  # fmt: skip
    containerd.remove_pod(pod)


def child_killed_main_lives(node: Node) -> None:
    """Scenario 5: a child process OOM-killed while the container's main process
    lives on (no group kill: cgroup v1, or the kubelet's singleProcessOOMKill on v2).
    containerd is asked while it runs and once it is stopped."""
    containerd = node.containerd
    pod = containerd.run_pod("web-4b1", "shop", qos_class="Burstable")
    web = containerd.create_container(
        pod, "web", ["sh", "-c", "sleep 600 & sleep 1; dd if=/dev/zero of=/dev/null bs=80M; wait"],
        48 * MiB, oom_group=False,
    )  # fmt: skip
    containerd.start_container(web)
    for name, agent in node.agents.items():
        [event] = events_of(agent, web, 1)
        node.assert_named(event, pod, web)
        k8s = event["victim"]["k8s"]
        assert event["victim"]["comm"] == "dd", name
        assert isinstance(k8s["container_pid"], int), (name, event["enrichment"])
        assert (k8s["main_process"], k8s["main_process_lives"]) == (False, True), name
        assert "lives on" in event["explanation"], name
    running = node.verdict(web, running=True)
    containerd.stop_container(web, timeout=1)
    stopped = node.verdict(web)
    node.record("a child OOM-killed, the main process lives", web,
                {"while running": running, "once stopped": stopped},
                "oom_kill of the child dd; main_process_lives true")  # fmt: skip
    containerd.remove_pod(pod)


SCENARIOS: dict[str, Callable[[Node], None]] = {
    "multi_process_container": multi_process_container,
    "pod_level_limit": pod_level_limit,
    "kubepods_level_limit": kubepods_level_limit,
    "oom_at_start_then_removed": oom_at_start_then_removed,
    "child_killed_main_lives": child_killed_main_lives,
}
