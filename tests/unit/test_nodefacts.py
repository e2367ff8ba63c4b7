"""node.memory: the node's memory read from a recorded v2 tree, held against a kubelet
config file, rendered into events, and read by capture only where it matters."""

from __future__ import annotations

import io
import os
import types
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from oomtrace.capture import Capture, Evidence
from oomtrace.config import Settings
from oomtrace.host.cgroupfs import CgroupPaths
from oomtrace.kernel.records import MarkVictimRecord, SignalRecord
from oomtrace.nodefacts import NodeFacts, NodeWatch, render
from oomtrace.pipeline import Agent
from oomtrace.sinks.stream import StreamSink
from tests.unit.test_correlate import RECORDED, signal, task

V2 = Path(__file__).resolve().parent.parent / "data" / "nodememory" / "v2"
MiB = 1 << 20
# The recorded tree's memory.available (see test_nodememory.test_v2_tree).
AVAILABLE = 5_153_685_504


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def watch(path: Path, *, explicit: bool = True) -> NodeWatch:
    return NodeWatch(path, explicit=explicit, root=V2)


def test_rendered_with_the_thresholds_and_none_crossed(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "kind: KubeletConfiguration\n"
        "evictionHard: {memory.available: 100Mi}\n"
        "evictionSoft: {memory.available: 10%}\n"
        "evictionSoftGracePeriod: {memory.available: 1m30s}\n",
    )
    memory = render(watch(path).read(1))
    assert memory == {
        "capacity_bytes": 8_344_281_088,
        "working_set_bytes": 3_190_595_584,
        "working_set_formula": "cgroup_v2",
        "available_bytes": AVAILABLE,
        "allocatable_available_bytes": 5_355_831_296,
        "psi": {"some_avg10": 1.53, "full_avg10": 0.97},
        "thresholds": [
            {"signal": "memory.available", "kind": "hard", "quantity": "100Mi",
             "bytes": 100 * MiB, "grace_period_s": None},
            # enforceNodeAllocatable's default "pods" copies the hard threshold.
            {"signal": "allocatableMemory.available", "kind": "hard", "quantity": "100Mi",
             "bytes": 100 * MiB, "grace_period_s": None},
            # 10% of available + working set, as the kubelet's float32 fraction.
            {"signal": "memory.available", "kind": "soft", "quantity": "10%",
             "bytes": 834_428_121, "grace_period_s": 90.0},
        ],
        "below_threshold": None,
    }  # fmt: skip


def test_a_threshold_above_available_is_named(tmp_path: Path) -> None:
    path = config(tmp_path, "evictionHard:\n  memory.available: 6Gi\n")
    memory = render(watch(path).read(1))
    assert memory is not None
    assert memory["below_threshold"] == {
        "signal": "memory.available",
        "kind": "hard",
        "quantity": "6Gi",
        "bytes": 6 << 30,
        "grace_period_s": None,
    }


def test_quantities_keep_the_files_words(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "evictionHard: {memory.available: 500M, allocatableMemory.available: 1.5Gi}\n"
        "evictionSoft: {memory.available: 12.5%}\n"
        "evictionSoftGracePeriod: {memory.available: 2m}\n",
    )
    memory = render(watch(path).read(1)) or {}
    shown = [(t["quantity"], t["bytes"]) for t in memory["thresholds"]]
    assert shown == [
        ("500M", 500_000_000),
        ("1.5Gi", 1536 * MiB),
        # The kubelet copies the hard memory.available threshold to allocatable too.
        ("500M", 500_000_000),
        ("12.5%", 1_043_035_136),
    ]


def test_a_soft_threshold_crossed_carries_its_grace(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "evictionHard: {memory.available: 1Mi}\n"
        "evictionSoft: {memory.available: 70%}\n"
        "evictionSoftGracePeriod: {memory.available: 30s}\n",
    )
    below = (render(watch(path).read(1)) or {})["below_threshold"]
    assert below["kind"] == "soft"
    assert below["quantity"] == "70%"
    assert below["grace_period_s"] == 30.0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "is missing"),
        ("", "is empty"),
        ("evictionHard: [not, a, mapping", "is not valid YAML"),
        ("evictionHard: {memory.available: lots}", "memory.available"),
    ],
)
def test_an_unusable_file_warns_and_gives_no_thresholds(
    tmp_path: Path, text: str | None, reason: str
) -> None:
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    with capture_logs() as logs:
        memory = render(watch(path).read(1))
    assert memory is not None
    assert memory["thresholds"] is None
    assert memory["below_threshold"] is None
    assert memory["available_bytes"] == AVAILABLE  # the node is still read
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "kubelet_config_unusable"
    assert reason in warning["reason"]


