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
  immediateEvictionGracePeriodSeconds (1) when a hard threshold was met; the pod
  worker (pod_workers.go, calculateEffectiveGracePeriod) keeps it, as it floors a
  grace at 1 only. What reaches StopContainer depends on the kubelet's release:
  killContainer long applied the override after the 2 s floor, so StopContainer
  got 1 s; the current source applies the override first, then runs the preStop
  hook and the termination ordering on it, and only then floors at 2 s, so a hard
  eviction's StopContainer now carries 2 s, the same as a 2 s deletion. Both are
  run (HARD_EVICTION_GRACE_S, CURRENT_HARD_EVICTION_GRACE_S): only the node's
  memory, not the grace, tells such an eviction from a deletion.
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
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.agent import AgentProcess

from .harness import Container, Containerd, Pod
from .pods import Node

Event = dict[str, Any]

HARD_EVICTION_GRACE_S = 1
# What the current kubelet sends for a hard eviction: the override of 1, raised to
# minimumGracePeriodInSeconds (module docstring).
CURRENT_HARD_EVICTION_GRACE_S = 2
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


def assert_stop_event(event: Event, tier: str) -> None:
    """The fields every runtime stop event carries, as the event contract gives them."""
    assert event["type"] == "signal", tier
    assert event["sender"]["comm"] == "runc", (tier, event["sender"])
    k8s = event["victim"]["k8s"]
    assert {"namespace", "pod", "container", "attempt", "sandbox"} <= k8s.keys(), (tier, k8s)
    assert isinstance(event.get("stop"), dict), (tier, event.get("stop"))
    signals = event["stop"]["signals"]
    assert signals, (tier, event["stop"])
    for sent in signals:
        assert sent["signal"] in ("SIGTERM", "SIGKILL"), (tier, sent)
        assert sent["number"] == {"SIGTERM": 15, "SIGKILL": 9}[sent["signal"]], (tier, sent)
        assert sent["sender"]["comm"] == "runc", (tier, sent)
        assert isinstance(sent["sender"]["pid"], int), (tier, sent)
        # RFC 3339: the agent's own time form, read back with the standard library.
        datetime.fromisoformat(sent["time"].replace("Z", "+00:00"))
    kills = [s for s in signals if s["signal"] == "SIGKILL"]
    assert len(kills) <= 1 and (not kills or signals[-1] is kills[0]), (tier, signals)
    assert (event["signal"]["name"] == "SIGKILL") == bool(kills), (tier, signals)
    memory = event["node"]["memory"]
    assert isinstance(memory, dict), (tier, memory)
    fields = {
        "available_bytes",
        "capacity_bytes",
        "working_set_bytes",
        "allocatable_available_bytes",
        "psi",
        "thresholds",
        "below_threshold",
    }
    assert fields <= memory.keys(), (tier, memory)


