"""Capture: what the host shows about a record's processes and memcgs, read the
moment the record arrives, returned as the record's :class:`Evidence`.

A killed process, its parent chain and its memcg's counters are gone or changed
within milliseconds, so /proc and the memcg files are read here, before the
correlator waits for anything. The evidence travels with the record into its
:class:`~oomtrace.correlate.Kill`, so the builder never looks anything up again.

The snapshot cache below only saves reads (a busy sender is read once, not once
a kill); a snapshot it no longer holds is read again, never missing from evidence.
Snapshots are keyed by the kernel's process key (tgid, start time): a pid reused
by another process never matches.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple, assert_never

from oomtrace.host import memcg, meminfo, procfs
from oomtrace.host.cgroupfs import CgroupPaths
from oomtrace.host.kubepath import parse_kube_cgroup
from oomtrace.kernel.records import (
    CgroupRecord,
    DeliverRecord,
    ExitRecord,
    MarkVictimRecord,
    MemcgCounter,
    OomKillRecord,
    Record,
    SignalRecord,
    Task,
)
from oomtrace.nodefacts import NodeFacts, NodeWatch
from oomtrace.runtimes import is_runtime

ProcessKey = tuple[int, int]  # (tgid, start time in /proc ticks)

# Marks of one OOM run (the victim, oom.group members) share one holder scan.
HOLDER_SCAN_WINDOW_NS: Final = 50_000_000

MAX_SNAPSHOTS: Final = 4096


class Seen(NamedTuple):
    """One process of a record as the host showed it when the record arrived."""

    snapshot: procfs.ProcSnapshot | None
    # The record's cgroup ids as paths: its memcg, and (only when the memcg is
    # unknown) its cgroup v2 id.
    memcg: str | None = None
    unified: str | None = None
    # Nearest first: from the snapshot, or, for a process gone before it was read
    # (a script's kill), from its parent, which usually is not.
    parents: tuple[procfs.Parent, ...] = ()

    def cgroup(self, snapshot: procfs.ProcSnapshot | None = None) -> str | None:
        """The memcg the kernel named, else /proc's memory cgroup (of `snapshot`, or
        this one's), else the cgroup v2 path: on a hybrid host the v1 memcg path
        is the one that names the limit."""
        snap = snapshot or self.snapshot
        return self.memcg or (snap.memory_cgroup if snap else None) or self.unified


@dataclass(frozen=True, slots=True)
class MemcgCapture:
    """The memcgs of an OOM kill, read as it happened.

    `oom_memcg` is the memcg whose limit was hit when the kernel told it: named
    by the kprobe, or the nearest of the trigger's memcgs whose page counter
    stood at its limit at mark_victim time. Without either, oom.py infers it
    from `stats`, which holds read_memcg() for each limited candidate.
    """

    trigger_memcg: str | None
    oom_memcg: str | None
    source: str | None  # "kprobe" | "kernel_counters"
    stats: dict[str, dict[str, object]]
    # The kernel's counters were read and none stood at its limit: not a memcg OOM.
    kernel_saw_no_limit: bool = False


@dataclass(frozen=True, slots=True)
class Holder:
    """A process holding memory in the OOM's scope, right after the kill."""

    pid: int
    comm: str
    rss_kb: int
    oom_score_adj: int | None
    cgroup: str | None


class Evidence(NamedTuple):
    """What capture read for one record, by the role each process plays in it.

    `target` is the process a signal, mark or kprobe record names as its victim;
    `victim` is the victim in its own context (deliver and exit records).
    """

    sender: Seen | None = None
    target: Seen | None = None
    victim: Seen | None = None
    trigger: Seen | None = None
    memcg: MemcgCapture | None = None
    holders: tuple[Holder, ...] = ()
    # RAM + swap in pages, what a global OOM weighs oom_score_adj against.
    node_pages: int | None = None
    # The node's memory as the kubelet sees it, with its eviction thresholds: read
    # for an OOM and for a container runtime's signal (a stop, maybe an eviction).
    node_memory: NodeFacts | None = None


NO_EVIDENCE: Final = Evidence()


