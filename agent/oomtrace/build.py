"""Build: one :class:`~oomtrace.correlate.Kill` becomes one ``oomtrace.event/v1``
object (docs/events.md), as a pure function of the kill.

Kernel records are the truth; the evidence capture attached to each record fills
what the records lack (cmdline, tty, parents, memcg files, top holders). Nothing
here reads the host or looks anything up: an event can be built in a unit test
from recorded records and evidence. Kubernetes names and the cause come in the
later steps (kubernetes.py, classify.py).
"""

from __future__ import annotations

import socket
import time
from typing import Final

from oomtrace import nodefacts, oom
from oomtrace.capture import Evidence, Seen
from oomtrace.classify import Facts, Party, Verdict
from oomtrace.correlate import Kill
from oomtrace.host.procfs import CLK_TCK, PAGE_SIZE, Parent, ProcSnapshot
from oomtrace.kernel import features
from oomtrace.kernel.features import KernelVocabulary
from oomtrace.kernel.records import Argv, OomKillRecord, Task
from oomtrace.runtimes import is_runtime
from oomtrace.schema import SCHEMA, Event, rfc3339, utc_second
from oomtrace.sigdefs import GENERATE_RESULTS, SIGKILL, code_name, kernel_generated, signal_name

TOP_HOLDERS: Final = 5


_STAMPS_KEPT: Final = 256


class Clock:
    """Maps the BPF clock (CLOCK_MONOTONIC) to wall time, and the kernel's
    process start times (CLOCK_BOOTTIME, which also counts suspend) to it."""

    def __init__(self) -> None:
        self.offset_ns = 0
        self.boot_offset_ns = 0
        self._stamps: dict[int, str] = {}
        self.resync()

    def resync(self) -> None:
        # Read twice around the other clock so the offset error is bounded by
        # the time between the two monotonic reads.
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        self.offset_ns = wall - (before + after) // 2
        before = time.monotonic_ns()
        boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        after = time.monotonic_ns()
        self.boot_offset_ns = boot - (before + after) // 2

    def rfc3339(self, ktime_ns: int) -> str:
        seconds, nanos = divmod(ktime_ns + self.offset_ns, 1_000_000_000)
        # A storm's events share their second, and its victims their start's:
        # each second is formatted once.
        stamp = self._stamps.get(seconds)
        if stamp is None:
            if len(self._stamps) >= _STAMPS_KEPT:
                self._stamps.clear()
            stamp = self._stamps[seconds] = utc_second(seconds)
        return f"{stamp}.{nanos:09d}Z"  # as schema.rfc3339


RECOVERED_ERROR: Final = (
    "recovered: recorded by the kernel while no agent was reading (an agent restart); "
    "/proc was not read, so the fields it gives are null"
)


