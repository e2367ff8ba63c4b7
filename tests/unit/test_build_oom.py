"""oom_kill events built without root, from records a real kernel wrote (tests/data)
and the evidence capture would have attached to them.

The records go through the agent's own steps (correlate, build, enrich, classify);
only the host reads are replaced by the evidence given here. Every test asserts
fields that come from that evidence alone, so it fails if the evidence is dropped
anywhere between capture and the event.
"""

from __future__ import annotations

import io
import types
from collections.abc import Callable
from typing import Any

import pytest

from oomtrace.capture import NO_EVIDENCE, Evidence, Holder, MemcgCapture, Seen
from oomtrace.config import Settings
from oomtrace.host.procfs import Parent, ProcSnapshot
from oomtrace.kernel.records import (
    CgroupRecord,
    ExitRecord,
    MarkVictimRecord,
    OomKillRecord,
    Record,
    SignalRecord,
    Task,
)
from oomtrace.pipeline import Agent
from oomtrace.schema import Event
from oomtrace.sinks.stream import StreamSink
from tests.support.recorded import scenarios

MiB = 1 << 20
PAGE = 4096
FAR_FUTURE_NS = 1 << 62

HOST = scenarios("6.18")
Evidencer = Callable[[Record], Evidence]


def snapshot(task: Task, cmdline: list[str], *, parents: tuple[Parent, ...] = ()) -> ProcSnapshot:
    """A /proc snapshot of a recorded task, as procfs.snapshot() returns it."""
    return ProcSnapshot(
        tgid=task.tgid,
        start_ticks=task.start_ns // 10_000_000,
        comm=task.comm,
        cmdline=cmdline,
        uid=task.uid,
        ppid=task.ppid,
        parents=parents,
        tty=None,
        oom_score_adj=task.oom_score_adj,
        memory_cgroup=None,
        unified_cgroup=None,
        memory_kb={},
    )


def memcg_stat(path: str, limit: int, usage: int, anon: int, file: int) -> dict[str, object]:
    """read_memcg()'s dict with the kernel's counters merged, as capture makes it."""
    return {
        "path": path,
        "limit_bytes": limit,
        "usage_bytes": usage,
        "working_set_bytes": usage,
        "usage_source": "kernel_at_kill",
        "stat": {"anon": anon, "file": file, "inactive_file": 0},
        "events": {"oom": 1, "oom_kill": 1},
        "stat_read_after_kill_ms": 0.4,
    }


def limit_hit(
    trigger: Task,
    cmdline: list[str],
    memcg: str,
    source: str,
    *,
    anon: int,
    holders: tuple[Holder, ...],
    node_pages: int,
) -> Evidence:
    """What capture attaches to the record that tells of a 64 MiB memcg at its limit:
    the trigger alive, the memcg's files, the holders of its subtree."""
    limit = 64 * MiB
    parents = (Parent(trigger.ppid, "python3"), Parent(1, "systemd"))
    return Evidence(
        trigger=Seen(snapshot(trigger, cmdline, parents=parents), memcg, parents=parents),
        memcg=MemcgCapture(
            trigger_memcg=memcg,
            oom_memcg=memcg,
            source=source,
            stats={memcg: memcg_stat(memcg, limit, limit, anon, limit - anon - MiB)},
        ),
        holders=holders,
        node_pages=node_pages,
    )


def replay(
    records: list[Record],
    evidence: Evidencer,
    *,
    tier: str = "tracepoint",
    settings: Settings | None = None,
) -> list[Event]:
    """The events of `records`, built by the agent's own pipeline steps."""
    probes: Any = types.SimpleNamespace(
        plan=types.SimpleNamespace(tier=tier), commands=lambda: None
    )
    agent = Agent(settings or Settings(), probes, [StreamSink(io.BytesIO(), fmt="json")])
    kills = []
    for record in records:
        kills += agent.correlator.feed(record, evidence(record))
    kills += agent.correlator.tick(FAR_FUTURE_NS)
    kills += agent.correlator.drain()
    events = [agent.event_of(kill) for kill in kills]
    return [e for e in events if e is not None]


# -- a memcg OOM on this host's kernel (cgroup v1): holder and allocator -----------------