def test_no_kubelet_at_the_default_path_is_said_once_without_a_warning(tmp_path: Path) -> None:
    with capture_logs() as logs:
        node = watch(tmp_path / "absent.yaml", explicit=False)
        memory = render(node.read(1))
        node.read(10**12)
    # No threshold is invented for a node that may have no kubelet at all.
    assert memory is not None and memory["thresholds"] is None
    assert [e["event"] for e in logs] == ["kubelet_config_missing"]
    assert logs[0]["log_level"] == "info"


def test_the_file_is_read_at_start_not_at_the_first_kill(tmp_path: Path) -> None:
    path = config(tmp_path, "evictionHard: {memory.available: lots}\n")
    with capture_logs() as logs:
        watch(path)
    assert [e["event"] for e in logs] == ["kubelet_config_unusable"]
    path.write_text("evictionHard: {memory.available: 100Mi}\n")
    with capture_logs() as logs:
        watch(path)
    assert logs[0]["event"] == "kubelet_config"
    assert logs[0]["thresholds"] == [
        "hard memory.available<100Mi",
        "hard allocatableMemory.available<100Mi",
    ]


def test_a_changed_file_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config(tmp_path, "evictionHard: {memory.available: 100Mi}\n")
    node = watch(path)
    assert (render(node.read(1)) or {})["below_threshold"] is None
    path.write_text("evictionHard: {memory.available: 7Gi}\n")
    os.utime(path, ns=(1, 1))
    monkeypatch.setattr("oomtrace.nodefacts.CONFIG_CHECK_S", 0.0)
    node._next_check = 0.0
    assert (render(node.read(10**12)) or {})["below_threshold"]["quantity"] == "7Gi"


def test_one_reading_serves_a_burst(tmp_path: Path) -> None:
    node = watch(config(tmp_path, "evictionHard: {memory.available: 100Mi}\n"))
    first = node.read(1_000)
    assert node.read(2_000) is first
    assert node.read(1_000 + 20_000_000) is not first


def test_capture_reads_the_node_for_a_runtime_signal_only(tmp_path: Path) -> None:
    node = watch(config(tmp_path, "evictionHard: {memory.available: 100Mi}\n"))
    capture = Capture(CgroupPaths(), node=node)
    runc = capture.on_record(signal(1, task(os.getpid(), comm="runc"), os.getpid(), code=0))
    script = capture.on_record(signal(2 * 10**9, task(os.getpid(), comm="sh"), 1, code=0))
    assert runc.node_memory is not None
    assert script.node_memory is None


def _events(agent: Agent, scenario: str, evidence: Evidence) -> list[dict[str, Any]]:
    kills = []
    for record in RECORDED[scenario]:
        # What capture reads for the OOM's marks and a runtime's signals.
        read = scenario != "sigkill" and isinstance(record, MarkVictimRecord | SignalRecord)
        kills += agent.correlator.feed(record, evidence if read else Evidence())
    kills += agent.correlator.drain()
    return [e for e in map(agent.event_of, kills) if e is not None]


def test_events_carry_node_memory(tmp_path: Path) -> None:
    """The recorded OOM and runtime stop get node.memory; a kill -9 from a shell does not."""
    node = watch(config(tmp_path, "evictionHard: {memory.available: 100Mi}\n"))
    evidence = Evidence(node_memory=node.read(1))
    probes: Any = types.SimpleNamespace(
        plan=types.SimpleNamespace(tier="tracepoint"), commands=lambda: None
    )
    agent = Agent(Settings(), probes, [StreamSink(io.BytesIO(), fmt="json")])
    read = _events(agent, "oom_hog", evidence) + _events(agent, "runtime_stop", evidence)
    assert [e["type"] for e in read] == ["oom_kill", "signal", "signal"]
    for event in read:
        assert event["node"]["memory"]["available_bytes"] == AVAILABLE
    [plain] = _events(agent, "sigkill", evidence)
    assert plain["stop"] is None
    assert plain["node"]["memory"] is None


def _agent(kubelet_config: Path) -> Agent:
    probes: Any = types.SimpleNamespace(
        plan=types.SimpleNamespace(tier="tracepoint"), commands=lambda: None
    )
    settings = Settings(kubelet_config=kubelet_config)
    agent = Agent(settings, probes, [StreamSink(io.BytesIO(), fmt="json")])
    # The agent reads the host's "/"; the recorded v2 tree stands in for it.
    assert agent.capture.node is not None
    assert agent.capture.node.config == kubelet_config
    agent.capture.node = watch(kubelet_config)
    return agent