def others_signalled(agent: AgentProcess, pod: Pod, container_id: str) -> list[Event]:
    """Signal events of the pod's processes outside one container: its other
    containers' and its sandbox's, stop or not."""
    return [
        e
        for e in agent.events
        if e.get("type") == "signal"
        and ((e.get("victim") or {}).get("k8s") or {}).get("pod_uid") == pod.uid
        and e["victim"]["k8s"].get("container_id") != container_id
    ]


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
    # The runtime's side first: the stop signal ended one, the grace's SIGKILL the other.
    assert verdicts["web"]["exit_code"] == 143, verdicts
    assert verdicts["cache"]["exit_code"] == 137, verdicts
    assert not containerd.pod_status(pod).ready
    for tier, agent in node.agents.items():
        found = wait_stop_events(agent, pod, {"web", "cache", None})
        ended, killed = final(found["web"]), final(found["cache"])
        node.assert_named(ended, pod, web)
        node.assert_named(killed, pod, cache)
        assert ended["signal"]["name"] == "SIGTERM", tier
        assert ended["victim"]["exit"]["code"] == 143, tier
        assert ended["stop"]["grace_s"] is None, tier
        assert [s["signal"] for s in ended["stop"]["signals"]] == ["SIGTERM"], tier
        assert killed["signal"]["name"] == "SIGKILL", tier
        assert killed["victim"]["exit"]["code"] == 137, tier
        assert 1.5 <= killed["stop"]["grace_s"] <= 4.0, (tier, killed["stop"])
        assert [s["signal"] for s in killed["stop"]["signals"]] == ["SIGTERM", "SIGKILL"], tier
        sandbox = final(found[None])
        assert sandbox["victim"]["k8s"]["sandbox"] is True, tier
        assert sandbox["signal"]["name"] == "SIGKILL", tier
        for event in (ended, killed, sandbox):
            assert_stop_event(event, tier)
            assert event["stop"]["kind"] == "pod", (tier, event["stop"])
            assert event["cause"] == "runtime_stop", (tier, event["explanation"])
            assert event["node"]["memory"]["below_threshold"] is None, tier
        assert ended["victim"]["k8s"]["sandbox"] is False, tier
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
    assert verdict["exit_code"] == 137, verdict  # it ignored SIGTERM: the grace ran out
    node.wait_log(again, "up")
    assert (again.attempt, containerd.status(again).state) == (1, "running")
    for tier, agent in node.agents.items():
        found = wait_stop_events(agent, pod, {"app"})
        # The settle time has passed in wait_stop_events: nothing for the sibling or
        # the sandbox, stop or other signal.
        assert found.keys() == {"app"}, (tier, found.keys())
        assert others_signalled(agent, pod, app.id) == [], tier
        event = final(found["app"])
        assert_stop_event(event, tier)
        node.assert_named(event, pod, app)
        assert event["signal"]["name"] == "SIGKILL", tier
        assert event["victim"]["k8s"]["attempt"] == 0, tier
        assert event["stop"]["kind"] == "container", (tier, event["stop"])
        assert 1.5 <= event["stop"]["grace_s"] <= 4.0, (tier, event["stop"])
        assert event["cause"] == "runtime_stop", tier
        assert "alone was stopped" in event["explanation"], (tier, event["explanation"])
        assert "failed liveness or startup probe" in event["explanation"], tier
    assert containerd.status(sidecar).state == "running"
    assert containerd.pod_status(pod).ready
    node.record(
        "probe restart", app, verdict, "runtime_stop (stop.kind container)", event["explanation"]
    )
    # The next event of the container names the new attempt: a stop with no timeout
    # this time (the runtime's SIGKILL alone).
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
        assert_stop_event(event, tier)
        node.assert_named(event, pod, again)
        assert event["victim"]["k8s"]["attempt"] == 1, tier
        assert event["stop"]["kind"] == "container", (tier, event["stop"])
    containerd.stop_pod(pod)
    containerd.remove_pod(pod)


def hard_eviction(
    node: Node, expected: dict[str, str], grace: int = HARD_EVICTION_GRACE_S
) -> list[Event]:
    """A hard eviction (`grace` for every container at once, then the sandbox) of a
    pod whose containers ignore SIGTERM. `expected` is each agent's cause:
    `eviction` for an agent whose kubelet config has a threshold the node is below,
    `runtime_stop` for one whose threshold is far from it. Returns the events."""
    containerd = node.containerd
    pod = containerd.run_pod("batch-9d1", "jobs", qos_class="BestEffort")
    containers = [
        containerd.create_container(pod, name, ignores_term()) for name in ("worker", "helper")
    ]
    for container in containers:
        containerd.start_container(container)
        node.wait_log(container, "up")
    kill_pod(containerd, pod, containers, grace)
    verdicts = {c.name: node.verdict(c) for c in containers}
    assert {v["exit_code"] for v in verdicts.values()} == {137}, verdicts
    assert not containerd.pod_status(pod).ready
    seen: list[Event] = []
    for name, agent in node.agents.items():
        found = wait_stop_events(agent, pod, {"worker", "helper", None})
        for key in ("worker", "helper", None):
            event = final(found[key])
            seen.append(event)
            assert_stop_event(event, name)
            assert event["signal"]["name"] == "SIGKILL", name
            assert event["victim"]["k8s"]["sandbox"] is (key is None), name
            assert event["stop"]["kind"] == "pod", (name, event["stop"])
            assert event["cause"] == expected[name], (name, event["explanation"])
            below = event["node"]["memory"]["below_threshold"]
            if key is not None:
                assert 0.8 <= event["stop"]["grace_s"] <= grace + 1.5, (name, event["stop"])
            if expected[name] == "eviction":
                assert below is not None and below["signal"] == "memory.available", name
                assert below["kind"] == "hard", (name, below)
                assert event["stop"]["pressure"]["threshold"] == below, name
                assert "evicted by the kubelet" in event["explanation"], name
            else:
                assert below is None, (name, below)
                assert "not evicted" in event["explanation"], name
        for container in containers:
            event = final(found[container.name])
            node.assert_named(event, pod, container)
            node.record(
                f"hard eviction, {grace} s grace ({name})",
                container,
                verdicts[container.name],
                event["cause"],
                event["explanation"],
            )
    containerd.remove_pod(pod)
    return seen