HOLDER_ALLOCATOR = HOST["holder_allocator"]
MEMCG = next(r.path for r in HOLDER_ALLOCATOR if hasattr(r, "path"))
MARK = next(r for r in HOLDER_ALLOCATOR if isinstance(r, MarkVictimRecord))
ALLOCATOR_CMDLINE = ["python3", "-c", "b = bytearray(40 << 20)"]
# A process of the same memcg that the OOM killer passed over.
BYSTANDER = Holder(pid=4242, comm="idle", rss_kb=2048, oom_score_adj=0, cgroup=MEMCG)


def memcg_oom_evidence(record: Record) -> Evidence:
    if isinstance(record, MarkVictimRecord):
        return limit_hit(
            record.trigger,
            ALLOCATOR_CMDLINE,
            MEMCG,
            "kernel_counters",
            anon=60 * MiB,
            holders=(BYSTANDER,),
            node_pages=6_000_000,
        )
    if isinstance(record, ExitRecord):
        # The victim in its own context: its memcg id named the test's cgroup.
        return Evidence(victim=Seen(None, MEMCG))
    return NO_EVIDENCE


def test_memcg_oom_from_recorded_records() -> None:
    [event] = replay(HOLDER_ALLOCATOR, memcg_oom_evidence)
    assert event["type"] == "oom_kill"
    assert event["cause"] == "oom_kill"
    oom = event["oom"]
    # The memcg and its files: from the evidence only (the records carry ids).
    assert oom["memcg"] == MEMCG
    assert oom["memcg_source"] == "kernel_counters"
    assert oom["memcg_stat"]["limit_bytes"] == 64 * MiB
    assert oom["scope"] == "cgroup"
    # The trigger is the allocator, with what /proc said of it while it lived,
    # but its argv as the kernel kept it at exec: that does not depend on timing.
    trigger = event["trigger"]
    assert trigger["pid"] == MARK.trigger.tgid != event["victim"]["pid"]
    assert MARK.trigger_argv is not None
    assert trigger["cmdline"] == list(MARK.trigger_argv.args) != ALLOCATOR_CMDLINE
    assert trigger["cmdline"][:2] == ["python3", "-c"]
    assert trigger["cmdline_source"] == "exec"
    assert [p["comm"] for p in trigger["parents"]] == ["python3", "systemd"]
    assert trigger["cgroup"] == MEMCG
    # The victim at the kill, as mark_victim saw it, first; then the bystander.
    assert MARK.victim_memory is not None
    victim_kb = MARK.victim_memory.anon_rss_kb + MARK.victim_memory.file_rss_kb
    assert [(h["pid"], h["rss_kb"], h.get("victim", False)) for h in oom["top_holders"]] == [
        (MARK.victim_tid, victim_kb, True),
        (BYSTANDER.pid, BYSTANDER.rss_kb, False),
    ]
    # Badness weighs oom_score_adj 1000 against the memcg's limit in pages.
    badness = oom["victim_badness"]
    assert badness["oom_score_adj"] == 1000
    assert badness["total_pages"] == 64 * MiB // PAGE
    assert badness["adj_pages"] == 64 * MiB // PAGE
    assert badness["points_estimate"] == (
        victim_kb // 4 + MARK.victim_memory.pgtables_kb // 4 + 64 * MiB // PAGE
    )
    assert (
        f"memcg {MEMCG} reached its 64 MiB limit (anon 60 MiB, file 3 MiB)"
        in (event["explanation"])
    )
    assert "oom_score_adj 1000" in event["explanation"]
    assert event["victim"]["cgroup"] == MEMCG
    assert event["enrichment"]["errors"] == []


def test_memcg_oom_without_evidence_says_so() -> None:
    """The same records with nothing captured: every evidence field is null or empty
    (which is what the test above would see if the evidence were dropped)."""
    [event] = replay(HOLDER_ALLOCATOR, lambda _record: NO_EVIDENCE)
    oom = event["oom"]
    assert oom["memcg"] is None
    assert oom["memcg_stat"] is None
    # What the kernel kept needs no capture: the trigger's and victim's argv.
    assert event["trigger"]["cmdline_source"] == "exec"
    assert event["victim"]["cmdline_source"] == "exec"
    assert [h.get("victim") for h in oom["top_holders"]] == [True]
    assert "the limit that was hit is unknown" in event["explanation"]


