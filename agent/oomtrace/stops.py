"""The stop step: whether a runtime stop took one container or its whole pod, and
whether the node was under memory pressure when it began.

It runs between enrich and classify, on events whose `stop` the builder filled
(a container runtime's signals to the victim). The kubelet stops a pod (an
eviction, a deletion, a preemption, a scale-down) by stopping each container in
parallel and then its sandbox, whose pause process the runtime SIGKILLs
(StopPodSandbox); after a failed liveness or startup probe it stops one
container alone, and the sandbox lives on. So a stop event waits here with the
other stopped processes of its pod until:
  - the pod's sandbox is stopped: `stop.kind: pod`, for all of them; or
  - no process of the pod is between its stop signal and its end (the
    correlator's open stops), and SETTLE_NS has passed with no sandbox stop:
    `stop.kind: container`; or
  - MAX_HOLD_NS has passed (a stop signal the process survived, a lost record):
    what is known then.
A process of a pod whose sandbox was stopped moments ago (a late exit) is part
of that pod stop.

`stop.pressure` is the node's memory pressure that an eviction would answer:
the node's memory.available below a kubelet eviction threshold at the stop's
first signal (`seconds_before_stop: 0`), or, failing that, the last such
reading within the kubelet's eviction monitoring period before it (the kubelet
acts on an observation up to a period old, and an eviction relieves the
pressure it saw).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from oomtrace.capture import Evidence
from oomtrace.host.kubepath import parse_kube_cgroup
from oomtrace.kubeletconfig import EVICTION_MONITORING_PERIOD_S
from oomtrace.schema import Event

# The kubelet stops a pod's containers at once and calls StopPodSandbox as soon
# as they are stopped; the runtime's signals follow within milliseconds on an
# idle node, but one runc after another can take seconds on a loaded one (seen:
# over 2 s between two containers of one pod, with the node's CPUs saturated).
SETTLE_NS: Final = 5_000_000_000
# Longer than a default grace period (30 s) with room: an event is never held
# for longer, whatever its pod's stop still waits for.
MAX_HOLD_NS: Final = 120_000_000_000
PRESSURE_WINDOW_NS: Final = int(EVICTION_MONITORING_PERIOD_S * 1e9)

T = TypeVar("T")


@dataclass(slots=True)
class _PodStop(Generic[T]):
    """The stop events of one pod, held together."""

    items: list[tuple[Event, T]]
    first_ns: int  # when the first of them arrived (agent's monotonic clock)
    last_ns: int
    sandbox: bool = False


@dataclass(slots=True)
class _Done:
    at_ns: int
    kind: str
    pressure: Event | None


def busy_pods(stopping: Iterable[Evidence]) -> set[str]:
    """The pods (uids) with a process that a runtime has asked to stop and that
    has neither exited nor been killed: their stop is still going on."""
    pods: set[str] = set()
    for evidence in stopping:
        seen = evidence.target
        path = seen.cgroup() if seen is not None else None
        kube = parse_kube_cgroup(path) if path else None
        if kube is not None and kube.pod_uid:
            pods.add(kube.pod_uid)
    return pods


@dataclass(slots=True)
class StopStep(Generic[T]):
    """Holds stop events until their pod's stop is known; every other event
    passes at once. Each event travels with a payload the caller needs back."""

    settle_ns: int = SETTLE_NS
    max_hold_ns: int = MAX_HOLD_NS
    pressure_window_ns: int = PRESSURE_WINDOW_NS
    _pods: dict[str, _PodStop[T]] = field(default_factory=dict)
    _done: dict[str, _Done] = field(default_factory=dict)
    # The latest node.memory seen below a threshold, with its kernel time.
    _pressure: tuple[int, Event] | None = None

    def offer(self, event: Event, payload: T, now_ns: int, busy: set[str]) -> list[tuple[Event, T]]:
        """Takes an enriched event; returns those ready for classify."""
        self._note_pressure(event)
        stop = event.get("stop")
        if not stop:
            return [(event, payload)]
        pod = _pod_uid(event)
        if pod is None:
            # Not a pod's container (a runtime used by hand): no pod to go with it.
            self._finish_one(event, "container", self._pressure_at([event]))
            return [(event, payload)]
        done = self._done.get(pod)
        if done is not None and now_ns - done.at_ns <= self.settle_ns:
            self._finish_one(event, done.kind, done.pressure)
            return [(event, payload)]
        group = self._pods.get(pod)
        if group is None:
            group = self._pods[pod] = _PodStop([], now_ns, now_ns)
        group.items.append((event, payload))
        group.last_ns = now_ns
        if (_victim_k8s(event) or {}).get("sandbox") is True:
            group.sandbox = True
        return self.tick(now_ns, busy)

    def tick(self, now_ns: int, busy: set[str]) -> list[tuple[Event, T]]:
        """Releases the pods whose stop is known, or held too long."""
        out: list[tuple[Event, T]] = []
        for pod, group in list(self._pods.items()):
            settled = pod not in busy and now_ns - group.last_ns >= self.settle_ns
            if group.sandbox or settled or now_ns - group.first_ns >= self.max_hold_ns:
                del self._pods[pod]
                out.extend(self._finish(pod, group, now_ns))
        for pod, done in list(self._done.items()):
            if now_ns - done.at_ns > self.settle_ns:
                del self._done[pod]
        return out

    def drain(self) -> list[tuple[Event, T]]:
        """Everything held, for shutdown: what is known now."""
        out: list[tuple[Event, T]] = []
        for pod, group in list(self._pods.items()):
            out.extend(self._finish(pod, group, 0))
        self._pods.clear()
        return out

    def holding(self) -> bool:
        return bool(self._pods)

    # -- deciding --------------------------------------------------------------

    def _finish(self, pod: str, group: _PodStop[T], now_ns: int) -> list[tuple[Event, T]]:
        kind = "pod" if group.sandbox else "container"
        pressure = self._pressure_at([event for event, _ in group.items])
        for event, _ in group.items:
            self._finish_one(event, kind, pressure)
        if group.sandbox:
            self._done[pod] = _Done(now_ns, kind, pressure)
        group.items.sort(key=lambda item: int(item[0]["ktime_ns"]))
        return group.items

    @staticmethod
    def _finish_one(event: Event, kind: str, pressure: Event | None) -> None:
        event["stop"]["kind"] = kind
        event["stop"]["pressure"] = pressure

    def _pressure_at(self, events: list[Event]) -> Event | None:
        started = min(_stop_started_ns(e) for e in events)
        for event in sorted(events, key=_stop_started_ns):
            memory = _node_memory(event)
            if memory is not None and memory.get("below_threshold"):
                return _pressure(memory, 0)
        if self._pressure is not None:
            seen_ns, memory = self._pressure
            before = started - seen_ns
            if 0 <= before <= self.pressure_window_ns:
                return _pressure(memory, before)
        return None

    def _note_pressure(self, event: Event) -> None:
        memory = _node_memory(event)
        if memory is None or not memory.get("below_threshold"):
            return
        at = _stop_started_ns(event) if event.get("stop") else int(event["ktime_ns"])
        if self._pressure is None or at >= self._pressure[0]:
            self._pressure = (at, memory)


def _pressure(memory: Event, before_ns: int) -> Event:
    return {
        "threshold": memory.get("below_threshold"),
        "available_bytes": memory.get("available_bytes"),
        "seconds_before_stop": round(before_ns / 1e9, 3),
    }


def _victim_k8s(event: Event) -> dict[str, Any] | None:
    k8s = (event.get("victim") or {}).get("k8s")
    return k8s if isinstance(k8s, dict) else None


def _pod_uid(event: Event) -> str | None:
    uid = (_victim_k8s(event) or {}).get("pod_uid")
    return uid if isinstance(uid, str) and uid else None


def _node_memory(event: Event) -> Event | None:
    memory = (event.get("node") or {}).get("memory")
    return memory if isinstance(memory, dict) else None


def _stop_started_ns(event: Event) -> int:
    """When the stop's first signal was sent, on the kernel's clock: the kill's
    time less the grace the builder measured from that signal."""
    grace = event["stop"].get("grace_s") if event.get("stop") else None
    ktime = int(event["ktime_ns"])
    return ktime - round(grace * 1e9) if isinstance(grace, int | float) else ktime
