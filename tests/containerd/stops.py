"""Runtime stops written once and run on both kinds of node (tests/containerd/
test_stops.py on this machine, tests/vm/test_stops.py in the VM): a pod's hard
eviction, its deletion, and a container's restart after a failed probe.

No kubelet runs here, so the harness makes the kubelet's CRI calls, in its order
and with its arguments:

- Every stop of a container goes through kubeGenericRuntimeManager.killContainer
  (pkg/kubelet/kuberuntime/kuberuntime_container.go): the grace period is the
  pod's deletion grace or terminationGracePeriodSeconds, at least
  minimumGracePeriodInSeconds (2), unless gracePeriodOverride is given, which
  wins; then runtimeService.StopContainer(containerID, gracePeriod).
- A pod's stop is killPodWithSyncResult (kuberuntime_manager.go):
  killContainersWithSyncResult stops every running container at once, one
  goroutine each, and waits for them all; then StopPodSandbox for each sandbox.
- A hard eviction is the eviction manager's evictPod (pkg/kubelet/eviction/
  eviction_manager.go), which kills the pod with gracePeriodOverride
  immediateEvictionGracePeriodSeconds (1) when a hard threshold was met.
- A deletion kills the pod with the pod's grace (2 s here, the floor above).
- A liveness or startup probe failure: SyncPod's computePodActions puts the one
  container in ContainersToKill, killContainer stops it with the pod's grace, and
  startContainer creates the next attempt (ContainerMetadata.attempt and the
  restartCount annotation one more) in the same sandbox and starts it
  (Containerd.restart_container).

Container processes are a shell as pid 1 of their namespace. The kernel ignores a
signal to such an init unless it has a handler (SIGNAL_UNKILLABLE), even from
the host, so one that should end on SIGTERM traps it and exits 143, as a
program's own handler would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tests.support.agent import AgentProcess

from .harness import Container, Containerd, Pod
from .pods import Node

Event = dict[str, Any]

HARD_EVICTION_GRACE_S = 1
DELETION_GRACE_S = 2
# The agent holds a pod's stop events until its sandbox is stopped, or 5 s after
# the pod's last stopped process when it is not: this is that wait and some room.
SETTLE_S = 9.0


def ends_on_term() -> list[str]:
    return ["sh", "-c", "trap 'exit 143' TERM; echo up; sleep 600 & wait"]


def ignores_term() -> list[str]:
    return ["sh", "-c", "trap '' TERM; echo up; sleep 600 & wait"]


def kubelet_config(path: Path, memory_available: str) -> Path:
    """A KubeletConfiguration with one hard memory threshold, as kubeadm writes it."""
    path.write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\n"
        "kind: KubeletConfiguration\n"
        "evictionHard:\n"
        f"  memory.available: {memory_available}\n"
    )
    return path


# -- the kubelet's calls --------------------------------------------------------------


def kill_pod(containerd: Containerd, pod: Pod, containers: list[Container], grace: int) -> None:
    """killPodWithSyncResult: StopContainer for every container at once, then
    StopPodSandbox once all have returned."""
    errors: list[BaseException] = []

    def stop(container: Container) -> None:
        try:
            containerd.stop_container(container, timeout=grace)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=stop, args=(c,)) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    containerd.stop_pod(pod)


def restart_after_probe(
    containerd: Containerd, container: Container, argv: list[str], grace: int
) -> Container:
    """A failed liveness probe: killContainer with the pod's grace, then the next
    attempt created and started in the same sandbox."""
    containerd.stop_container(container, timeout=grace)
    containerd.wait_exited(container)
    return containerd.restart_container(container, argv)


# -- reading the agents ----------------------------------------------------------------


def stop_events_of(agent: AgentProcess, pod: Pod) -> list[Event]:
    """The agent's runtime-stop events of one pod so far."""
    return [
        e
        for e in agent.events
        if e.get("type") == "signal"
        and e.get("stop")
        and ((e.get("victim") or {}).get("k8s") or {}).get("pod_uid") == pod.uid
    ]


def wait_stop_events(
    agent: AgentProcess, pod: Pod, want: set[str | None], timeout: float = 60
) -> dict[str | None, list[Event]]:
    """The pod's stop events by container name (None: the sandbox) once every
    name in `want` has one, and SETTLE_S more to show what else comes."""
    end = time.monotonic() + timeout
    while True:
        agent.collect(0.5)
        by_name: dict[str | None, list[Event]] = {}
        for event in stop_events_of(agent, pod):
            by_name.setdefault(event["victim"]["k8s"].get("container"), []).append(event)
        if want <= by_name.keys():
            agent.collect(SETTLE_S)
            out: dict[str | None, list[Event]] = {}
            for event in stop_events_of(agent, pod):
                out.setdefault(event["victim"]["k8s"].get("container"), []).append(event)
            return out
        assert time.monotonic() < end, (
            f"stop events for {sorted(map(str, by_name))} of {sorted(map(str, want))}; "
            f"last events: {agent.events[-3:]}"
        )


def final(events: list[Event]) -> Event:
    """The event that ended the process: the SIGKILL's, or the stop signal it exited on.
    With SIGTERM traced (--signals KILL,TERM) an ignored SIGTERM has an event too."""
    ended = [e for e in events if (e["victim"].get("exit") or {}).get("observed")]
    assert len(ended) == 1, events
    return ended[0]


# -- the scenarios ----------------------------------------------------------------------


