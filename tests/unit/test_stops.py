"""Runtime stops: the kernel's records of a stop replayed through the correlator and
the builder, the stop step's pod-or-container decision, and the eviction verdict.

The recorded scenario (tests/data/records-6.18.jsonl, `runtime_stop`) is what a real
kernel wrote when a process named runc sent SIGQUIT, an image's stop signal, to a
sleep (which ended on it) and to a shell that ignored it, then SIGKILL to the shell
1 s later.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import types
from typing import Any

import pytest

from oomtrace import classify as classifier
from oomtrace.build import facts, with_verdict
from oomtrace.capture import Evidence, Seen
from oomtrace.classify import Rules
from oomtrace.config import Settings
from oomtrace.correlate import STOP_KEEP_NS, Correlator, Kill
from oomtrace.kernel.records import SignalRecord
from oomtrace.pipeline import Agent
from oomtrace.schema import Cause
from oomtrace.sinks.stream import StreamSink
from oomtrace.stops import SETTLE_NS, StopStep, busy_pods
from tests.unit.test_correlate import RECORDED, exit_, signal, task

Event = dict[str, Any]
MiB = 1 << 20
S = 1_000_000_000
SIGQUIT = 3
SIGTERM = 15
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
OTHER_UID = "7c1e0c55-8e1f-4f38-9a52-0b7e0f1d2c3a"
WEB_ID = "a" * 64
SIDECAR_ID = "b" * 64
SANDBOX_ID = "e" * 64


def _agent() -> Agent:
    probes: Any = types.SimpleNamespace(
        plan=types.SimpleNamespace(tier="tracepoint"), commands=lambda: None
    )
    return Agent(Settings(), probes, [StreamSink(io.BytesIO(), fmt="json")])


def _recorded_events() -> list[Event]:
    """The recorded stop through every step, the stop step included."""
    agent = _agent()
    out: list[Event] = []
    agent._emit = out.append  # type: ignore[method-assign]  # the sinks' side
    records = RECORDED["runtime_stop"]
    for record in records:
        agent._emit_kills(agent.correlator.feed(record))
    agent._emit_ready(agent.stops.drain())
    return out


# -- the kernel's records of a stop ----------------------------------------------------


def test_recorded_stop_signals_are_evidence_not_kills() -> None:
    records = RECORDED["runtime_stop"]
    stops = [r for r in records if isinstance(r, SignalRecord) and r.stop]
    assert [(r.sig, r.sender.comm) for r in stops] == [(SIGQUIT, "runc"), (SIGQUIT, "runc")]
    kills: list[Kill] = []
    corr = Correlator()
    for record in records:
        kills += corr.feed(record)
    assert corr.drain() == []
    by_sig = {k.signal.sig: k for k in kills if k.signal is not None}
    assert sorted(by_sig) == [SIGQUIT, 9]
    ended = by_sig[SIGQUIT]  # the sleep, ended by the stop signal itself
    assert ended.exit is not None and ended.exit.kill_sig == SIGQUIT
    assert [r.sig for r, _ in ended.stop_signals] == [SIGQUIT]
    killed = by_sig[9]  # the shell, which ignored it and was killed after the grace
    assert killed.exit is not None
    assert [r.sig for r, _ in killed.stop_signals] == [SIGQUIT]
    assert killed.stop_signals[0][0].target_tid == killed.victim_tid


def test_recorded_stop_events() -> None:
    ended, killed = sorted(_recorded_events(), key=lambda e: e["signal"]["number"])
    assert ended["signal"]["name"] == "SIGQUIT"
    assert ended["victim"]["exit"]["code"] == 128 + SIGQUIT
    assert ended["stop"]["grace_s"] is None
    assert [s["signal"] for s in ended["stop"]["signals"]] == ["SIGQUIT"]
    assert killed["signal"]["name"] == "SIGKILL"
    assert killed["victim"]["exit"]["code"] == 137
    assert [s["signal"] for s in killed["stop"]["signals"]] == ["SIGQUIT", "SIGKILL"]
    assert {s["sender"]["comm"] for s in killed["stop"]["signals"]} == {"runc"}
    assert killed["stop"]["grace_s"] == pytest.approx(1.0, abs=0.3)
    for event in (ended, killed):
        # Host processes: no pod to go with, so the stop is their own.
        assert event["stop"]["kind"] == "container"
        assert event["cause"] == "runtime_stop"
        assert "stopped" in event["explanation"]
    assert "grace (SIGQUIT, then SIGKILL)" in killed["explanation"]


def test_a_kill_of_a_process_being_stopped_carries_its_stop() -> None:
    runc, shim = task(900, comm="runc"), task(901, comm="runc")
    corr = Correlator()
    corr.feed(replace_stop(signal(1 * S, runc, 50, sig=SIGTERM, code=0)))
    assert len(corr.stopping()) == 1
    corr.feed(replace_stop(signal(1 * S + 5, runc, 50, sig=SIGTERM, code=0)))
    kill_rec = dataclasses.replace(signal(2 * S, shim, 50, code=0), target=task(50))
    [kill] = corr.feed(kill_rec) or corr.tick(2 * S + 10 * S)
    assert [r.ktime_ns for r, _ in kill.stop_signals] == [1 * S, 1 * S + 5]
    assert corr.stopping() == []


def test_a_stop_nothing_follows_is_forgotten_and_counted() -> None:
    runc = task(900, comm="runc")
    corr = Correlator()
    corr.feed(replace_stop(signal(1 * S, runc, 50, sig=SIGTERM, code=0)))
    corr.tick(1 * S + STOP_KEEP_NS - 1)
    assert len(corr.stopping()) == 1
    corr.tick(1 * S + STOP_KEEP_NS + 1)
    assert corr.stopping() == []
    assert corr.stats.stops_forgotten == 1


def test_open_stops_bounded_by_what_the_kernel_follows() -> None:
    runc = task(900, comm="runc")
    corr = Correlator(max_pending=2)
    for i in range(3):
        corr.feed(replace_stop(signal(S + i, runc, 50 + i, sig=SIGTERM, code=0)))
    assert len(corr.stopping()) == 2
    assert corr.stats.stops_forgotten == 1


def replace_stop(rec: SignalRecord) -> SignalRecord:
    """A synthetic stop signal, with the target's task as the raw tracepoint reads it."""
    return dataclasses.replace(rec, stop=True, target=task(rec.target_tid))