@pytest.mark.parametrize("scenario", ["oom_hog", "holder_allocator"])
def test_every_recorded_oom_builds_one_event(scenario: str) -> None:
    events = replay(HOST[scenario], memcg_oom_evidence)
    assert [e["type"] for e in events] == ["oom_kill"]
    assert events[0]["victim"]["exit"]["code"] == 137


# -- a memory.oom.group kill, recorded on Debian's 6.1 (cgroup v2, kprobe tier) ----------

VM = scenarios("6.1")
GROUP = VM["group_kill"]
GROUP_MEMCG = next(r.path for r in GROUP if isinstance(r, CgroupRecord))
GROUP_KPROBE = next(r for r in GROUP if isinstance(r, OomKillRecord))
GROWER_CMDLINE = ["python3", "-c", "grow until the group's limit"]
# The members: the chosen holder, two idle ones and the growing allocator.
GROUP_PIDS = {r.target.tgid for r in GROUP if isinstance(r, SignalRecord) and r.target}
GROWER = GROUP_KPROBE.trigger.tgid
IDLE = sorted(GROUP_PIDS - {GROWER, GROUP_KPROBE.victim_tgid})
# Read by capture right after the kill, when the members' memory is going.
GROUP_HOLDERS = (
    Holder(pid=GROWER, comm="python3", rss_kb=30000, oom_score_adj=0, cgroup=GROUP_MEMCG),
    Holder(pid=IDLE[0], comm="python3", rss_kb=4000, oom_score_adj=0, cgroup=GROUP_MEMCG),
    Holder(pid=IDLE[1], comm="python3", rss_kb=3900, oom_score_adj=0, cgroup=GROUP_MEMCG),
)


def group_evidence(record: Record) -> Evidence:
    if isinstance(record, OomKillRecord):
        return limit_hit(
            record.trigger,
            GROWER_CMDLINE,
            GROUP_MEMCG,
            "kprobe",
            anon=62 * MiB,
            holders=GROUP_HOLDERS,
            node_pages=503_533,
        )
    if isinstance(record, MarkVictimRecord):
        # The marks' own readings come later and are not the OOM's: the kprobe's win.
        return Evidence(memcg=None, holders=(), node_pages=1)
    if isinstance(record, ExitRecord):
        return Evidence(victim=Seen(None, GROUP_MEMCG))
    return NO_EVIDENCE


def test_group_kill_from_recorded_records() -> None:
    events = replay(GROUP, group_evidence, tier="kprobe")
    assert [e["type"] for e in events] == ["oom_kill"] * 4
    by_pid = {e["victim"]["pid"]: e for e in events}
    assert set(by_pid) == GROUP_PIDS and len(GROUP_PIDS) == 4 and len(IDLE) == 2
    chosen = by_pid[GROUP_KPROBE.victim_tgid]
    assert chosen["group_kill"] is False
    assert all(e["group_kill"] for pid, e in by_pid.items() if pid != GROUP_KPROBE.victim_tgid)
    assert len({e["oom"]["context_id"] for e in events}) == 1
    for event in events:
        oom = event["oom"]
        # From the kprobe's evidence, for every member.
        assert oom["memcg"] == GROUP_MEMCG
        assert oom["memcg_source"] == "kprobe"
        assert oom["memcg_stat"]["limit_bytes"] == 64 * MiB
        assert oom["scope"] == "cgroup"
        assert event["trigger"]["pid"] == GROWER
        # Every member's event names the trigger's argv as the kernel kept it.
        assert event["trigger"]["cmdline"][:2] == ["python3", "-c"]
        assert event["trigger"]["cmdline_source"] == "exec"
        assert event["victim"]["cmdline"][:2] == ["python3", "-c"]
        assert event["victim"]["cgroup"] == GROUP_MEMCG
        assert event["victim"]["exit"]["code"] == 137
        assert {h["pid"] for h in oom["top_holders"]} >= set(IDLE)
        assert oom["victim_badness"]["total_pages"] == GROUP_KPROBE.totalpages
    # Only the chosen victim carries the kernel's own points.
    assert chosen["oom"]["victim_badness"]["points"] == GROUP_KPROBE.chosen_points
    assert by_pid[IDLE[0]]["oom"]["victim_badness"]["points"] is None
    assert "with the process it chose" in by_pid[IDLE[0]]["explanation"]
    assert f"memcg {GROUP_MEMCG} reached its 64 MiB limit" in chosen["explanation"]


