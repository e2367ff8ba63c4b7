"""Joining kernel records into kills: one per victim process.

A kill starts with the record that names it (a signal_generate, a mark_victim, or
the kprobe's oom_kill_process), gathers the victim's signal_deliver record (none for
a SIGKILL when the kernel read the target's tgid: nothing can catch it) and its exit
record, and is released when the victim has exited or when ``exit_wait`` has
passed. Records arrive in ring-buffer order, which is the order they were written.

OOM contexts. One run of the OOM killer happens synchronously in the trigger task:
SIGKILL to the victim, mark_victim, SIGKILL to processes sharing its mm, then the
same for each memory.oom.group member. With the kprobe tier, the oom_kill_process
record opens the context exactly. With tracepoints only, a context is the run of
SI_KERNEL SIGKILLs and marks from one trigger thread with less than ``window_ns``
between them, closed early once all of its victims have exited (a new OOM in the
same scope cannot choose a victim while a previous one is neither gone nor
reaped), unless the trigger itself is one of them. A kernel SIGKILL from the
trigger while a victim of its run still lives is that run going on, however long
its mark takes to follow (the trigger may be preempted in between).

A dying pid namespace's init SIGKILLs every process left in it that has no fatal
signal pending (zap_pid_ns_processes), SI_KERNEL like the OOM killer's. After a
group kill those are members already exiting, so the kernel ignores the signal:
such an unqueued kernel SIGKILL to a process this already holds as killed is
counted as a duplicate, not reported as a kill of its own. When the init dies
before the OOM killer's scan reaches a member (the scan skips a process whose
memory is already gone), the init's SIGKILL is what took that member: it joins
the OOM's context as a group kill via the namespace's exit.

Stops. A container runtime's stop signal (SIGTERM, or the image's) is not a kill:
it is kept, by the target's tgid, as the start of a stop. The runtime's SIGKILL
after the stop's timeout then carries it as `stop_signals`; a process that exits
on the stop signal itself (143, or a clean shutdown) becomes a kill of that
signal, completed by its exit. A stop signal that nothing follows is forgotten
after STOP_KEEP_NS, or when more stops than the kernel can follow are open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, assert_never

from oomtrace.capture import NO_EVIDENCE, Evidence
from oomtrace.exits import ProcExit
from oomtrace.kernel.records import (
    PENDING_KILLS_MAX,
    CgroupRecord,
    DeliverRecord,
    ExitRecord,
    MarkVictimRecord,
    OomKillRecord,
    Record,
    SignalRecord,
    Task,
)
from oomtrace.runtimes import is_runtime
from oomtrace.sigdefs import SI_KERNEL, SIGKILL, fatal_by_default

DEFAULT_WINDOW_NS: Final = 50_000_000
DEFAULT_EXIT_WAIT_NS: Final = 5_000_000_000
# Members of one memory.oom.group kill are marked microseconds apart; a victim
# that exited before a mark at least this much later ended the earlier run.
CLOSED_GAP_NS: Final = 2_000_000
# A pod's grace period is 30 s unless set; a stop signal still unanswered after
# an hour is a process that handled it and lived on.
STOP_KEEP_NS: Final = 3_600_000_000_000

StopSignals = list[tuple[SignalRecord, Evidence]]


@dataclass(slots=True)
class OomContext:
    """One invocation of the OOM killer."""

    id: str
    trigger: Task
    first_ktime_ns: int
    last_ktime_ns: int
    kprobe: OomKillRecord | None = None
    # What capture read for the record that opened the context (the kprobe's,
    # or the first mark's): the trigger, the memcg, the top holders.
    evidence: Evidence = NO_EVIDENCE
    victims: int = 0
    # Victims (tids) marked and not yet exited; none left closes the context.
    alive: set[int] = field(default_factory=set)
    closed: bool = False
    # Memcgs (ids) of its victims that have memory.oom.group set: the run goes
    # on over every process of them, so their later marks belong to it.
    group_memcgs: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Kill:
    """Everything the kernel told about one signalled or OOM-killed process."""

    kind: str  # "oom_kill" | "signal"
    ktime_ns: int
    victim_tid: int
    victim_comm: str
    deadline_ns: int
    signal: SignalRecord | None = None
    mark: MarkVictimRecord | None = None
    context: OomContext | None = None
    group_kill: bool = False
    # How a group member died: the OOM killer signalled it ("oom_killer"), or its
    # pid namespace's init, a victim of the same OOM, took it along when it died
    # ("pid_namespace_exit").
    group_kill_via: str | None = None
    # The OOM run a kernel SIGKILL was sent in, known when it was sent: its
    # trigger's run still had a living victim.
    run: OomContext | None = None
    # A runtime's stop signals (SIGTERM, or the image's stop signal) to the victim
    # before this kill, oldest first, each with what capture read when it came:
    # the stop this kill ends. The kill itself may be the last of them, when the
    # victim exited on it.
    stop_signals: list[tuple[SignalRecord, Evidence]] = field(default_factory=list)
    deliver: DeliverRecord | None = None
    exit: ExitRecord | None = None
    # Cleared when no deliver or exit record will come: the signal was not
    # queued, or the mark_victim had no signal of ours before it.
    expects_exit: bool = True
    exit_timed_out: bool = False
    # The proc connector's word that the victim exited, when the kernel's exit
    # record is late or lost.
    proc_exit: ProcExit | None = None
    # What capture read when each record arrived; the builder reads nothing else.
    signal_evidence: Evidence = NO_EVIDENCE
    mark_evidence: Evidence = NO_EVIDENCE
    deliver_evidence: Evidence = NO_EVIDENCE
    exit_evidence: Evidence = NO_EVIDENCE
    # Its records were written while no agent read them (an agent restart):
    # nothing was read from /proc for it.
    recovered: bool = False

    @property
    def victim(self) -> Task | None:
        """The victim as the kernel saw it: in its own context once it received
        the signal, else from the signal's target task."""
        if self.exit is not None:
            return self.exit.victim
        if self.deliver is not None:
            return self.deliver.victim
        if self.signal is not None:
            # Read from the target task_struct when the signal was generated.
            return self.signal.target
        return None

    @property
    def victim_tgid(self) -> int | None:
        task = self.victim
        if task is not None:
            return task.tgid
        if (
            self.context
            and self.context.kprobe
            and self.context.kprobe.victim_tid == self.victim_tid
        ):
            return self.context.kprobe.victim_tgid
        return None