# -- the stop step ----------------------------------------------------------------


def kube(container: str | None, cid: str, *, uid: str = UID, sandbox: bool = False) -> Event:
    return {
        "namespace": "shop",
        "pod": "web-7d9",
        "pod_uid": uid,
        "container": None if sandbox else container,
        "container_id": cid,
        "attempt": 0,
        "sandbox": sandbox,
    }


def memory(available_mib: int, below: bool) -> Event:
    threshold = {"signal": "memory.available", "kind": "hard", "quantity": "100Mi",
                 "bytes": 100 * MiB, "grace_period_s": None}  # fmt: skip
    return {
        "available_bytes": available_mib * MiB,
        "below_threshold": threshold if below else None,
    }


def stop_event(
    k8s: Event | None,
    *,
    ktime_s: float = 100.0,
    grace_s: float | None = 1.0,
    sig: str = "SIGKILL",
    node_memory: Event | None = None,
    comm: str = "web",
) -> Event:
    number = {"SIGKILL": 9, "SIGTERM": 15}[sig]
    signals = [{"signal": "SIGTERM", "number": 15, "sender": {"pid": 900, "comm": "runc"},
                "time": "t"}]  # fmt: skip
    if sig == "SIGKILL":
        signals.append({"signal": "SIGKILL", "number": 9, "sender": {"pid": 901, "comm": "runc"},
                        "time": "t"})  # fmt: skip
    return {
        "type": "signal",
        "ktime_ns": int(ktime_s * S),
        "node": {"hostname": "node-1", "memory": node_memory},
        "signal": {"number": number, "name": sig, "code": "SI_USER", "from_kernel": False},
        "sender": {"pid": 901, "comm": "runc", "uid": 0, "cgroup": "/system.slice/containerd",
                   "k8s": None, "tty": None, "parents": [{"pid": 1, "comm": "systemd"}]},
        "victim": {"pid": 4242, "comm": comm, "cgroup": "/kubepods/x", "k8s": k8s,
                   "exit": {"observed": True, "code": 128 + number}, "age_s": 60.0},
        "stop": {"kind": None, "grace_s": grace_s if sig == "SIGKILL" else None,
                 "signals": signals, "pressure": None},
        "enrichment": {"errors": []},
    }  # fmt: skip