class EventBuilder:
    def __init__(
        self,
        clock: Clock,
        tier: str,
        *,
        vocabulary: KernelVocabulary | None = None,
        hostname: str | None = None,
        node_name: str | None = None,
        top_n: int = TOP_HOLDERS,
    ) -> None:
        self.clock = clock
        self.tier = tier
        self.vocabulary = vocabulary or features.vocabulary(None)
        self.hostname = hostname or socket.gethostname()
        self.node_name = node_name
        self.top_n = top_n

    def common(self, kind: str, ktime_ns: int) -> Event:
        return {
            "schema": SCHEMA,
            "type": kind,
            "time": self.clock.rfc3339(ktime_ns),
            "ktime_ns": ktime_ns,
            # memory: set by kill(); a lost event has none to tell, and says so.
            "node": {"hostname": self.hostname, "name": self.node_name, "memory": None},
        }

    def lost(self, ktime_ns: int, source: str, count: int, detail: dict[str, int]) -> Event:
        event = self.common("lost", ktime_ns)
        event["lost"] = {"source": source, "count": count, "by_kind": detail}
        return event

    def gap(
        self,
        ktime_ns: int,
        *,
        start_ns: int | None,
        end_ns: int,
        unread: int | None,
        reason: str,
    ) -> Event:
        """A time in which nothing was traced: ``start_ns`` and ``end_ns`` are
        CLOCK_REALTIME (the earlier agent's record of when it last traced)."""
        event = self.common("gap", ktime_ns)
        event["gap"] = {
            "from": rfc3339(start_ns) if start_ns else None,
            "to": rfc3339(end_ns),
            "unread_records": unread,
            "reason": reason,
        }
        return event

    def kill(self, kill: Kill) -> Event:
        """The event of one kill, without its Kubernetes names and cause; its
        `enrichment.errors` say which fields could not be filled and why."""
        event = self.common(kill.kind, kill.ktime_ns)
        event["recovered"] = kill.recovered
        errors: list[str] = []
        if kill.recovered:
            # Capture reads /proc when a record arrives; these arrived late.
            errors.append(RECOVERED_ERROR)
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
            event["group_kill_via"] = kill.group_kill_via if kill.group_kill else None
            event["trigger"] = self._trigger(kill)
            event["oom"] = self._oom(kill, event["victim"])
        else:
            assert kill.signal is not None
            seen = kill.signal_evidence.sender
            event["sender"] = _process(
                kill.signal.sender, seen, kill.signal.sender_argv, parents=True
            )
            snap = seen.snapshot if seen else None
            event["sender"]["tty"] = kill.signal.sender_tty or (snap.tty if snap else None)
            event["stop"] = self._stop(kill)
        event["node"]["memory"] = nodefacts.render(_node_evidence(kill).node_memory)
        event["enrichment"] = {"errors": errors}
        return event

    def _stop(self, kill: Kill) -> Event | None:
        """A container runtime's stop of the victim: its signals, oldest first, and
        the grace from the first stop signal to the SIGKILL. `kind` and `pressure`
        are the stop step's (stops.py), once it knows whether the pod went too."""
        final = kill.signal
        assert final is not None
        if not kill.stop_signals and not is_runtime(final.sender.comm):
            return None
        records = [rec for rec, _ in kill.stop_signals]
        if all(rec is not final for rec in records):
            records.append(final)
        grace = None
        if kill.stop_signals and final.sig == SIGKILL:
            grace = round((final.ktime_ns - records[0].ktime_ns) / 1e9, 3)
        return {
            "kind": None,
            "grace_s": grace,
            "signals": [
                {
                    "signal": signal_name(rec.sig),
                    "number": rec.sig,
                    "sender": {"pid": rec.sender.tgid, "comm": rec.sender.comm},
                    "time": self.clock.rfc3339(rec.ktime_ns),
                }
                for rec in records
            ],
            "pressure": None,
        }

    # -- roles -----------------------------------------------------------------

    def _trigger(self, kill: Kill) -> Event | None:
        ctx = kill.context
        if ctx is None:
            return None
        seen = _oom_evidence(kill).trigger
        return _process(ctx.trigger, seen, _trigger_argv(kill), parents=True)

    def _victim(self, kill: Kill, errors: list[str]) -> Event:
        task = kill.victim
        # The victim as the signal or the mark named it, read while it lived.
        snap = next(
            (
                seen.snapshot
                for seen in (kill.signal_evidence.target, kill.mark_evidence.target)
                if seen is not None and seen.snapshot is not None
            ),
            None,
        )
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
            "oom_score_adj": _victim_adj(kill, task, snap),
            "cgroup": _victim_cgroup(kill, task, snap),
            **_cmdline(kill.signal.target_argv if kill.signal else None, snap),
            "ppid": (task.ppid if task and task.ppid else None) or (snap.ppid if snap else None),
            **self._age(kill.ktime_ns, _start_ns(task, snap)),
        }
        if kill.kind == "oom_kill":
            out["memory"] = _victim_memory(kill, snap)
        out["exit"] = _exit(kill)
        if out["cgroup"] is None:
            errors.append("victim: cgroup unknown (exited before its signal was delivered)")
        return out

    def _age(self, kill_ktime_ns: int, start_ns: int | None) -> Event:
        """When the victim started (its process, not the thread) and how long it
        had lived at the kill: a leak kills late, a too-small limit at once."""
        if not start_ns:
            return {"started": None, "age_s": None}
        boot_offset = self.clock.boot_offset_ns
        age_ns = kill_ktime_ns + boot_offset - start_ns
        return {
            "started": self.clock.rfc3339(start_ns - boot_offset),
            "age_s": round(max(age_ns, 0) / 1e9, 3),
        }

    # -- the OOM ---------------------------------------------------------------

    def _oom(self, kill: Kill, victim: Event) -> Event:
        ctx = kill.context
        evidence = _oom_evidence(kill)
        mem = evidence.memcg
        memcg, source = oom.oom_memcg(mem, victim["cgroup"])
        stat = mem.stats.get(memcg) if mem and memcg else None
        out: Event = {
            "context_id": ctx.id if ctx else None,
            "tier": self.tier,
            "memcg": memcg,
            "memcg_source": source,
            "memcg_stat": stat,
        }
        if ctx is not None and ctx.kprobe is not None:
            out |= self._kprobe_facts(ctx.kprobe)
        out["top_holders"] = oom.top_holders(evidence.holders, victim, self.top_n)
        out["victim_badness"] = oom.badness(
            victim.get("memory"),
            victim.get("oom_score_adj"),
            limit_pages=out.get("limit_pages"),
            limit_bytes=_int_or_none((stat or {}).get("limit_bytes")),
            node_pages=evidence.node_pages,
            chosen_points=out.get("chosen_points") if not kill.group_kill else None,
        )
        return out

    def _kprobe_facts(self, rec: OomKillRecord) -> Event:
        """What oom_kill_process() knew: the OOM's scope, limit and victim choice."""
        constraint = self.vocabulary.constraints.get(rec.constraint, str(rec.constraint))
        return {
            "constraint": constraint,
            # totalpages is the limit the OOM applied (the memcg's max, or RAM +
            # swap): not how much anything used.
            "limit_pages": rec.totalpages,
            "limit_bytes": rec.totalpages * PAGE_SIZE,
            "memcg_usage_bytes": rec.oom_memcg_usage_pages * PAGE_SIZE
            if rec.oom_memcg_id
            else None,
            "chosen_points": rec.chosen_points,
            "chosen": {"pid": rec.victim_tgid, "tid": rec.victim_tid, "comm": rec.victim_comm},
            "gfp_mask": f"{rec.gfp_mask:#x}",
            "gfp_flags": self.vocabulary.gfp_flags(rec.gfp_mask),
            "order": rec.order,
            "sysrq": rec.order == -1,
        }


