"""Reading what the kernel records do not carry, the moment a record arrives.

A killed process, its parent chain and its memcg's counters are gone or changed
within milliseconds, so /proc and the memcg files are read here, before the
correlator waits for anything. Snapshots are cached under the kernel's process
key (tgid, start time): a pid that was reused by another process never matches.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from oomtrace.host import memcg, procfs
from oomtrace.host.cgroupfs import CgroupPaths
from oomtrace.host.kubepath import parse_kube_cgroup
from oomtrace.kernel.records import (
    CgroupRecord,
    MarkVictimRecord,
    MemcgCounter,
    OomKillRecord,
    Record,
    SignalRecord,
    Task,
)

ProcessKey = tuple[int, int]  # (tgid, start time in /proc ticks)

# Marks of one OOM run (the victim, oom.group members) share one holder scan.
HOLDER_SCAN_WINDOW_NS: Final = 50_000_000

MAX_SNAPSHOTS: Final = 4096


@dataclass(frozen=True, slots=True)
class MemcgCapture:
    """The memcgs of an OOM kill, read as it happened.

    `oom_memcg` is the memcg whose limit was hit when the kernel told it: named
    by the kprobe, or the nearest of the trigger's memcgs whose page counter
    stood at its limit at mark_victim time. Without either, events.py infers it
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