# -- a global OOM, recorded on Debian's 6.1 (kprobe tier; and replayed as tracepoints) ---

GLOBAL = VM["global_oom"]
GLOBAL_MEMCG = next(r.path for r in GLOBAL if isinstance(r, CgroupRecord))
GLOBAL_KPROBE = next(r for r in GLOBAL if isinstance(r, OomKillRecord))
NODE_PAGES = 6_291_456  # 24 GiB of RAM + swap, in 4 KiB pages
DATABASE = Holder(pid=700, comm="postgres", rss_kb=512 * 1024, oom_score_adj=-900, cgroup="/db")
CACHE = Holder(pid=701, comm="memcached", rss_kb=256 * 1024, oom_score_adj=0, cgroup="/cache")


def global_evidence(record: Record) -> Evidence:
    if isinstance(record, OomKillRecord | MarkVictimRecord):
        return Evidence(
            trigger=Seen(snapshot(record.trigger, ["python3", "-c", "hog"]), GLOBAL_MEMCG),
            # No limited memcg: capture read the trigger's levels and found none at a limit.
            memcg=MemcgCapture(
                trigger_memcg=GLOBAL_MEMCG,
                oom_memcg=None,
                source=None,
                stats={},
                kernel_saw_no_limit=isinstance(record, MarkVictimRecord),
            ),
            holders=(DATABASE, CACHE),
            node_pages=NODE_PAGES,
        )
    if isinstance(record, ExitRecord):
        return Evidence(victim=Seen(None, GLOBAL_MEMCG))
    return NO_EVIDENCE


@pytest.mark.parametrize("tier", ["kprobe", "tracepoint"])
def test_global_oom_with_top_holders_and_badness(tier: str) -> None:
    records = [r for r in GLOBAL if tier == "kprobe" or not isinstance(r, OomKillRecord)]
    [event] = replay(records, global_evidence, tier=tier)
    oom = event["oom"]
    assert oom["memcg"] is None
    assert oom["scope"] == "node"
    assert "the node ran out of memory (global OOM)" in event["explanation"]
    mark = next(r for r in GLOBAL if isinstance(r, MarkVictimRecord))
    assert mark.victim_memory is not None
    m = mark.victim_memory
    victim_kb = m.anon_rss_kb + m.file_rss_kb + m.shmem_rss_kb
    # The node's largest holders, from the evidence; the victim at its size when chosen.
    assert [(h["comm"], h["rss_kb"], h.get("victim", False)) for h in oom["top_holders"]] == [
        ("python", victim_kb, True),
        ("postgres", 512 * 1024, False),
        ("memcached", 256 * 1024, False),
    ]
    badness = oom["victim_badness"]
    assert badness["rss_pages"] == victim_kb // 4
    assert badness["pgtables_pages"] == mark.victim_memory.pgtables_kb // 4
    if tier == "kprobe":
        # The kernel's totalpages and its own points.
        assert oom["constraint"] == "global"
        assert badness["total_pages"] == GLOBAL_KPROBE.totalpages
        assert badness["points"] == GLOBAL_KPROBE.chosen_points
    else:
        # Without the kprobe, RAM + swap as /proc/meminfo gave them at the kill.
        assert badness["total_pages"] == NODE_PAGES
        assert badness["points"] is None


def test_configured_cause_names_a_sender() -> None:
    """The configuration's [causes] table decides before the built-in names."""
    sigkill = HOST["sigkill"]
    [plain] = replay(sigkill, lambda _record: NO_EVIDENCE)
    assert plain["cause"] == "process"
    settings = Settings(causes=(("kill", "userspace_oom_killer"),))
    [named] = replay(sigkill, lambda _record: NO_EVIDENCE, settings=settings)
    assert named["sender"]["comm"] == "kill"
    assert named["cause"] == "userspace_oom_killer"
    assert "by the userspace OOM killer kill" in named["explanation"]