def node_wide(kill: Kill) -> bool:
    """The kernel said no memcg limit was hit: a global (node) OOM."""
    ctx = kill.context
    if ctx is not None and ctx.kprobe is not None:
        return ctx.kprobe.oom_memcg_id == 0
    mem = _oom_evidence(kill).memcg
    return mem is not None and mem.kernel_saw_no_limit


def _oom_evidence(kill: Kill) -> Evidence:
    """The OOM run's evidence: the kprobe's, which saw the OOM first and named its
    memcg, else the victim's own mark's. A group member killed without a mark of
    its own (a process sharing the victim's memory, or one its pid namespace's end
    took) has the run's: one run of the OOM killer has one memcg and one scan."""
    ctx = kill.context
    if ctx is not None and ctx.kprobe is not None:
        return ctx.evidence
    if kill.mark is not None:
        return kill.mark_evidence
    if ctx is not None:
        return ctx.evidence
    return kill.mark_evidence


def _process(task: Task, seen: Seen | None, argv: Argv | None, *, parents: bool) -> Event:
    """A task seen in its own context by the kernel (sender, trigger)."""
    snap = seen.snapshot if seen else None
    out: Event = {
        "pid": task.tgid,
        "tid": task.tid,
        "comm": task.comm,
        "uid": task.uid,
        "ppid": task.ppid or (snap.ppid if snap else None),
        "oom_score_adj": task.oom_score_adj
        if task.has_struct_fields
        else (snap.oom_score_adj if snap else None),
        "cgroup": seen.cgroup() if seen else None,
        **_cmdline(argv, snap),
    }
    if parents:
        chain: tuple[Parent, ...] = seen.parents if seen else ()
        if not chain and task.ppid:
            chain = (Parent(task.ppid, task.parent_comm),)
        out["parents"] = [{"pid": p.pid, "comm": p.comm} for p in chain]
    return out


def _cmdline(argv: Argv | None, snap: ProcSnapshot | None) -> Event:
    """The command line kept at exec when there is one: it is the same whatever
    the timing, where /proc reads empty once the process's memory is gone. Only
    when the kernel had to cut it and /proc gave it whole does /proc win."""
    if argv is not None and not (argv.truncated and snap is not None and snap.cmdline):
        return {"cmdline": list(argv.args), "cmdline_source": argv.source,
                "cmdline_truncated": argv.truncated}  # fmt: skip
    if snap is not None and snap.cmdline:
        return {"cmdline": snap.cmdline, "cmdline_source": "proc", "cmdline_truncated": False}
    return {"cmdline": None, "cmdline_source": None, "cmdline_truncated": False}


def _trigger_argv(kill: Kill) -> Argv | None:
    """The trigger's argv: its mark's copy, or, for a group member killed without
    a mark, its own SIGKILL's, which the trigger sent."""
    if kill.mark is not None and kill.mark.trigger_argv is not None:
        return kill.mark.trigger_argv
    sig, ctx = kill.signal, kill.context
    if sig is not None and ctx is not None and sig.sender.tid == ctx.trigger.tid:
        return sig.sender_argv
    return None