class Capture:
    def __init__(
        self,
        paths: CgroupPaths,
        *,
        max_snapshots: int = MAX_SNAPSHOTS,
        top_n: int = 5,
        on_new_container: Callable[[], None] | None = None,
    ) -> None:
        self.paths = paths
        self.on_new_container = on_new_container
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._max = max_snapshots
        self._snapshots: OrderedDict[ProcessKey, procfs.ProcSnapshot] = OrderedDict()
        self._by_tid: OrderedDict[int, ProcessKey] = OrderedDict()
        self.orphan_chains: OrderedDict[ProcessKey, tuple[procfs.Parent, ...]] = OrderedDict()
        # Keyed by the mark_victim / oom_kill record's ktime.
        self.memcg_by_ktime: OrderedDict[int, MemcgCapture] = OrderedDict()
        self.holders_by_ktime: OrderedDict[int, list[Holder]] = OrderedDict()
        self.top_n = top_n
        # One scan per OOM run: (trigger tid, ktime) of the last one.
        self._last_scan: tuple[int, int, list[Holder]] | None = None

    def on_record(self, record: Record) -> None:
        if isinstance(record, SignalRecord):
            self.task(record.sender)
            if record.target is not None:
                self.task(record.target, with_parents=False)
            else:
                self.thread(record.target_tid)
        elif isinstance(record, MarkVictimRecord):
            self.task(record.trigger)
            if record.victim_tid not in self._by_tid:
                self.thread(record.victim_tid)
            mem = self._memcg(record.ktime_ns, record.trigger, record.trigger_memcgs, None)
            self._holders(record.ktime_ns, record.trigger, mem)
        elif isinstance(record, OomKillRecord):
            self.task(record.trigger)
            if record.victim_tid not in self._by_tid:
                self.thread(record.victim_tid)
            mem = self._memcg(record.ktime_ns, record.trigger, (), record)
            self._holders(record.ktime_ns, record.trigger, mem)
        elif isinstance(record, CgroupRecord):
            self.paths.learn(record.hierarchy, record.cgroup_id, record.path)
            if self.on_new_container is not None:
                kube = parse_kube_cgroup(record.path)
                if kube is not None and kube.role == "container":
                    self.on_new_container()

    # -- processes -------------------------------------------------------------

    def task(self, task: Task, *, with_parents: bool = True) -> procfs.ProcSnapshot | None:
        """The snapshot of a task seen in the kernel, taken now if not cached."""
        expect = procfs.kernel_start_to_ticks(task.start_ns) if task.start_ns else None
        if expect is not None:
            cached = self._snapshots.get((task.tgid, expect))
            if cached is not None and cached.comm == task.comm:
                return cached
        snap = procfs.snapshot(task.tgid, expect_start_ticks=expect, with_parents=with_parents)
        if snap is not None:
            self._remember(task.tid, snap)
        elif task.ppid and expect is not None:
            # A short-lived sender (a script's kill) is gone already; its
            # parent, named by the kernel, usually is not.
            chain = procfs.parents(task.ppid) or (procfs.Parent(task.ppid, task.parent_comm),)
            self.orphan_chains[(task.tgid, expect)] = chain
            while len(self.orphan_chains) > self._max:
                self.orphan_chains.popitem(last=False)
        return snap

    def chain(self, task: Task) -> tuple[procfs.Parent, ...] | None:
        """The parent chain captured for a task that had exited before it was read."""
        if not task.start_ns:
            return None
        return self.orphan_chains.get((task.tgid, procfs.kernel_start_to_ticks(task.start_ns)))

    def thread(self, tid: int) -> procfs.ProcSnapshot | None:
        """A snapshot of the process that owns thread `tid`, if it still exists;
        a victim's parents are not reported, so they are not read."""
        tgid = procfs.tgid_of(tid)
        if tgid is None:
            return None
        snap = procfs.snapshot(tgid, with_parents=False)
        if snap is not None:
            self._remember(tid, snap)
        return snap

    def lookup(
        self, tid: int, tgid: int | None = None, start_ns: int = 0
    ) -> procfs.ProcSnapshot | None:
        """A snapshot taken earlier for this thread or process, checked against pid reuse."""
        if tgid is not None and start_ns:
            snap = self._snapshots.get((tgid, procfs.kernel_start_to_ticks(start_ns)))
            if snap is not None:
                return snap
        key = self._by_tid.get(tid)
        if key is None:
            return None
        if tgid is not None and start_ns and key != (tgid, procfs.kernel_start_to_ticks(start_ns)):
            return None
        return self._snapshots.get(key)

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
        counters: tuple[MemcgCounter, ...],
        kprobe: OomKillRecord | None,
    ) -> MemcgCapture | None:
        hierarchy = self.paths.memory
        if hierarchy is None:
            return None
        trigger_memcg = self.paths.memcg_path(trigger.memcg_id) if trigger.memcg_id else None
        if trigger_memcg is None:
            snap = self.lookup(trigger.tid, trigger.tgid, trigger.start_ns)
            trigger_memcg = snap.memory_cgroup if snap else None
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
            if stat is None:
                if path not in by_path:
                    continue
                # Removed already (a runtime deletes an exited container's
                # cgroup within milliseconds): the kernel's counters remain.
                stat = {"path": path, "stat": None, "events": None}
            stat["stat_read_after_kill_ms"] = round((time.monotonic_ns() - ktime_ns) / 1e6, 3)
            counter = by_path.get(path)
            if counter is not None:
                _merge_counter(stat, counter, self._page_size)
            if path == oom_memcg or stat.get("limit_bytes"):
                stats[path] = stat
        mem = MemcgCapture(
            trigger_memcg=trigger_memcg,
            oom_memcg=oom_memcg,
            source=source,
            stats=stats,
            kernel_saw_no_limit=bool(by_path) and oom_memcg is None and kprobe is None,
        )
        self.memcg_by_ktime[ktime_ns] = mem
        while len(self.memcg_by_ktime) > self._max:
            self.memcg_by_ktime.popitem(last=False)
        return mem

    def _holders(self, ktime_ns: int, trigger: Task, mem: MemcgCapture | None) -> None:
        """The top memory holders in the OOM's scope: the OOM memcg's subtree, or
        the whole node when no memcg limit was hit."""
        last = self._last_scan
        if (
            last is not None
            and last[0] == trigger.tid
            and ktime_ns - last[1] < HOLDER_SCAN_WINDOW_NS
        ):
            self.holders_by_ktime[ktime_ns] = last[2]
            return
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
        self._last_scan = (trigger.tid, ktime_ns, holders)
        self.holders_by_ktime[ktime_ns] = holders
        while len(self.holders_by_ktime) > self._max:
            self.holders_by_ktime.popitem(last=False)


# PAGE_COUNTER_MAX is LONG_MAX / PAGE_SIZE; anything this large is "no limit".
_UNLIMITED_PAGES: Final = 1 << 50


def _at_limit(c: MemcgCounter) -> bool:
    """A failed charge leaves usage within a charge batch of max; allow 2% or 1 MiB."""
    if c.max_pages >= _UNLIMITED_PAGES:
        return False
    return c.usage_pages + max(c.max_pages // 50, 256) >= c.max_pages


def _merge_counter(stat: dict[str, object], counter: MemcgCounter, page_size: int) -> None:
    """The kernel's usage and limit at the kill replace the later file reads."""
    usage = counter.usage_pages * page_size
    stat["usage_bytes"] = usage
    if counter.max_pages < _UNLIMITED_PAGES:
        stat["limit_bytes"] = counter.max_pages * page_size
    inner = stat.get("stat")
    inactive = inner.get("inactive_file") if isinstance(inner, dict) else None
    if isinstance(inactive, int):
        stat["working_set_bytes"] = max(0, usage - inactive)
    stat["usage_source"] = "kernel_at_kill"