@dataclass(slots=True)
class CorrelatorStats:
    # Stop signals forgotten: unanswered for STOP_KEEP_NS, or pushed out by newer stops.
    stops_forgotten: int = 0
    duplicates: int = 0
    evicted: int = 0
    unmatched_deliver: int = 0
    unmatched_exit: int = 0


@dataclass(slots=True)
class Correlator:
    window_ns: int = DEFAULT_WINDOW_NS
    exit_wait_ns: int = DEFAULT_EXIT_WAIT_NS
    max_pending: int = PENDING_KILLS_MAX
    stats: CorrelatorStats = field(default_factory=CorrelatorStats)
    # Kills waiting for their deliver/exit, keyed by (generate ktime, sender tgid):
    # the kernel copies that pair into the deliver and exit records.
    _by_signal: dict[tuple[int, int], Kill] = field(default_factory=dict)
    # Every unreleased kill, in arrival order (dicts keep insertion order).
    _pending: dict[int, Kill] = field(default_factory=dict)
    # SI_KERNEL SIGKILLs not yet known to be OOM kills, by target tid.
    _held: dict[int, Kill] = field(default_factory=dict)
    _contexts: dict[int, OomContext] = field(default_factory=dict)
    # Victims (tgids) a proc connector exit would complete; read by its thread.
    watched_tgids: set[int] = field(default_factory=set)
    # Released victims by tid and tgid: a zombie still gets its namespace's
    # teardown SIGKILL after its exit record, and a dying init sends it after its own.
    _released: dict[int, Kill] = field(default_factory=dict)
    # Open stops: a runtime's stop signals to a process (by tgid), oldest stop
    # first, and the (generate ktime, sender tgid) key its exit record will carry.
    _stops: dict[int, StopSignals] = field(default_factory=dict)
    _stop_keys: dict[tuple[int, int], int] = field(default_factory=dict)

    def feed(self, record: Record, evidence: Evidence = NO_EVIDENCE) -> list[Kill]:
        """Takes one record and what capture read for it; returns the kills it
        completed. A new record kind gets its branch here: mypy flags a missing one."""
        if isinstance(record, SignalRecord):
            return self._on_signal(record, evidence)
        if isinstance(record, MarkVictimRecord):
            return self._on_mark(record, evidence)
        if isinstance(record, OomKillRecord):
            self._open_context(record.trigger, record.ktime_ns, kprobe=record, evidence=evidence)
            return []
        if isinstance(record, DeliverRecord):
            return self._on_deliver(record, evidence)
        if isinstance(record, ExitRecord):
            return self._on_exit(record, evidence)
        if isinstance(record, CgroupRecord):
            return []  # capture learnt its path; it names no kill
        assert_never(record)

    def tick(self, now_ns: int) -> list[Kill]:
        """Resolves held kernel SIGKILLs and releases kills past their deadline."""
        done: list[Kill] = []
        for tid, kill in list(self._held.items()):
            if now_ns - kill.ktime_ns > self.window_ns:
                del self._held[tid]
                self._classify_held(kill)
                if self._complete(kill):
                    self._release(kill)
                    done.append(kill)
        expired = [
            k for k in self._pending.values() if now_ns >= k.deadline_ns and not self._is_held(k)
        ]
        for kill in expired:
            if kill.exit is None and kill.proc_exit is None and kill.expects_exit:
                kill.exit_timed_out = True
            self._release(kill)
        done.extend(expired)
        for tid, ctx in list(self._contexts.items()):
            if now_ns - ctx.last_ktime_ns > self.exit_wait_ns:
                del self._contexts[tid]
        while self._stops:
            tgid, signals = next(iter(self._stops.items()))
            if now_ns - signals[-1][0].ktime_ns <= STOP_KEEP_NS:
                break
            self._take_stop(tgid)
            self.stats.stops_forgotten += 1
        return done

    def stopping(self) -> list[Evidence]:
        """What capture read for the first stop signal of each open stop: the
        processes a runtime has asked to stop that have neither exited nor been
        killed yet."""
        return [signals[0][1] for signals in self._stops.values()]

    def drain(self) -> list[Kill]:
        """Releases everything still pending, for shutdown."""
        for kill in list(self._held.values()):
            self._classify_held(kill)
        self._held.clear()
        done = list(self._pending.values())
        for kill in done:
            self._release(kill)
        return done

    def pending_count(self) -> int:
        return len(self._pending)

    def oldest_pending_ktime(self) -> int | None:
        """When the oldest kill not yet released began: its records, and every
        later one, are what a restarted agent would have to read again."""
        return min((k.ktime_ns for k in self._pending.values()), default=None)

    def idle(self) -> bool:
        """Nothing waits for a deadline: tick() has nothing to do until a record comes."""
        return not self._pending and not self._held

    def on_proc_exit(self, proc_exit: ProcExit) -> None:
        """A victim's exit seen on the proc connector. The kernel's own exit record
        usually follows within microseconds and is preferred; this one stands in
        if it does not come within the window."""
        for kill in self._pending.values():
            if kill.exit is None and kill.victim_tgid == proc_exit.tgid:
                kill.proc_exit = proc_exit
                kill.deadline_ns = min(kill.deadline_ns, proc_exit.ktime_ns + self.window_ns)

    # -- records ---------------------------------------------------------------

    def _on_stop_signal(self, rec: SignalRecord, evidence: Evidence) -> list[Kill]:
        if rec.target is None:
            return []  # the kernel side follows stops only with the target's tgid
        tgid = rec.target.tgid
        pending = self._killed(tgid, rec.ktime_ns)
        if pending is not None and pending.exit is None and id(pending) in self._pending:
            # Already killed, not yet gone (a runtime repeats its stop): part of it.
            pending.stop_signals.append((rec, evidence))
            return []
        signals = self._stops.pop(tgid, [])
        signals.append((rec, evidence))
        self._stops[tgid] = signals  # moved last: the newest stop
        if rec.result == 0:
            self._stop_keys[(rec.ktime_ns, rec.sender.tgid)] = tgid
        while len(self._stops) > self.max_pending:
            self._take_stop(next(iter(self._stops)))
            self.stats.stops_forgotten += 1
        return []

    def _take_stop(self, tgid: int | None) -> StopSignals:
        """The open stop of a process, which a kill or an exit now ends."""
        if tgid is None:
            return []
        signals = self._stops.pop(tgid, [])
        for rec, _ in signals:
            self._stop_keys.pop((rec.ktime_ns, rec.sender.tgid), None)
        return signals

    def _stopped_exit(self, rec: ExitRecord, evidence: Evidence) -> list[Kill]:
        """An exit that ends a stop with no SIGKILL: the process exited on the
        stop signal the kernel keyed its exit to (the first of its stop)."""
        key = (rec.kill_ktime_ns, rec.kill_sender_tgid)
        signals = self._take_stop(self._stop_keys.get(key))
        first = next(((r, e) for r, e in signals if (r.ktime_ns, r.sender.tgid) == key), None)
        if first is None:
            self.stats.unmatched_exit += 1
            return []
        signal, signal_evidence = first
        return [
            Kill(
                kind="signal",
                ktime_ns=signal.ktime_ns,
                victim_tid=signal.target_tid,
                victim_comm=signal.target_comm,
                deadline_ns=rec.ktime_ns,
                signal=signal,
                stop_signals=signals,
                exit=rec,
                signal_evidence=signal_evidence,
                exit_evidence=evidence,
            )
        ]

    def _on_signal(self, rec: SignalRecord, evidence: Evidence) -> list[Kill]:
        if rec.stop:
            return self._on_stop_signal(rec, evidence)
        ctx = self._live_context(rec.sender.tid, rec.ktime_ns)
        is_kernel_kill = rec.sig == SIGKILL and rec.code == SI_KERNEL
        if is_kernel_kill and ctx is not None and self._context_has_victim(ctx, rec.target_tid):
            # The OOM killer re-sends SIGKILL to a victim it already killed
            # (oom.group scan includes the chosen victim): not a new kill.
            self.stats.duplicates += 1
            ctx.last_ktime_ns = rec.ktime_ns
            return []
        if is_kernel_kill and rec.result != 0 and self._already_killed(rec):
            self.stats.duplicates += 1
            return []
        kill = Kill(
            kind="signal",
            ktime_ns=rec.ktime_ns,
            victim_tid=rec.target_tid,
            victim_comm=rec.target_comm,
            deadline_ns=rec.ktime_ns + self.exit_wait_ns,
            signal=rec,
            expects_exit=rec.result == 0,
            signal_evidence=evidence,
            stop_signals=self._take_stop(rec.target.tgid if rec.target else None),
        )
        if not kill.expects_exit:
            kill.deadline_ns = rec.ktime_ns + self.window_ns
        else:
            self._by_signal[(rec.ktime_ns, rec.sender.tgid)] = kill
        evicted = self._add(kill)
        if rec.sig != SIGKILL and rec.target is not None and is_runtime(rec.sender.comm):
            # A traced signal (--signals) that a runtime sends is a stop signal too:
            # the SIGKILL that may follow carries it. Its own kill is reported as well.
            self._stops.setdefault(rec.target.tgid, []).append((rec, evidence))
        if is_kernel_kill:
            # Either a victim (its mark_victim follows), a process sharing the
            # victim's mm, or a kernel force_sig(): decided within the window.
            self._held[rec.target_tid] = kill
            if ctx is not None and ctx.alive:
                kill.run = ctx
                ctx.last_ktime_ns = rec.ktime_ns
        return evicted

    def _on_mark(self, rec: MarkVictimRecord, evidence: Evidence) -> list[Kill]:
        if rec.victim_tid not in self._held:
            prior = self._killed(rec.victim_tid, rec.ktime_ns)
            if (
                prior is not None
                and prior.kind == "oom_kill"
                and prior.context is not None
                and prior.context.trigger.tid == rec.trigger.tid
            ):
                # The scan reached a member its pid namespace's end had already
                # taken, still exiting: the same death, already reported.
                self.stats.duplicates += 1
                return []
        held = self._held.get(rec.victim_tid)
        group_memcg = _group_memcg(held)
        ctx = self._live_context(rec.trigger.tid, rec.ktime_ns, group_memcg)
        if ctx is None or (
            ctx.kprobe is None
            and ctx.victims > 0
            and ctx.closed
            and rec.ktime_ns - ctx.last_ktime_ns > CLOSED_GAP_NS
            # A trigger killed in this run bypasses the memcg charge from then
            # on (a fatal signal is pending), so it cannot start another run:
            # however slow the machine, its later marks are group members.
            and not self._context_has_victim(ctx, rec.trigger.tgid)
            # The same for a memory.oom.group memcg this run killed in: the scan
            # takes all of it, each member's report printed before the next (a
            # serial console makes that milliseconds).
            and (group_memcg is None or group_memcg not in ctx.group_memcgs)
            and (held is None or held.run is not ctx)
        ):
            ctx = self._open_context(rec.trigger, rec.ktime_ns, kprobe=None, evidence=evidence)
        if group_memcg is not None:
            ctx.group_memcgs.add(group_memcg)
        group_member = ctx.victims > 0
        ctx.last_ktime_ns = rec.ktime_ns
        ctx.victims += 1
        ctx.alive.add(rec.victim_tid)
        ctx.closed = False
        kill = self._held.pop(rec.victim_tid, None) or self._decided_too_early(rec)
        evicted: list[Kill] = []
        if kill is None:
            # No SIGKILL first: task_will_free_mem() found the victim already
            # exiting, or the signal record was lost. No deliver will follow.
            kill = Kill(
                kind="oom_kill",
                ktime_ns=rec.ktime_ns,
                victim_tid=rec.victim_tid,
                victim_comm=rec.victim_comm or "",
                # Without a kernel pending entry no deliver or exit record comes.
                deadline_ns=rec.ktime_ns + self.window_ns,
                expects_exit=False,
            )
            evicted = self._add(kill)
        kill.kind = "oom_kill"
        kill.mark = rec
        kill.mark_evidence = evidence
        kill.context = ctx
        kill.group_kill = group_member
        kill.group_kill_via = "oom_killer" if group_member else None
        if rec.victim_comm:
            kill.victim_comm = rec.victim_comm
        return evicted

    def _on_deliver(self, rec: DeliverRecord, evidence: Evidence) -> list[Kill]:
        kill = self._by_signal.get((rec.kill_ktime_ns, rec.kill_sender_tgid))
        if kill is None:
            self.stats.unmatched_deliver += 1
            return []
        kill.deliver = rec
        kill.deliver_evidence = evidence
        self.watched_tgids.add(rec.victim.tgid)
        # A fatal signal turns into SIGKILL for every thread of the group, and a
        # fault (SIGSEGV) left at its default action ends the process too; a
        # handled, ignored or stopping signal does not.
        if not _ends_process(rec) and kill.kind == "signal":
            del self._by_signal[(rec.kill_ktime_ns, rec.kill_sender_tgid)]
            if not self._is_held(kill):
                self._release(kill)
                return [kill]
        return []

    def _on_exit(self, rec: ExitRecord, evidence: Evidence) -> list[Kill]:
        kill = self._by_signal.pop((rec.kill_ktime_ns, rec.kill_sender_tgid), None)
        if kill is None:
            return self._stopped_exit(rec, evidence)
        kill.exit = rec
        kill.exit_evidence = evidence
        # A process gone ends its stop, if one is open (a traced stop signal it died of).
        ended = self._take_stop(rec.victim.tgid)
        if not kill.stop_signals:
            kill.stop_signals = ended
        if kill.context is not None:
            kill.context.alive.discard(kill.victim_tid)
            kill.context.closed = not kill.context.alive
        if self._is_held(kill):
            return []
        self._release(kill)
        return [kill]

    # -- contexts --------------------------------------------------------------

    def _open_context(
        self, trigger: Task, ktime_ns: int, *, kprobe: OomKillRecord | None, evidence: Evidence
    ) -> OomContext:
        ctx = OomContext(
            id=f"{trigger.tgid}-{ktime_ns}",
            trigger=trigger,
            first_ktime_ns=ktime_ns,
            last_ktime_ns=ktime_ns,
            kprobe=kprobe,
            evidence=evidence,
        )
        self._contexts[trigger.tid] = ctx
        return ctx

    def _live_context(
        self, trigger_tid: int, ktime_ns: int, group_memcg: int | None = None
    ) -> OomContext | None:
        ctx = self._contexts.get(trigger_tid)
        if ctx is None:
            return None
        # oom_kill_process() prints a report before it kills the victim the kprobe
        # named, and a line per member before the next member of a memory.oom.group:
        # on a serial console that outlasts the window. A kprobe context is exact
        # (the trigger's next run brings its own record), and so is a run through a
        # memory.oom.group memcg it already killed in.
        exact = ctx.kprobe is not None or (
            group_memcg is not None and group_memcg in ctx.group_memcgs
        )
        if ktime_ns - ctx.last_ktime_ns > (self.exit_wait_ns if exact else self.window_ns):
            return None
        return ctx

    def _decided_too_early(self, rec: MarkVictimRecord) -> Kill | None:
        """The victim's SIGKILL, when tick() (on wall time) called it a plain signal
        because the agent read its mark more than the window after it was written."""
        for kill in reversed(self._pending.values()):
            sig = kill.signal
            if (
                kill.kind == "signal"
                and sig is not None
                and sig.sig == SIGKILL
                and sig.code == SI_KERNEL
                and kill.victim_tid == rec.victim_tid
                and sig.sender.tid == rec.trigger.tid
                and 0 <= rec.ktime_ns - sig.ktime_ns <= self.window_ns
            ):
                return kill
        return None

    def _already_killed(self, rec: SignalRecord) -> bool:
        """The target is a victim this holds, or released within the exit wait."""
        ids = {rec.target_tid} if rec.target is None else {rec.target_tid, rec.target.tgid}
        return any(self._killed(i, rec.ktime_ns) is not None for i in ids)

    def _killed(self, tid: int, now_ns: int) -> Kill | None:
        """The kill of this tid or tgid, pending or released within the exit wait."""
        for kill in self._pending.values():
            if tid in (kill.victim_tid, kill.victim_tgid):
                return kill
        released = self._released.get(tid)
        if released is not None and now_ns - released.ktime_ns > self.exit_wait_ns:
            return None
        return released

    def _context_has_victim(self, ctx: OomContext, tid: int) -> bool:
        return any(k.context is ctx and k.victim_tid == tid for k in self._pending.values())

    def _classify_held(self, kill: Kill) -> None:
        if kill.kind == "oom_kill":
            return
        assert kill.signal is not None
        ctx = self._contexts.get(kill.signal.sender.tid)
        if (
            ctx is not None
            and ctx.victims > 0
            and 0 <= kill.ktime_ns - ctx.last_ktime_ns <= self.window_ns
        ):
            # SIGKILL from the OOM killer to a process sharing the victim's mm.
            kill.kind = "oom_kill"
            kill.context = ctx
            kill.group_kill = True
            kill.group_kill_via = "oom_killer"
            ctx.last_ktime_ns = kill.ktime_ns
            return
        # zap_pid_ns_processes(): the sender is a pid namespace's init that this OOM
        # killed, and the target was not yet killed by the OOM killer's own scan.
        init = self._killed(kill.signal.sender.tgid, kill.ktime_ns)
        if init is not None and init.kind == "oom_kill" and init.context is not None:
            kill.kind = "oom_kill"
            kill.context = init.context
            kill.group_kill = True
            kill.group_kill_via = "pid_namespace_exit"

    @staticmethod
    def _complete(kill: Kill) -> bool:
        if kill.exit is not None:
            return True
        return (
            kill.deliver is not None and not _ends_process(kill.deliver) and kill.kind == "signal"
        )

    def _is_held(self, kill: Kill) -> bool:
        return self._held.get(kill.victim_tid) is kill

    # -- bookkeeping -----------------------------------------------------------

    def _add(self, kill: Kill) -> list[Kill]:
        self._pending[id(kill)] = kill
        if kill.victim_tgid is not None:
            self.watched_tgids.add(kill.victim_tgid)
        evicted: list[Kill] = []
        while len(self._pending) > self.max_pending:
            oldest = next(iter(self._pending.values()))
            self.stats.evicted += 1
            self._held.pop(oldest.victim_tid, None)
            self._release(oldest)
            evicted.append(oldest)
        return evicted

    def _release(self, kill: Kill) -> None:
        self._pending.pop(id(kill), None)
        if kill.kind == "oom_kill" or (kill.signal is not None and kill.signal.sig == SIGKILL):
            while len(self._released) >= 2 * self.max_pending:
                del self._released[next(iter(self._released))]
            self._released[kill.victim_tid] = kill
            if kill.victim_tgid is not None:
                self._released[kill.victim_tgid] = kill
        if kill.victim_tgid is not None:
            self.watched_tgids.discard(kill.victim_tgid)
        if kill.signal is not None:
            key = (kill.signal.ktime_ns, kill.signal.sender.tgid)
            if self._by_signal.get(key) is kill:
                del self._by_signal[key]


SIG_DFL: Final = 0


def _group_memcg(kill: Kill | None) -> int | None:
    """The memcg id of a kernel SIGKILL's target when the kernel said it has
    memory.oom.group set."""
    if kill is None or kill.signal is None or kill.signal.target is None:
        return None
    target = kill.signal.target
    return target.memcg_id if target.memcg_oom_group and target.memcg_id else None


def _ends_process(rec: DeliverRecord) -> bool:
    return rec.sig == SIGKILL or (rec.sa_handler == SIG_DFL and fatal_by_default(rec.sig))