def deletion(node: Node) -> None:
    """A pod deleted with a 2 s grace and no memory pressure: one container ends on
    SIGTERM (143), the other ignores it and is killed when the grace runs out."""
    containerd = node.containerd
    pod = containerd.run_pod("shop-7f4", "shop", qos_class="BestEffort")
    web = containerd.create_container(pod, "web", ends_on_term())
    cache = containerd.create_container(pod, "cache", ignores_term())
    for container in (web, cache):
        containerd.start_container(container)
        node.wait_log(container, "up")
    kill_pod(containerd, pod, [web, cache], DELETION_GRACE_S)
    verdicts = {c.name: node.verdict(c) for c in (web, cache)}
    for tier, agent in node.agents.items():
        found = wait_stop_events(agent, pod, {"web", "cache", None})
        ended, killed = final(found["web"]), final(found["cache"])
        assert ended["signal"]["name"] == "SIGTERM", tier
        assert ended["victim"]["exit"]["code"] == 143, tier
        assert ended["stop"]["grace_s"] is None, tier
        assert killed["signal"]["name"] == "SIGKILL", tier
        assert killed["victim"]["exit"]["code"] == 137, tier
        assert 1.5 <= killed["stop"]["grace_s"] <= 4.0, (tier, killed["stop"])
        assert [s["signal"] for s in killed["stop"]["signals"]] == ["SIGTERM", "SIGKILL"], tier
        sandbox = final(found[None])
        assert sandbox["victim"]["k8s"]["sandbox"] is True, tier
        for event in (ended, killed, sandbox):
            assert event["stop"]["kind"] == "pod", (tier, event["stop"])
            assert event["cause"] == "runtime_stop", (tier, event["explanation"])
            assert event["sender"]["comm"] == "runc", tier
            assert event["node"]["memory"] is not None, tier
        assert "deleted, preempted or scaled down" in killed["explanation"], tier
    for c, event in ((web, ended), (cache, killed)):
        node.record(
            "deletion, 2 s grace", c, verdicts[c.name], event["cause"], event["explanation"]
        )
    containerd.remove_pod(pod)


def probe_restart(node: Node) -> None:
    """One container of a two-container pod is restarted after a failed probe; its
    sibling and the sandbox live on, and the next attempt is named as such."""
    containerd = node.containerd
    pod = containerd.run_pod("api-6b2", "shop", qos_class="BestEffort")
    app = containerd.create_container(pod, "app", ignores_term())
    sidecar = containerd.create_container(pod, "sidecar", ends_on_term())
    for container in (app, sidecar):
        containerd.start_container(container)
        node.wait_log(container, "up")
    again = restart_after_probe(containerd, app, ignores_term(), DELETION_GRACE_S)
    verdict = node.verdict(app)
    node.wait_log(again, "up")
    for tier, agent in node.agents.items():
        found = wait_stop_events(agent, pod, {"app"})
        assert found.keys() == {"app"}, (tier, found.keys())  # not the sibling, not the pod
        event = final(found["app"])
        assert event["victim"]["k8s"]["attempt"] == 0, tier
        assert event["stop"]["kind"] == "container", (tier, event["stop"])
        assert event["cause"] == "runtime_stop", tier
        assert "alone was stopped" in event["explanation"], (tier, event["explanation"])
        assert "failed liveness or startup probe" in event["explanation"], tier
    assert containerd.status(sidecar).state == "running"
    node.record(
        "probe restart", app, verdict, "runtime_stop (stop.kind container)", event["explanation"]
    )
    # The next event of the container names the new attempt: stopped at once this time.
    containerd.stop_container(again, timeout=0)
    containerd.wait_exited(again)
    for tier, agent in node.agents.items():
        event = agent.wait_for(
            lambda e: (
                bool(e.get("stop"))
                and ((e.get("victim") or {}).get("k8s") or {}).get("container_id") == again.id
            ),
            timeout=30,
            what=f"{tier}: the stop event of attempt 1",
        )
        assert event["victim"]["k8s"]["attempt"] == 1, tier
    containerd.stop_pod(pod)
    containerd.remove_pod(pod)


def hard_eviction(node: Node, expected: dict[str, str]) -> None:
    """A hard eviction (1 s grace for every container, then the sandbox) of a pod
    whose containers ignore SIGTERM. `expected` is each agent's cause: `eviction`
    for an agent whose kubelet config has a threshold the node is below,
    `runtime_stop` for one whose threshold is far from it."""
    containerd = node.containerd
    pod = containerd.run_pod("batch-9d1", "jobs", qos_class="BestEffort")
    containers = [
        containerd.create_container(pod, name, ignores_term()) for name in ("worker", "helper")
    ]
    for container in containers:
        containerd.start_container(container)
        node.wait_log(container, "up")
    kill_pod(containerd, pod, containers, HARD_EVICTION_GRACE_S)
    verdicts = {c.name: node.verdict(c) for c in containers}
    for name, agent in node.agents.items():
        found = wait_stop_events(agent, pod, {"worker", "helper", None})
        for container in ("worker", "helper", None):
            event = final(found[container])
            assert event["stop"]["kind"] == "pod", (name, event["stop"])
            assert event["cause"] == expected[name], (name, event["explanation"])
            below = event["node"]["memory"]["below_threshold"]
            if container is not None:
                assert event["signal"]["name"] == "SIGKILL", name
                assert 0.8 <= event["stop"]["grace_s"] <= 2.5, (name, event["stop"])
            if expected[name] == "eviction":
                assert below is not None and below["signal"] == "memory.available", name
                assert event["stop"]["pressure"]["threshold"] == below, name
                assert "evicted by the kubelet" in event["explanation"], name
            else:
                assert below is None, (name, below)
                assert "not evicted" in event["explanation"], name
        for container in containers:
            event = final(found[container.name])
            node.record(
                f"hard eviction ({name})",
                container,
                verdicts[container.name],
                event["cause"],
                event["explanation"],
            )
    containerd.remove_pod(pod)