def verdict(event: Event) -> Event:
    with_verdict(event, classifier.classify(facts(event, info_kind=None, node_wide=False), Rules()))
    return event


def test_a_pod_stop_ends_with_its_sandbox() -> None:
    step: StopStep[int] = StopStep()
    web = stop_event(kube("web", WEB_ID))
    sidecar = stop_event(kube("sidecar", SIDECAR_ID), ktime_s=100.1)
    sandbox = stop_event(kube(None, SANDBOX_ID, sandbox=True), ktime_s=100.2, grace_s=None)
    assert step.offer(web, 1, 0, set()) == []
    assert step.offer(sidecar, 2, 10, set()) == []
    ready = step.offer(sandbox, 3, 20, set())
    assert [payload for _, payload in ready] == [1, 2, 3]
    assert {e["stop"]["kind"] for e, _ in ready} == {"pod"}
    # A late exit of the same pod joins the pod's stop at once.
    late = stop_event(kube("web", WEB_ID), ktime_s=100.3)
    assert step.offer(late, 4, 30, set()) == [(late, 4)]
    assert late["stop"]["kind"] == "pod"
    assert not step.holding()


def test_a_container_alone_is_known_once_its_pod_settles() -> None:
    step: StopStep[int] = StopStep()
    web = stop_event(kube("web", WEB_ID))
    assert step.offer(web, 1, 0, set()) == []
    assert step.tick(SETTLE_NS - 1, set()) == []
    assert step.tick(SETTLE_NS, set()) == [(web, 1)]
    assert web["stop"]["kind"] == "container"


def test_a_pod_still_stopping_holds_its_stopped_containers() -> None:
    """A deletion: one container ends on SIGTERM at once, its sibling is killed after
    the grace, then the sandbox goes: all three are the pod's stop."""
    step: StopStep[int] = StopStep()
    quick = stop_event(kube("web", WEB_ID), sig="SIGTERM")
    assert step.offer(quick, 1, 0, {UID}) == []
    assert step.tick(10 * SETTLE_NS, {UID}) == []  # the sibling is in its grace
    slow = stop_event(kube("sidecar", SIDECAR_ID), ktime_s=130.0, grace_s=30.0)
    assert step.offer(slow, 2, 10 * SETTLE_NS + 1, set()) == []
    sandbox = stop_event(kube(None, SANDBOX_ID, sandbox=True), ktime_s=130.1, grace_s=None)
    ready = step.offer(sandbox, 3, 10 * SETTLE_NS + 2, set())
    assert [e["stop"]["kind"] for e, _ in ready] == ["pod", "pod", "pod"]


def test_other_pods_and_other_events_do_not_wait() -> None:
    step: StopStep[int] = StopStep()
    held = stop_event(kube("web", WEB_ID))
    assert step.offer(held, 1, 0, set()) == []
    other = stop_event(kube(None, SANDBOX_ID, uid=OTHER_UID, sandbox=True))
    assert step.offer(other, 2, 1, set()) == [(other, 2)]
    plain = {"type": "oom_kill", "ktime_ns": 5, "node": {"memory": None}, "victim": {}}
    assert step.offer(plain, 3, 2, set()) == [(plain, 3)]
    assert step.holding()
    assert step.drain() == [(held, 1)]