class Capture:
    def __init__(
        self,
        paths: CgroupPaths,
        *,
        max_snapshots: int = MAX_SNAPSHOTS,
        top_n: int = 5,
        on_new_container: Callable[[], None] | None = None,
        node: NodeWatch | None = None,
    ) -> None:
        self.paths = paths
        self.on_new_container = on_new_container
        self.node = node
        self._max = max_snapshots
        self._snapshots: OrderedDict[ProcessKey, procfs.ProcSnapshot] = OrderedDict()
        self._by_tid: OrderedDict[int, ProcessKey] = OrderedDict()
        self.top_n = top_n
        # One scan per OOM run: (trigger tid, ktime) of the last one.
        self._last_scan: tuple[int, int, tuple[Holder, ...]] | None = None

    def on_record(self, record: Record) -> Evidence:
        """Reads what `record` does not carry. Dispatch is exhaustive: mypy flags a
        record kind added to kernel/records.py and not handled here."""
        if isinstance(record, SignalRecord):
            if record.target is not None:
                target = self._seen(record.target, with_parents=False)
            else:
                target = self._seen_thread(record.target_tid)
            return Evidence(
                sender=self._seen(record.sender, with_parents=True),
                target=target,
                # Only a runtime's signals: a storm of kills from a script reads nothing more.
                node_memory=self._node(record.ktime_ns) if is_runtime(record.sender.comm) else None,
            )
        if isinstance(record, MarkVictimRecord):
            return self._oom(record.ktime_ns, record.trigger, record.victim_tid, record, None)
        if isinstance(record, OomKillRecord):
            return self._oom(record.ktime_ns, record.trigger, record.victim_tid, None, record)
        if isinstance(record, DeliverRecord | ExitRecord):
            # The victim in its own context: its cgroups as the kernel named them.
            return Evidence(victim=self._ids(record.victim, None))
        if isinstance(record, CgroupRecord):
            self.paths.learn(record.hierarchy, record.cgroup_id, record.path)
            if self.on_new_container is not None:
                kube = parse_kube_cgroup(record.path)
                if kube is not None and kube.role == "container":
                    self.on_new_container()
            return NO_EVIDENCE
        assert_never(record)

    def _oom(
        self,
        ktime_ns: int,
        trigger: Task,
        victim_tid: int,
        mark: MarkVictimRecord | None,
        kprobe: OomKillRecord | None,
    ) -> Evidence:
        seen_trigger = self._seen(trigger, with_parents=True)
        counters = mark.trigger_memcgs if mark is not None else ()
        mem = self._memcg(ktime_ns, trigger, seen_trigger, counters, kprobe)
        return Evidence(
            trigger=seen_trigger,
            target=self._seen_thread(victim_tid),
            memcg=mem,
            holders=self._holders(ktime_ns, trigger, mem),
            # Badness weighs oom_score_adj against RAM + swap only when no memcg
            # limit is known: a memcg OOM (every member of a group kill) reads nothing.
            node_pages=meminfo.node_pages() if mem is None or mem.oom_memcg is None else None,
            node_memory=self._node(ktime_ns),
        )

    def _node(self, ktime_ns: int) -> NodeFacts | None:
        return self.node.read(ktime_ns) if self.node is not None else None

    # -- processes -------------------------------------------------------------

    def _seen(self, task: Task, *, with_parents: bool) -> Seen:
        """A task seen in the kernel: its snapshot, checked against pid reuse."""
        expect = procfs.kernel_start_to_ticks(task.start_ns) if task.start_ns else None
        snap = None
        if expect is not None:
            cached = self._snapshots.get((task.tgid, expect))
            if cached is not None and cached.comm == task.comm:
                if with_parents and not cached.parents and cached.ppid:
                    cached = None  # taken for a victim, without its parents
                snap = cached
        if snap is None:
            snap = procfs.snapshot(task.tgid, expect_start_ticks=expect, with_parents=with_parents)
            if snap is not None:
                self._remember(task.tid, snap)
        chain: tuple[procfs.Parent, ...] = ()
        if snap is not None:
            chain = snap.parents
        elif with_parents and task.ppid and expect is not None:
            # A short-lived sender (a script's kill) is gone already; its
            # parent, named by the kernel, usually is not.
            chain = procfs.parents(task.ppid) or (procfs.Parent(task.ppid, task.parent_comm),)
        return self._ids(task, snap, chain if with_parents else ())

    def _seen_thread(self, tid: int) -> Seen:
        """The process that owns thread `tid`, when the record names only the tid.
        A victim's parents are not reported, so they are not read."""
        key = self._by_tid.get(tid)
        snap = self._snapshots.get(key) if key is not None else None
        if snap is None:
            tgid = procfs.tgid_of(tid)
            snap = procfs.snapshot(tgid, with_parents=False) if tgid is not None else None
            if snap is not None:
                self._remember(tid, snap)
        return Seen(snap)

    def _ids(
        self,
        task: Task,
        snap: procfs.ProcSnapshot | None,
        parents: tuple[procfs.Parent, ...] = (),
    ) -> Seen:
        memcg_path = self.paths.memcg_path(task.memcg_id) if task.memcg_id else None
        unified = None
        if memcg_path is None and task.cgroup_id:
            # Looked up only when needed: a miss can cost a walk of the hierarchy.
            unified = self.paths.unified_path(task.cgroup_id)
        return Seen(snap, memcg_path, unified, parents)

    def _remember(self, tid: int, snap: procfs.ProcSnapshot) -> None:
        key = (snap.tgid, snap.start_ticks)
        self._snapshots[key] = snap
        self._snapshots.move_to_end(key)
        self._by_tid[tid] = key
        self._by_tid.move_to_end(tid)
        while len(self._snapshots) > self._max:
            self._snapshots.popitem(last=False)
        while len(self._by_tid) > self._max:
            self._by_tid.popitem(last=False)

    # -- memcg -----------------------------------------------------------------

    def _memcg(
        self,
        ktime_ns: int,
        trigger: Task,
        seen_trigger: Seen,
        counters: tuple[MemcgCounter, ...],
        kprobe: OomKillRecord | None,
    ) -> MemcgCapture | None:
        hierarchy = self.paths.memory
        if hierarchy is None:
            return None
        trigger_memcg = self.paths.memcg_path(trigger.memcg_id) if trigger.memcg_id else None
        if trigger_memcg is None and seen_trigger.snapshot is not None:
            trigger_memcg = seen_trigger.snapshot.memory_cgroup
        by_path = {
            path: c for c in counters if (path := self.paths.memcg_path(c.memcg_id)) is not None
        }
        oom_memcg: str | None = None
        source: str | None = None
        if kprobe is not None and kprobe.oom_memcg_id:
            oom_memcg = self.paths.memcg_path(kprobe.oom_memcg_id)
            source = "kprobe" if oom_memcg else None
        else:
            oom_memcg = next((p for p, c in by_path.items() if _at_limit(c)), None)
            source = "kernel_counters" if oom_memcg else None
        if oom_memcg is not None:
            candidates = [oom_memcg]
        elif by_path:
            candidates = list(by_path)
        elif trigger_memcg is not None:
            candidates = memcg.ancestry(trigger_memcg)
        else:
            candidates = []
        stats: dict[str, dict[str, object]] = {}
        for path in candidates:
            stat = memcg.read_memcg(hierarchy, path)
            named = kprobe is not None and path == oom_memcg
            if stat is None:
                if path not in by_path and not named:
                    continue
                # Removed already (a runtime deletes an exited container's
                # cgroup within milliseconds): the kernel's counters remain.
                stat = {"path": path, "stat": None, "events": None}
            stat["stat_read_after_kill_ms"] = round((time.monotonic_ns() - ktime_ns) / 1e6, 3)
            counter = by_path.get(path)
            if counter is not None:
                _merge_counter(stat, counter)
            elif named and kprobe is not None:
                # oom_kill_process's own reading of the memcg it names: its usage
                # at the kill, even when the files went with the cgroup.
                stat["usage_bytes"] = kprobe.oom_memcg_usage_pages * procfs.PAGE_SIZE
                stat["usage_source"] = "kernel_at_kill"
                stat.setdefault("limit_bytes", None)
            if path == oom_memcg or stat.get("limit_bytes"):
                stats[path] = stat
        return MemcgCapture(
            trigger_memcg=trigger_memcg,
            oom_memcg=oom_memcg,
            source=source,
            stats=stats,
            kernel_saw_no_limit=bool(by_path) and oom_memcg is None and kprobe is None,
        )

    def _holders(
        self, ktime_ns: int, trigger: Task, mem: MemcgCapture | None
    ) -> tuple[Holder, ...]:
        """The top memory holders in the OOM's scope: the OOM memcg's subtree, or
        the whole node when no memcg limit was hit."""
        last = self._last_scan
        if (
            last is not None
            and last[0] == trigger.tid
            and ktime_ns - last[1] < HOLDER_SCAN_WINDOW_NS
        ):
            return last[2]
        scope = mem.oom_memcg if mem is not None else None
        hierarchy = self.paths.memory
        where: dict[int, str] = {}
        if scope is not None and hierarchy is not None:
            where = memcg.subtree_pids(hierarchy, scope)
            pids: list[int] = list(where)
        else:
            pids = procfs.all_pids()
        holders = []
        for h in procfs.top_memory_holders(pids, self.top_n):
            snap = procfs.snapshot(h.pid, with_parents=False)
            holders.append(
                Holder(
                    pid=h.pid,
                    comm=h.comm,
                    rss_kb=h.rss_kb,
                    oom_score_adj=snap.oom_score_adj if snap else None,
                    cgroup=where.get(h.pid) or (snap.memory_cgroup if snap else None),
                )
            )
        found = tuple(holders)
        self._last_scan = (trigger.tid, ktime_ns, found)
        return found


# PAGE_COUNTER_MAX is LONG_MAX / PAGE_SIZE; anything this large is "no limit".
_UNLIMITED_PAGES: Final = 1 << 50


def _at_limit(c: MemcgCounter) -> bool:
    """A failed charge leaves usage within a charge batch of max; allow 2% or 1 MiB."""
    if c.max_pages >= _UNLIMITED_PAGES:
        return False
    return c.usage_pages + max(c.max_pages // 50, 256) >= c.max_pages


def _merge_counter(stat: dict[str, object], counter: MemcgCounter) -> None:
    """The kernel's usage and limit at the kill replace the later file reads."""
    usage = counter.usage_pages * procfs.PAGE_SIZE
    stat["usage_bytes"] = usage
    if counter.max_pages < _UNLIMITED_PAGES:
        stat["limit_bytes"] = counter.max_pages * procfs.PAGE_SIZE
    inner = stat.get("stat")
    inactive = inner.get("inactive_file") if isinstance(inner, dict) else None
    if isinstance(inactive, int):
        stat["working_set_bytes"] = max(0, usage - inactive)
    stat["usage_source"] = "kernel_at_kill"
