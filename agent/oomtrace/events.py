"""Building the ``oomtrace.event/v1`` objects (documented in docs/events.md).

Kernel records are the truth; /proc snapshots taken on arrival fill what the
records lack (cmdline, tty, memory on kernels with the old mark_victim layout).
Every object is plain JSON data, ready for orjson.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from oomtrace.capture import Capture, MemcgCapture
from oomtrace.classify import Rules, classify
from oomtrace.correlate import Kill
from oomtrace.host import memcg
from oomtrace.host.procfs import Parent, ProcSnapshot
from oomtrace.kernel import features
from oomtrace.kernel.features import KernelVocabulary
from oomtrace.kernel.records import OomKillRecord, Task
from oomtrace.sigdefs import GENERATE_RESULTS, code_name, kernel_generated, signal_name

SCHEMA: Final = "oomtrace.event/v1"

Event = dict[str, Any]


class Clock:
    """Maps the BPF clock (CLOCK_MONOTONIC) to wall time."""

    def __init__(self) -> None:
        self.offset_ns = 0
        self.resync()

    def resync(self) -> None:
        # Read twice around the wall clock so the offset error is bounded by
        # the time between the two monotonic reads.
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        self.offset_ns = wall - (before + after) // 2

    def rfc3339(self, ktime_ns: int) -> str:
        wall = ktime_ns + self.offset_ns
        seconds, nanos = divmod(wall, 1_000_000_000)
        stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{nanos:09d}Z"


class K8sResolver(Protocol):
    def resolve(self, cgroup_path: str | None) -> tuple[dict[str, object] | None, list[str]]: ...


class EventBuilder:
    def __init__(
        self,
        capture: Capture,
        clock: Clock,
        tier: str,
        *,
        k8s: K8sResolver | None = None,
        vocabulary: KernelVocabulary | None = None,
        rules: Rules | None = None,
    ) -> None:
        self.capture = capture
        self.clock = clock
        self.tier = tier
        self.k8s = k8s
        self.vocabulary = vocabulary or features.vocabulary(None)
        self.rules = rules or Rules()
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.hostname = socket.gethostname()

    def common(self, kind: str, ktime_ns: int) -> Event:
        return {
            "schema": SCHEMA,
            "type": kind,
            "time": self.clock.rfc3339(ktime_ns),
            "ktime_ns": ktime_ns,
            "node": {"hostname": self.hostname},
        }

    def lost(self, ktime_ns: int, source: str, count: int, detail: dict[str, int]) -> Event:
        event = self.common("lost", ktime_ns)
        event["lost"] = {"source": source, "count": count, "by_kind": detail}
        return event

    def kill(self, kill: Kill) -> Event:
        event = self.common(kill.kind, kill.ktime_ns)
        errors: list[str] = []
        event["victim"] = self._victim(kill, errors)
        if kill.signal is not None:
            sig = kill.signal
            event["signal"] = {
                "number": sig.sig,
                "name": signal_name(sig.sig),
                "code": code_name(sig.code, sig.sig),
                "from_kernel": kernel_generated(sig.code),
                "errno": sig.errno,
                "group": sig.group,
                "result": GENERATE_RESULTS.get(sig.result, str(sig.result)),
            }
        elif kill.kind == "oom_kill":
            # mark_victim with no SIGKILL: the kernel found the victim exiting.
            event["signal"] = None
        if kill.kind == "oom_kill":
            event["group_kill"] = kill.group_kill
            event["trigger"] = self._trigger(kill)
            event["oom"] = self._oom(kill, event["victim"]["cgroup"])
        else:
            assert kill.signal is not None
            event["sender"] = self._process(kill.signal.sender, parents=True, tty=True)
            if kill.signal.sender_tty:
                event["sender"]["tty"] = kill.signal.sender_tty
        self._kubernetes(event, errors)
        if kill.kind == "oom_kill":
            event["oom"]["top_holders"] = self._holders(kill, event["victim"], errors)
            event["oom"]["victim_badness"] = self._badness(event)
        classify(
            event,
            self.rules,
            info_kind=kill.signal.info_kind if kill.signal else None,
            node_wide=self._node_wide(kill),
        )
        event["enrichment"] = {"errors": errors}
        return event

    def _capture_key(self, kill: Kill) -> int | None:
        ctx = kill.context
        if ctx is not None and ctx.kprobe is not None:
            return ctx.kprobe.ktime_ns
        return kill.mark.ktime_ns if kill.mark is not None else None

    def _node_wide(self, kill: Kill) -> bool:
        """The kernel said no memcg limit was hit: a global (node) OOM."""
        ctx = kill.context
        if ctx is not None and ctx.kprobe is not None:
            return ctx.kprobe.oom_memcg_id == 0
        key = self._capture_key(kill)
        mem = self.capture.memcg_by_ktime.get(key) if key is not None else None
        return mem is not None and mem.kernel_saw_no_limit

    def _holders(self, kill: Kill, victim: Event, errors: list[str]) -> list[Event]:
        """The largest processes in the OOM's scope. They are read right after the
        kill, when the victim's memory is already going: the victim is listed
        with its size at the kill, as mark_victim reported it."""
        key = self._capture_key(kill)
        holders = self.capture.holders_by_ktime.get(key, []) if key is not None else []
        out: list[Event] = [
            {
                "pid": h.pid,
                "comm": h.comm,
                "rss_kb": h.rss_kb,
                "oom_score_adj": h.oom_score_adj,
                "cgroup": h.cgroup,
            }
            for h in holders
            if h.pid != victim.get("pid")
        ]
        memory = victim.get("memory") or {}
        rss = sum(memory.get(k) or 0 for k in ("anon_rss_kb", "file_rss_kb", "shmem_rss_kb"))
        if rss:
            out.append(
                {
                    "pid": victim.get("pid"),
                    "comm": victim.get("comm"),
                    "rss_kb": rss,
                    "oom_score_adj": victim.get("oom_score_adj"),
                    "cgroup": victim.get("cgroup"),
                    "victim": True,
                }
            )
        out.sort(key=lambda h: -int(h["rss_kb"] or 0))
        del out[self.capture.top_n :]
        for h in out:
            if h.get("victim"):
                h["k8s"] = victim.get("k8s")
                continue
            k8s, problems = self.k8s.resolve(h["cgroup"]) if self.k8s else (None, [])
            h["k8s"] = k8s
            errors.extend(
                f"top_holders: {p}" for p in problems if f"top_holders: {p}" not in errors
            )
        return out

    def _badness(self, event: Event) -> Event | None:
        """The victim's badness as oom_badness() computes it: rss + swap + page
        tables, plus oom_score_adj thousandths of the pages the OOM was about."""
        victim = event["victim"]
        mem = victim.get("memory") or {}
        adj = victim.get("oom_score_adj")
        oom = event["oom"]
        total_pages = oom.get("limit_pages")
        if total_pages is None:
            limit = (oom.get("memcg_stat") or {}).get("limit_bytes")
            total_pages = limit // self.page_size if isinstance(limit, int) else None
        if total_pages is None:
            total_pages = self._node_pages()
        kb_per_page = self.page_size // 1024
        rss_kb = sum(mem.get(k) or 0 for k in ("anon_rss_kb", "file_rss_kb", "shmem_rss_kb"))
        if not rss_kb or adj is None:
            return None
        rss = rss_kb // kb_per_page
        pgtables = (mem.get("pgtables_kb") or 0) // kb_per_page
        adj_pages = adj * total_pages // 1000 if total_pages else 0
        return {
            "rss_pages": rss,
            "pgtables_pages": pgtables,
            "oom_score_adj": adj,
            "adj_pages": adj_pages,
            "total_pages": total_pages,
            "points": oom.get("chosen_points") if not event.get("group_kill") else None,
            "points_estimate": rss + pgtables + adj_pages,
        }

    @staticmethod
    def _node_pages() -> int | None:
        """RAM + swap in pages: what a global OOM weighs oom_score_adj against."""
        try:
            text = Path("/proc/meminfo").read_text()
            info = dict(line.split(":", 1) for line in text.splitlines())
            kb = int(info["MemTotal"].split()[0]) + int(info["SwapTotal"].split()[0])
        except (OSError, KeyError, ValueError):
            return None
        return kb * 1024 // os.sysconf("SC_PAGE_SIZE")

    def _kubernetes(self, event: Event, errors: list[str]) -> None:
        """Each process's pod and container, or null for a host process."""
        for role in ("victim", "trigger", "sender"):
            proc = event.get(role)
            if proc is None:
                continue
            if self.k8s is None:
                proc["k8s"] = None
                continue
            k8s, problems = self.k8s.resolve(proc.get("cgroup"))
            proc["k8s"] = k8s
            errors.extend(f"{role}: {p}" for p in problems)

    # -- roles -----------------------------------------------------------------

    def _snapshot_of(self, task: Task) -> ProcSnapshot | None:
        return self.capture.lookup(task.tid, task.tgid, task.start_ns)

    def _cgroup_path(self, task: Task, snap: ProcSnapshot | None) -> str | None:
        path = self.capture.paths.memcg_path(task.memcg_id) if task.memcg_id else None
        if path is None and snap is not None:
            path = snap.memory_cgroup
        if path is None and task.cgroup_id:
            path = self.capture.paths.unified_path(task.cgroup_id)
        return path

    def _process(self, task: Task, *, parents: bool, tty: bool = False) -> Event:
        """A task seen in its own context by the kernel (sender, trigger)."""
        snap = self._snapshot_of(task)
        out: Event = {
            "pid": task.tgid,
            "tid": task.tid,
            "comm": task.comm,
            "uid": task.uid,
            "ppid": task.ppid or (snap.ppid if snap else None),
            "oom_score_adj": task.oom_score_adj
            if task.has_struct_fields
            else (snap.oom_score_adj if snap else None),
            "cgroup": self._cgroup_path(task, snap),
            "cmdline": snap.cmdline if snap else None,
        }
        if parents:
            chain = snap.parents if snap is not None else self.capture.chain(task)
            if not chain and task.ppid:
                chain = (Parent(task.ppid, task.parent_comm),)
            out["parents"] = [{"pid": p.pid, "comm": p.comm} for p in chain or ()]
        if tty:
            out["tty"] = snap.tty if snap else None
        return out

    def _trigger(self, kill: Kill) -> Event | None:
        if kill.context is None:
            return None
        return self._process(kill.context.trigger, parents=True)

    def _victim(self, kill: Kill, errors: list[str]) -> Event:
        task = kill.victim
        snap = None
        if task is not None:
            snap = self.capture.lookup(task.tid, task.tgid, task.start_ns)
        if snap is None:
            snap = self.capture.lookup(kill.victim_tid)
        mark = kill.mark
        if task is not None:
            pid: int | None = task.tgid
        elif snap is not None:
            pid = snap.tgid
        else:
            pid = kill.victim_tgid
        out: Event = {
            "pid": pid,
            "tid": kill.victim_tid,
            "comm": kill.victim_comm or (task.comm if task else None),
            "uid": mark.victim_uid
            if mark and mark.victim_uid is not None
            else (task.uid if task else (snap.uid if snap else None)),
            "oom_score_adj": self._victim_adj(kill, task, snap),
            "cgroup": self._cgroup_path(task, snap)
            if task
            else (snap.memory_cgroup if snap else None),
            # A dying process's cmdline reads empty: its mm is already gone.
            "cmdline": (snap.cmdline or None) if snap else None,
            "ppid": (task.ppid if task and task.ppid else None) or (snap.ppid if snap else None),
        }
        if kill.kind == "oom_kill":
            out["memory"] = self._victim_memory(kill, snap)
        out["exit"] = self._exit(kill)
        if out["cgroup"] is None:
            errors.append("victim: cgroup unknown (exited before its signal was delivered)")
        return out

    @staticmethod
    def _victim_adj(kill: Kill, task: Task | None, snap: ProcSnapshot | None) -> int | None:
        if kill.mark is not None and kill.mark.victim_oom_score_adj is not None:
            return kill.mark.victim_oom_score_adj
        if task is not None and task.has_struct_fields:
            return task.oom_score_adj
        return snap.oom_score_adj if snap else None

    @staticmethod
    def _victim_memory(kill: Kill, snap: ProcSnapshot | None) -> Event | None:
        mark = kill.mark
        if mark is not None and mark.victim_memory is not None:
            m = mark.victim_memory
            return {
                "total_vm_kb": m.total_vm_kb,
                "anon_rss_kb": m.anon_rss_kb,
                "file_rss_kb": m.file_rss_kb,
                "shmem_rss_kb": m.shmem_rss_kb,
                "pgtables_kb": m.pgtables_kb,
                "source": "mark_victim",
            }
        if snap is not None and snap.memory_kb:
            kb = snap.memory_kb
            return {
                "total_vm_kb": kb.get("VmSize"),
                "anon_rss_kb": kb.get("RssAnon"),
                "file_rss_kb": kb.get("RssFile"),
                "shmem_rss_kb": kb.get("RssShmem"),
                "pgtables_kb": kb.get("VmPTE"),
                "source": "proc",
            }
        return None

    def _exit(self, kill: Kill) -> Event | None:
        if kill.exit is not None:
            status, at, source = kill.exit.exit_code, kill.exit.ktime_ns, "sched_process_exit"
        elif kill.proc_exit is not None:
            status, at, source = kill.proc_exit.exit_code, kill.proc_exit.ktime_ns, "proc_connector"
        else:
            status = None
        if status is not None:
            term_signal = status & 0x7F
            return {
                "observed": True,
                "status": status,
                "signal": term_signal or None,
                "code": 128 + term_signal if term_signal else (status >> 8) & 0xFF,
                "kill_to_exit_ms": round((at - kill.ktime_ns) / 1e6, 3),
                "source": source,
            }
        if kill.exit_timed_out:
            return {"observed": False, "waited_ms": round((kill.deadline_ns - kill.ktime_ns) / 1e6)}
        return None

    def _oom(self, kill: Kill, victim_cgroup: str | None) -> Event:
        ctx = kill.context
        key = None
        if ctx is not None and ctx.kprobe is not None:
            key = ctx.kprobe.ktime_ns
        elif kill.mark is not None:
            key = kill.mark.ktime_ns
        mem = self.capture.memcg_by_ktime.get(key) if key is not None else None
        oom_memcg, source = self._oom_memcg(mem, victim_cgroup)
        out: Event = {
            "context_id": ctx.id if ctx else None,
            "tier": self.tier,
            "memcg": oom_memcg,
            "memcg_source": source,
            "memcg_stat": mem.stats.get(oom_memcg) if mem and oom_memcg else None,
        }
        if ctx is not None and ctx.kprobe is not None:
            out |= self._kprobe_facts(ctx.kprobe)
        return out

    def _kprobe_facts(self, rec: OomKillRecord) -> Event:
        """What oom_kill_process() knew: the OOM's scope, limit and victim choice."""
        constraint = self.vocabulary.constraints.get(rec.constraint, str(rec.constraint))
        return {
            "constraint": constraint,
            # totalpages is the limit the OOM applied (the memcg's max, or RAM +
            # swap): not how much anything used.
            "limit_pages": rec.totalpages,
            "limit_bytes": rec.totalpages * self.page_size,
            "memcg_usage_bytes": rec.oom_memcg_usage_pages * self.page_size
            if rec.oom_memcg_id
            else None,
            "chosen_points": rec.chosen_points,
            "chosen": {"pid": rec.victim_tgid, "tid": rec.victim_tid, "comm": rec.victim_comm},
            "gfp_mask": f"{rec.gfp_mask:#x}",
            "gfp_flags": self.vocabulary.gfp_flags(rec.gfp_mask),
            "order": rec.order,
            "sysrq": rec.order == -1,
        }

    @staticmethod
    def _oom_memcg(
        mem: MemcgCapture | None, victim_cgroup: str | None
    ) -> tuple[str | None, str | None]:
        """The memcg whose limit was hit: named by the kprobe, or else the nearest
        limited memcg holding both the trigger (whose charge failed) and the
        victim (chosen inside the OOM scope)."""
        if mem is None:
            return None, None
        if mem.oom_memcg is not None:
            return mem.oom_memcg, mem.source
        if mem.trigger_memcg is None or mem.kernel_saw_no_limit:
            return None, None
        scope = memcg.common_ancestor(mem.trigger_memcg, victim_cgroup or mem.trigger_memcg)
        for path in memcg.ancestry(scope):
            if path in mem.stats:
                return path, "inferred"
        return None, None