def _start_ns(task: Task | None, snap: ProcSnapshot | None) -> int | None:
    """The process's start on CLOCK_BOOTTIME: the kernel's, else /proc's (in ticks)."""
    if task is not None and task.has_struct_fields and task.start_ns:
        return task.start_ns
    if snap is not None and snap.start_ticks:
        return snap.start_ticks * 1_000_000_000 // CLK_TCK
    return None


def _victim_cgroup(kill: Kill, task: Task | None, snap: ProcSnapshot | None) -> str | None:
    """The victim's cgroup as the record that gave `kill.victim` named it (its own
    context once it received the signal), else what /proc said while it lived."""
    if task is None:
        return snap.memory_cgroup if snap else None
    if kill.exit is not None:
        seen = kill.exit_evidence.victim
    elif kill.deliver is not None:
        seen = kill.deliver_evidence.victim
    else:
        seen = kill.signal_evidence.target
    if seen is None:
        return snap.memory_cgroup if snap else None
    return seen.cgroup(snap)


def _victim_adj(kill: Kill, task: Task | None, snap: ProcSnapshot | None) -> int | None:
    if kill.mark is not None and kill.mark.victim_oom_score_adj is not None:
        return kill.mark.victim_oom_score_adj
    if task is not None and task.has_struct_fields:
        return task.oom_score_adj
    return snap.oom_score_adj if snap else None


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


def _exit(kill: Kill) -> Event | None:
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


# -- the classifier's facts, and its verdict written into the event ---------------


def facts(event: Event, *, info_kind: int | None, node_wide: bool) -> Facts:
    """What the classifier decides from, taken from a built and enriched event (so
    that the explanation names pods) and the kernel's word on the kill."""
    victim = event["victim"]
    signal = event.get("signal") or {}
    oom_part = event.get("oom") or {}
    stat = oom_part.get("memcg_stat") or {}
    exit_info = victim.get("exit") or {}
    stop = event.get("stop") or {}
    return Facts(
        kind=event["type"],
        victim=_party(victim),
        sender=_party(event["sender"]) if event.get("sender") else None,
        trigger=_party(event["trigger"]) if event.get("trigger") else None,
        signal=signal.get("name"),
        signal_code=signal.get("code"),
        from_kernel=bool(signal.get("from_kernel")),
        info_kind=info_kind,
        victim_oom_score_adj=victim.get("oom_score_adj"),
        exit_code=exit_info.get("code") if exit_info.get("observed") else None,
        group_kill=bool(event.get("group_kill")),
        group_kill_via=event.get("group_kill_via"),
        node_wide=node_wide,
        memcg=oom_part.get("memcg"),
        limit_bytes=stat.get("limit_bytes") or oom_part.get("limit_bytes"),
        memcg_stat=stat or None,
        victim_age_s=victim.get("age_s"),
        stop_kind=stop.get("kind"),
        stop_grace_s=stop.get("grace_s"),
        stop_signal=(stop.get("signals") or [{}])[0].get("signal"),
        stop_pressure=stop.get("pressure"),
    )


def kill_facts(event: Event, kill: Kill) -> Facts:
    return facts(
        event,
        info_kind=kill.signal.info_kind if kill.signal else None,
        node_wide=node_wide(kill),
    )


def _party(proc: Event) -> Party:
    # Positional: it runs for two roles of every event.
    parents = proc.get("parents")
    return Party(
        proc["pid"],
        proc["comm"],
        proc.get("uid"),
        proc.get("cgroup"),
        proc.get("k8s"),
        proc.get("tty"),
        tuple(p["comm"] or "" for p in parents) if parents else (),
    )


def with_verdict(event: Event, verdict: Verdict) -> Event:
    """Writes the cause, an OOM's scope and the explanation; `enrichment` stays last."""
    event["cause"] = str(verdict.cause)
    if event["type"] == "oom_kill":
        event["oom"]["scope"] = verdict.scope
    event["explanation"] = verdict.explanation
    event["enrichment"] = event.pop("enrichment")
    return event


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _node_evidence(kill: Kill) -> Evidence:
    """The evidence read at the moment the node's memory matters: a stop's first
    signal, else the kill's own signal or mark, else its OOM's first record."""
    if kill.stop_signals:
        return kill.stop_signals[0][1]
    for evidence in (kill.signal_evidence, kill.mark_evidence):
        if evidence.node_memory is not None:
            return evidence
    return kill.context.evidence if kill.context is not None else kill.signal_evidence