def _captured(agent: Agent, scenario: str) -> list[dict[str, Any]]:
    """The scenario's events with the agent's own capture deciding what to read."""
    kills = []
    for record in RECORDED[scenario]:
        kills += agent.correlator.feed(record, agent.capture.on_record(record))
    kills += agent.correlator.drain()
    return [e for e in map(agent.event_of, kills) if e is not None]


def test_capture_decides_which_events_get_node_memory(tmp_path: Path) -> None:
    """Through capture, correlate and build: the recorded OOM kill and the signals runc
    sent get node.memory, below the threshold; a kill -9 from a shell and a lost event
    get null."""
    agent = _agent(config(tmp_path, "evictionHard: {memory.available: 6Gi}\n"))
    [oom] = _captured(agent, "oom_hog")
    stops = _captured(agent, "runtime_stop")
    [plain] = _captured(agent, "sigkill")
    assert oom["type"] == "oom_kill"
    assert [e["stop"]["signals"][0]["sender"]["comm"] for e in stops] == ["runc", "runc"]
    for event in (oom, *stops):
        memory = event["node"]["memory"]
        # What an explanation is written from: "memory.available was 4915 MiB, below
        # evictionHard memory.available<6Gi".
        assert memory["available_bytes"] == AVAILABLE
        below = memory["below_threshold"]
        assert (below["kind"], below["signal"], below["quantity"], below["bytes"]) == (
            "hard",
            "memory.available",
            "6Gi",
            6 << 30,
        )
    assert plain["sender"]["comm"] == "kill"
    assert plain["node"] == {"hostname": plain["node"]["hostname"], "name": None, "memory": None}
    lost = agent.builder.lost(1, "kernel_ring_buffer", 1, {"signal": 1})
    assert lost["node"]["memory"] is None


def test_a_stop_is_judged_at_its_first_signal(tmp_path: Path) -> None:
    """runc's SIGQUIT began the stop the SIGKILL ended 1 s later: node.memory is the
    reading at the SIGQUIT, even when the node had memory again at the SIGKILL."""
    node = watch(config(tmp_path, "evictionHard: {memory.available: 6Gi}\n"))
    pressed = node.read(1)
    eased = NodeFacts(pressed.memory, pressed.thresholds, None)
    agent = _agent(node.config)
    kills = []
    for record in RECORDED["runtime_stop"]:
        facts = pressed if isinstance(record, SignalRecord) and record.sig != 9 else eased
        kills += agent.correlator.feed(record, Evidence(node_memory=facts))
    kills += agent.correlator.drain()
    events = [e for e in map(agent.event_of, kills) if e is not None]
    killed = [e for e in events if e["signal"]["name"] == "SIGKILL"]
    assert killed and killed[0]["stop"]["signals"][0]["signal"] == "SIGQUIT"
    for event in events:
        assert event["node"]["memory"]["below_threshold"]["quantity"] == "6Gi"


def test_a_kprobe_oom_whose_memcg_is_gone_keeps_the_kernels_usage(tmp_path: Path) -> None:
    """oom_kill_process names the memcg and its usage at the kill; when the cgroup's
    files are gone by the time the record is read (a systemd scope removed with its
    container), the event still has that usage, with `stat` null."""
    from oomtrace.host.cgroupfs import Hierarchy
    from oomtrace.host.procfs import PAGE_SIZE
    from oomtrace.kernel.records import OomKillRecord

    hierarchy = Hierarchy(tmp_path, 0, 2)
    paths: Any = types.SimpleNamespace(memory=hierarchy, memcg_path=lambda _id: "/gone.scope")
    capture = Capture(paths)
    trigger = task(os.getpid())
    record = OomKillRecord(
        ktime_ns=1, cpu=0, trigger=trigger, victim_tid=trigger.tid, victim_tgid=trigger.tgid,
        victim_comm="dd", oom_memcg_id=77, totalpages=8192, chosen_points=100, gfp_mask=0,
        order=0, constraint=1, oom_memcg_usage_pages=8192,
    )  # fmt: skip
    seen = capture._seen(trigger, with_parents=False)
    mem = capture._memcg(1, trigger, seen, (), record)
    assert mem is not None and mem.oom_memcg == "/gone.scope"
    stat = mem.stats["/gone.scope"]
    assert stat["stat"] is None
    assert stat["usage_bytes"] == 8192 * PAGE_SIZE
    assert stat["usage_source"] == "kernel_at_kill"