def test_held_at_most_max_hold() -> None:
    step: StopStep[int] = StopStep(max_hold_ns=60 * S)
    web = stop_event(kube("web", WEB_ID))
    step.offer(web, 1, 0, {UID})
    assert step.tick(60 * S - 1, {UID}) == []
    assert step.tick(60 * S, {UID}) == [(web, 1)]


def test_pressure_at_the_stop_makes_an_eviction() -> None:
    step: StopStep[int] = StopStep()
    web = stop_event(kube("web", WEB_ID), node_memory=memory(84, below=True))
    sandbox = stop_event(kube(None, SANDBOX_ID, sandbox=True), grace_s=None)
    step.offer(web, 1, 0, set())
    step.offer(sandbox, 2, 1, set())
    assert web["stop"]["pressure"]["seconds_before_stop"] == 0
    verdict(web)
    verdict(sandbox)
    assert web["cause"] == sandbox["cause"] == Cause.EVICTION
    assert web["explanation"] == (
        "Container web (pod shop/web-7d9) was evicted by the kubelet (exit code "
        "137): its whole pod was stopped by runc with 1.0 s grace (SIGTERM, then SIGKILL) "
        "while node memory.available was 84 MiB, below evictionHard memory.available<100Mi."
    )


def test_pressure_seen_shortly_before_is_a_likely_eviction() -> None:
    step: StopStep[int] = StopStep()
    other_pod = kube(None, SANDBOX_ID, uid=OTHER_UID, sandbox=True)
    earlier = stop_event(other_pod, ktime_s=95.0, grace_s=None, node_memory=memory(80, True))
    step.offer(earlier, 0, 0, set())
    web = stop_event(kube("web", WEB_ID), node_memory=memory(300, below=False))
    sandbox = stop_event(kube(None, SANDBOX_ID, sandbox=True), grace_s=None)
    step.offer(web, 1, 1, set())
    step.offer(sandbox, 2, 2, set())
    # The stop's first signal was at 99 s (the SIGKILL at 100 s less 1 s of grace).
    assert web["stop"]["pressure"]["seconds_before_stop"] == 4.0
    verdict(web)
    assert web["cause"] == Cause.EVICTION
    assert "was likely evicted" in web["explanation"]
    assert "4.0 s after node memory.available was 80 MiB" in web["explanation"]


def test_pressure_long_before_is_not_an_eviction() -> None:
    step: StopStep[int] = StopStep()
    other_pod = kube(None, SANDBOX_ID, uid=OTHER_UID, sandbox=True)
    earlier = stop_event(other_pod, ktime_s=80.0, grace_s=None, node_memory=memory(80, True))
    step.offer(earlier, 0, 0, set())
    web = stop_event(kube("web", WEB_ID), node_memory=memory(300, below=False))
    step.offer(web, 1, 1, set())
    step.offer(stop_event(kube(None, SANDBOX_ID, sandbox=True), grace_s=None), 2, 2, set())
    assert web["stop"]["pressure"] is None
    verdict(web)
    assert web["cause"] == Cause.RUNTIME_STOP
    assert "with its whole pod" in web["explanation"]
    assert "deleted, preempted or scaled down" in web["explanation"]


def test_a_container_restart_under_pressure_is_no_eviction() -> None:
    step: StopStep[int] = StopStep()
    web = stop_event(kube("web", WEB_ID), node_memory=memory(84, below=True))
    step.offer(web, 1, 0, set())
    step.tick(SETTLE_NS, set())
    verdict(web)
    assert web["cause"] == Cause.RUNTIME_STOP
    assert "alone was stopped" in web["explanation"]
    assert "failed liveness or startup probe" in web["explanation"]


