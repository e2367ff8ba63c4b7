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
between them, closed early when one of its victims exits (a new OOM in the same
scope cannot choose a victim before the previous one is gone or reaped), unless
the trigger itself is one of them.
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
from oomtrace.sigdefs import SI_KERNEL, SIGKILL, fatal_by_default

DEFAULT_WINDOW_NS: Final = 50_000_000
DEFAULT_EXIT_WAIT_NS: Final = 5_000_000_000
# Members of one memory.oom.group kill are marked microseconds apart; a victim
# that exited before a mark at least this much later ended the earlier run.
CLOSED_GAP_NS: Final = 2_000_000


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
    closed: bool = False


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
        return done

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

    def _on_signal(self, rec: SignalRecord, evidence: Evidence) -> list[Kill]:
        ctx = self._live_context(rec.sender.tid, rec.ktime_ns)
        is_kernel_kill = rec.sig == SIGKILL and rec.code == SI_KERNEL
        if is_kernel_kill and ctx is not None and self._context_has_victim(ctx, rec.target_tid):
            # The OOM killer re-sends SIGKILL to a victim it already killed
            # (oom.group scan includes the chosen victim): not a new kill.
            self.stats.duplicates += 1
            ctx.last_ktime_ns = rec.ktime_ns
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
        )
        if not kill.expects_exit:
            kill.deadline_ns = rec.ktime_ns + self.window_ns
        else:
            self._by_signal[(rec.ktime_ns, rec.sender.tgid)] = kill
        evicted = self._add(kill)
        if is_kernel_kill:
            # Either a victim (its mark_victim follows), a process sharing the
            # victim's mm, or a kernel force_sig(): decided within the window.
            self._held[rec.target_tid] = kill
        return evicted

    def _on_mark(self, rec: MarkVictimRecord, evidence: Evidence) -> list[Kill]:
        ctx = self._live_context(rec.trigger.tid, rec.ktime_ns)
        if ctx is None or (
            ctx.kprobe is None
            and ctx.victims > 0
            and ctx.closed
            and rec.ktime_ns - ctx.last_ktime_ns > CLOSED_GAP_NS
            # A trigger killed in this run bypasses the memcg charge from then
            # on (a fatal signal is pending), so it cannot start another run:
            # however slow the machine, its later marks are group members.
            and not self._context_has_victim(ctx, rec.trigger.tgid)
        ):
            ctx = self._open_context(rec.trigger, rec.ktime_ns, kprobe=None, evidence=evidence)
        group_member = ctx.victims > 0
        ctx.last_ktime_ns = rec.ktime_ns
        ctx.victims += 1
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
            self.stats.unmatched_exit += 1
            return []
        kill.exit = rec
        kill.exit_evidence = evidence
        if kill.context is not None:
            kill.context.closed = True
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

    def _live_context(self, trigger_tid: int, ktime_ns: int) -> OomContext | None:
        ctx = self._contexts.get(trigger_tid)
        if ctx is None:
            return None
        # oom_kill_process() prints the OOM report (dump_header) before it kills
        # the victim the kprobe named; on a slow console that outlasts the window,
        # and the trigger cannot run another OOM before it is done.
        opening = ctx.kprobe is not None and ctx.victims == 0
        if ktime_ns - ctx.last_ktime_ns > (self.exit_wait_ns if opening else self.window_ns):
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
            ctx.last_ktime_ns = kill.ktime_ns

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
        if kill.victim_tgid is not None:
            self.watched_tgids.discard(kill.victim_tgid)
        if kill.signal is not None:
            key = (kill.signal.ktime_ns, kill.signal.sender.tgid)
            if self._by_signal.get(key) is kill:
                del self._by_signal[key]


SIG_DFL: Final = 0


def _ends_process(rec: DeliverRecord) -> bool:
    return rec.sig == SIGKILL or (rec.sa_handler == SIG_DFL and fatal_by_default(rec.sig))