def test_a_hard_eviction_grace_out_of_line_says_likely() -> None:
    event = stop_event(kube("web", WEB_ID), grace_s=30.0)
    event["stop"] |= {"kind": "pod", "pressure": {"threshold": memory(84, True)["below_threshold"],
                      "available_bytes": 84 * MiB, "seconds_before_stop": 0}}  # fmt: skip
    verdict(event)
    assert event["cause"] == Cause.EVICTION
    assert "was likely evicted" in event["explanation"]


def test_busy_pods_from_the_stop_signals_evidence() -> None:
    path = f"/kubepods/burstable/pod{UID}/{WEB_ID}"
    host = Evidence(target=Seen(None, "/user.slice"))
    assert busy_pods([Evidence(target=Seen(None, path)), host, Evidence()]) == {UID}


def test_stop_events_keep_their_fields_through_a_copy() -> None:
    """The stop step writes into the event it holds, never into another."""
    step: StopStep[int] = StopStep()
    web = stop_event(kube("web", WEB_ID))
    twin = copy.deepcopy(web)
    step.offer(web, 1, 0, set())
    step.tick(SETTLE_NS, set())
    assert twin["stop"]["kind"] is None


def test_the_text_view_shows_the_stop() -> None:
    from oomtrace.text import render

    event = stop_event(kube("web", WEB_ID), grace_s=1.0)
    event["stop"]["kind"] = "pod"
    event["time"] = "2026-12-05T06:00:00.000000000Z"
    assert (
        "  stop     pod: SIGTERM from runc(900), SIGKILL from runc(901); SIGKILL after 1.0 s"
        in (render(event))
    )


def test_metrics_count_stops_by_pod_container_cause_and_kind() -> None:
    from prometheus_client import generate_latest

    from oomtrace.metrics import Metrics

    metrics = Metrics(lambda: {})
    evicted = verdict(stop_event(kube("web", WEB_ID)))
    evicted["stop"] |= {"kind": "container"}
    verdict(evicted)
    sandbox = stop_event(kube(None, SANDBOX_ID, sandbox=True), grace_s=None)
    sandbox["stop"]["kind"] = "pod"
    verdict(sandbox)
    for event in (evicted, evicted, sandbox):
        metrics.emit(event)
    text = generate_latest(metrics.registry).decode()
    assert (
        'oomtrace_container_stops_total{cause="runtime_stop",container="web",kind="container",'
        'namespace="shop",pod="web-7d9"} 2.0'
    ) in text
    assert (
        'oomtrace_container_stops_total{cause="runtime_stop",container="POD",kind="pod",'
        'namespace="shop",pod="web-7d9"} 1.0'
    ) in text


def test_a_traced_stop_signal_is_a_kill_and_the_start_of_its_stop() -> None:
    """With SIGTERM traced (--signals KILL,TERM) a runtime's SIGTERM is recorded as a
    traced signal, a kill of its own; the SIGKILL after it still carries it."""
    runc = task(900, comm="runc")
    corr = Correlator()
    term = dataclasses.replace(signal(1 * S, runc, 50, sig=SIGTERM, code=0), target=task(50))
    corr.feed(term)
    kill_rec = dataclasses.replace(signal(2 * S, runc, 50, code=0), target=task(50))
    corr.feed(kill_rec)
    kills = corr.drain()
    by_sig = {k.signal.sig: k for k in kills if k.signal is not None}
    assert sorted(by_sig) == [9, SIGTERM]
    assert [r.sig for r, _ in by_sig[9].stop_signals] == [SIGTERM]


def test_a_traced_stop_signal_the_process_dies_of_ends_its_stop() -> None:
    runc = task(900, comm="runc")
    corr = Correlator()
    term = dataclasses.replace(signal(1 * S, runc, 50, sig=SIGTERM, code=0), target=task(50))
    corr.feed(term)
    assert len(corr.stopping()) == 1
    [kill] = corr.feed(exit_(2 * S, term))
    assert corr.stopping() == []
    assert [r.sig for r, _ in kill.stop_signals] == [SIGTERM]
