"""oomtrace.correlate: recorded kernel scenarios replayed, and synthetic ones.

The recorded records (tests/data, see record.py there) are what a real 6.18
kernel wrote; the synthetic sequences follow mm/oom_kill.c for cases that are
hard to provoke on demand (memory.oom.group, mm sharers, repeated OOMs).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from oomtrace.correlate import (
    DEFAULT_EXIT_WAIT_NS,
    DEFAULT_WINDOW_NS,
    Correlator,
    Kill,
)
from oomtrace.kernel.records import (
    TASK_MEMCG_OOM_GROUP,
    CgroupRecord,
    DeliverRecord,
    ExitRecord,
    MarkVictimRecord,
    OomKillRecord,
    Record,
    RecordDecoder,
    SignalRecord,
    Task,
    VictimMemory,
)
from oomtrace.sigdefs import SI_KERNEL, SI_USER, SIGKILL

DATA = Path(__file__).resolve().parent.parent / "data" / "records-6.18.jsonl"
SIGTERM = 15
MS = 1_000_000


def _recorded() -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    decoder = RecordDecoder()
    for line in DATA.read_text().splitlines():
        entry = json.loads(line)
        out[entry["scenario"]].append(decoder.decode(bytes.fromhex(entry["hex"])))
    return dict(out)


RECORDED = _recorded()


def _replay(recs: list[Record], corr: Correlator | None = None) -> tuple[Correlator, list[Kill]]:
    """Feeds the records, then lets time pass beyond every window and wait."""
    corr = corr or Correlator()
    kills: list[Kill] = []
    for rec in recs:
        kills += corr.feed(rec)
    last = max(r.ktime_ns for r in recs)
    kills += corr.tick(last + corr.window_ns + 1)
    kills += corr.tick(last + corr.exit_wait_ns + corr.window_ns + 1)
    assert corr.pending_count() == 0
    assert corr.drain() == []
    return corr, kills


# -- recorded scenarios ----------------------------------------------------------


def _only(recs: list[Record], kind: type[Record]) -> Record:
    found = [r for r in recs if isinstance(r, kind)]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("scenario", ["oom_hog", "holder_allocator"])
def test_recorded_oom_gives_one_oom_kill_per_victim(scenario: str) -> None:
    recs = RECORDED[scenario]
    corr, kills = _replay(recs)
    mark = _only(recs, MarkVictimRecord)
    sig = _only(recs, SignalRecord)
    assert isinstance(mark, MarkVictimRecord) and isinstance(sig, SignalRecord)

    assert len(kills) == 1
    kill = kills[0]
    assert kill.kind == "oom_kill"
    assert kill.group_kill is False
    assert kill.victim_tid == mark.victim_tid
    assert kill.victim_comm == mark.victim_comm
    assert kill.mark is mark and kill.signal is sig
    # A SIGKILL has no deliver record: its exit completes the kill.
    assert kill.deliver is None and kill.exit is not None
    assert kill.exit_timed_out is False
    assert kill.victim_tgid == mark.victim_tid
    ctx = kill.context
    assert ctx is not None
    assert ctx.trigger == mark.trigger
    assert ctx.id == f"{mark.trigger.tgid}-{mark.ktime_ns}"
    assert ctx.victims == 1
    assert ctx.closed is True  # its victim exited
    assert ctx.kprobe is None
    assert corr.stats.duplicates == corr.stats.evicted == 0
    assert corr.stats.unmatched_deliver == corr.stats.unmatched_exit == 0


def test_recorded_holder_is_victim_and_allocator_is_trigger() -> None:
    recs = RECORDED["holder_allocator"]
    _, [kill] = _replay(recs)
    ex = _only(recs, ExitRecord)
    assert isinstance(ex, ExitRecord)
    assert kill.context is not None and kill.mark is not None
    holder = kill.victim
    allocator = kill.context.trigger
    assert holder is not None and holder == ex.victim
    assert holder.oom_score_adj == 1000
    assert kill.mark.victim_oom_score_adj == 1000
    assert allocator.oom_score_adj == 0
    assert allocator.tgid != holder.tgid
    assert kill.signal is not None and kill.signal.sender == allocator
    assert allocator.memcg_id == holder.memcg_id


def test_recorded_kill_9_is_one_signal_kill_with_its_exit() -> None:
    recs = RECORDED["sigkill"]
    _, kills = _replay(recs)
    assert len(kills) == 1
    kill = kills[0]
    assert kill.kind == "signal"
    assert kill.context is None and kill.mark is None and kill.group_kill is False
    assert kill.signal is not None and kill.signal.code == SI_USER
    assert kill.signal.sender.comm == "kill"
    assert kill.victim_comm == "sleep"
    assert kill.deliver is None
    assert kill.exit is not None and kill.exit.exit_code == SIGKILL
    assert kill.exit_timed_out is False


def test_recorded_kill_9_completes_on_its_exit_record() -> None:
    recs = RECORDED["sigkill"]
    corr = Correlator()
    returned = [corr.feed(r) for r in recs]
    assert returned[:-1] == [[]]
    assert [k.victim_comm for k in returned[-1]] == ["sleep"]


def test_recorded_sigterm_is_one_signal_kill() -> None:
    recs = RECORDED["sigterm"]
    _, kills = _replay(recs)
    assert len(kills) == 1
    kill = kills[0]
    assert kill.kind == "signal"
    assert kill.signal is not None and kill.signal.sig == SIGTERM
    # Fatal, so delivered as SIGKILL: the kill waits for the exit.
    assert kill.deliver is not None and kill.deliver.sig == SIGKILL
    assert kill.exit is not None and kill.exit.exit_code == SIGTERM


def test_recorded_scenarios_in_one_stream() -> None:
    """The agent sees everything in one stream: six kills (two of them a runtime's
    stop), in kill order."""
    recs = [r for scenario in RECORDED.values() for r in scenario]
    assert any(isinstance(r, CgroupRecord) for r in recs)
    _, kills = _replay(recs)
    assert [k.kind for k in kills] == ["oom_kill", "oom_kill", *["signal"] * 4]
    assert [k.ktime_ns for k in kills] == sorted(k.ktime_ns for k in kills)


# -- synthetic records -----------------------------------------------------------


def task(tid: int, *, tgid: int | None = None, comm: str = "app", adj: int = 0) -> Task:
    return Task(
        tid=tid,
        tgid=tgid if tgid is not None else tid,
        ppid=1,
        uid=0,
        start_ns=tid * 1000,
        cgroup_id=7,
        memcg_id=42,
        oom_score_adj=adj,
        flags=0,
        comm=comm,
        parent_comm="init",
    )


def signal(
    t: int,
    sender: Task,
    target: int,
    *,
    sig: int = SIGKILL,
    code: int = SI_KERNEL,
    result: int = 0,
    comm: str = "app",
) -> SignalRecord:
    return SignalRecord(
        ktime_ns=t,
        cpu=0,
        sender=sender,
        target_tid=target,
        target_comm=comm,
        sig=sig,
        errno=0,
        code=code,
        group=True,
        result=result,
    )


def mark(t: int, trigger: Task, victim: int, *, comm: str = "app") -> MarkVictimRecord:
    return MarkVictimRecord(
        ktime_ns=t,
        cpu=0,
        trigger=trigger,
        victim_tid=victim,
        victim_comm=comm,
        victim_uid=0,
        victim_oom_score_adj=0,
        victim_memory=VictimMemory(
            total_vm_kb=1000, anon_rss_kb=800, file_rss_kb=100, shmem_rss_kb=0, pgtables_kb=4
        ),
    )


def deliver(
    t: int, sig: SignalRecord, *, delivered: int = SIGKILL, handler: int = 0
) -> DeliverRecord:
    return DeliverRecord(
        ktime_ns=t,
        cpu=0,
        victim=task(sig.target_tid, comm=sig.target_comm),
        kill_ktime_ns=sig.ktime_ns,
        kill_sender_tgid=sig.sender.tgid,
        kill_sig=sig.sig,
        sig=delivered,
        code=SI_USER,
        sa_handler=handler,
    )


def exit_(t: int, sig: SignalRecord) -> ExitRecord:
    return ExitRecord(
        ktime_ns=t,
        cpu=0,
        victim=task(sig.target_tid, comm=sig.target_comm),
        kill_ktime_ns=sig.ktime_ns,
        kill_sender_tgid=sig.sender.tgid,
        kill_sig=sig.sig,
        exit_code=sig.sig,
        group_dead=True,
    )


@dataclass
class Feeder:
    """Feeds records into a Correlator and keeps every kill it returned."""

    corr: Correlator
    kills: list[Kill]

    def __call__(self, *recs: Record) -> list[Kill]:
        out: list[Kill] = []
        for rec in recs:
            out += self.corr.feed(rec)
        self.kills += out
        return out

    def tick(self, now: int) -> list[Kill]:
        out = self.corr.tick(now)
        self.kills += out
        return out


def feeder(**kwargs: int) -> Feeder:
    return Feeder(Correlator(**kwargs), [])


T0 = 10_000 * MS
TRIGGER = task(100, comm="alloc")


def test_oom_group_gives_one_oom_kill_per_member_in_one_context() -> None:
    """The chosen victim and 2 memory.oom.group members: SIGKILL then mark for each,
    from one trigger, within the window."""
    f = feeder()
    sigs = [signal(T0 + i * MS, TRIGGER, victim) for i, victim in enumerate((201, 202, 203))]
    for i, sig in enumerate(sigs):
        assert f(sig, mark(sig.ktime_ns + 10_000 + i, TRIGGER, sig.target_tid)) == []
    for sig in sigs:
        f(deliver(T0 + 5 * MS, sig))
    for i, sig in enumerate(sigs):
        assert [k.victim_tid for k in f(exit_(T0 + 6 * MS + i, sig))] == [sig.target_tid]

    assert [k.kind for k in f.kills] == ["oom_kill"] * 3
    assert [k.group_kill for k in f.kills] == [False, True, True]
    contexts = {id(k.context) for k in f.kills}
    assert len(contexts) == 1
    ctx = f.kills[0].context
    assert ctx is not None
    assert {k.context.id for k in f.kills if k.context} == {f"100-{sigs[0].ktime_ns + 10_000}"}
    assert ctx.victims == 3
    assert ctx.trigger == TRIGGER
    assert all(k.exit is not None and not k.exit_timed_out for k in f.kills)
    assert f.corr.pending_count() == 0


def test_oom_group_stays_one_context_when_a_member_exits_mid_scan() -> None:
    """On a slow machine a member exits before the scan reaches the next one,
    which more than CLOSED_GAP later looks like a new run; but the trigger was
    killed in this run, so it cannot have started another."""
    f = feeder()
    hog = task(201, comm="hog")
    first = signal(T0, hog, 201, comm="hog")
    f(first, mark(T0 + 10_000, hog, 201, comm="hog"))
    second = signal(T0 + 1 * MS, hog, 202)
    f(second, mark(T0 + 1 * MS + 10_000, hog, 202), deliver(T0 + 2 * MS, second))
    f(exit_(T0 + 3 * MS, second))
    third = signal(T0 + 10 * MS, hog, 203)
    f(third, mark(T0 + 10 * MS + 10_000, hog, 203))
    for sig in (first, third):
        f(deliver(T0 + 11 * MS, sig), exit_(T0 + 12 * MS, sig))

    assert sorted((k.victim_tid, k.group_kill) for k in f.kills) == [
        (201, False),
        (202, True),
        (203, True),
    ]
    assert len({id(k.context) for k in f.kills}) == 1


def test_kprobe_context_waits_for_a_slow_oom_report() -> None:
    """The kernel prints its OOM report between oom_kill_process() and the kill;
    on a slow serial console that takes longer than the window."""
    f = feeder()
    kprobe = OomKillRecord(
        ktime_ns=T0,
        cpu=0,
        trigger=TRIGGER,
        victim_tid=201,
        victim_tgid=201,
        victim_comm="hog",
        oom_memcg_id=42,
        totalpages=12800,
        chosen_points=12000,
        gfp_mask=0xCC0,
        order=0,
        constraint=1,
        oom_memcg_usage_pages=12800,
    )
    late = T0 + 300 * MS
    sig = signal(late, TRIGGER, 201, comm="hog")
    f(kprobe, sig, mark(late + 10_000, TRIGGER, 201, comm="hog"))
    f(deliver(late + MS, sig), exit_(late + 2 * MS, sig))

    [kill] = f.kills
    assert kill.kind == "oom_kill"
    assert kill.context is not None and kill.context.kprobe is kprobe

    # Each memory.oom.group member's report line is printed before the next
    # member's kill: the run is the kprobe's until the trigger's next record.
    member = signal(late + 300 * MS, TRIGGER, 202)
    f(member, mark(member.ktime_ns + 10_000, TRIGGER, 202))
    f(deliver(member.ktime_ns + MS, member), exit_(member.ktime_ns + 2 * MS, member))
    [_, joined] = f.kills
    assert joined.context is kill.context and joined.group_kill is True


def test_mm_sharer_is_a_group_kill_once_the_window_passes() -> None:
    """A process sharing the victim's mm gets SI_KERNEL SIGKILL right after the
    victim's mark, and no mark of its own."""
    f = feeder()
    victim_sig = signal(T0, TRIGGER, 201)
    sharer_sig = signal(T0 + 20_000, TRIGGER, 301, comm="sharer")
    f(victim_sig, mark(T0 + 10_000, TRIGGER, 201), sharer_sig)
    [victim_kill] = f(deliver(T0 + MS, victim_sig), exit_(T0 + 2 * MS, victim_sig))
    assert victim_kill.kind == "oom_kill" and victim_kill.group_kill is False

    # The sharer exits while it is still undecided: nothing is released yet.
    assert f(deliver(T0 + MS, sharer_sig), exit_(T0 + 2 * MS, sharer_sig)) == []
    assert f.tick(sharer_sig.ktime_ns + DEFAULT_WINDOW_NS) == []
    [sharer] = f.tick(sharer_sig.ktime_ns + DEFAULT_WINDOW_NS + 1)
    assert sharer.kind == "oom_kill"
    assert sharer.group_kill is True
    assert sharer.mark is None
    assert sharer.victim_tid == 301 and sharer.victim_comm == "sharer"
    assert sharer.context is victim_kill.context
    assert sharer.exit is not None and sharer.exit_timed_out is False
    assert f.corr.pending_count() == 0


def test_mm_sharer_still_running_completes_on_its_exit() -> None:
    f = feeder()
    victim_sig = signal(T0, TRIGGER, 201)
    sharer_sig = signal(T0 + 20_000, TRIGGER, 301)
    f(victim_sig, mark(T0 + 10_000, TRIGGER, 201), sharer_sig)
    assert f.tick(sharer_sig.ktime_ns + DEFAULT_WINDOW_NS + 1) == []
    [sharer] = f(deliver(T0 + 60 * MS, sharer_sig), exit_(T0 + 61 * MS, sharer_sig))
    assert sharer.kind == "oom_kill" and sharer.group_kill is True


def test_kernel_sigkill_without_a_mark_stays_a_signal_kill() -> None:
    """A kernel force_sig(SIGKILL) (no OOM context from this sender) is a signal."""
    f = feeder()
    sender = task(500, comm="kworker")
    sig = signal(T0, sender, 501)
    assert f(sig, deliver(T0 + MS, sig), exit_(T0 + 2 * MS, sig)) == []
    [kill] = f.tick(T0 + DEFAULT_WINDOW_NS + 1)
    assert kill.kind == "signal"
    assert kill.context is None and kill.mark is None and kill.group_kill is False
    assert kill.exit is not None


def test_kernel_sigkill_from_another_trigger_is_not_a_group_kill() -> None:
    f = feeder()
    f(signal(T0, TRIGGER, 201), mark(T0 + 10_000, TRIGGER, 201))
    stranger = signal(T0 + 20_000, task(600), 601)
    f(stranger, exit_(T0 + MS, stranger))
    kills = f.tick(T0 + DEFAULT_WINDOW_NS + MS)
    assert [(k.victim_tid, k.kind) for k in kills] == [(601, "signal")]


def test_duplicate_kernel_sigkill_in_one_context_is_dropped() -> None:
    """oom.group's scan includes the chosen victim: its SIGKILL comes again
    (ignored by the kernel, the group is already exiting)."""
    f = feeder()
    sig = signal(T0, TRIGGER, 201)
    again = signal(T0 + 30_000, TRIGGER, 201, result=1)
    assert f(sig, mark(T0 + 10_000, TRIGGER, 201), again) == []
    assert f.corr.stats.duplicates == 1
    assert f.corr.pending_count() == 1
    [kill] = f(deliver(T0 + MS, sig), exit_(T0 + 2 * MS, sig))
    assert kill.signal is sig and kill.group_kill is False
    assert f.tick(T0 + DEFAULT_EXIT_WAIT_NS * 2) == []
    assert f.corr.drain() == []
    assert len(f.kills) == 1


def test_namespace_teardown_sigkill_is_a_duplicate_or_joins_the_oom() -> None:
    """A group kill takes the container's init too; dying, it SIGKILLs what is left
    in its pid namespace (SI_KERNEL, from init). Members already exiting ignore it,
    before or after their exit record: no kill of their own. One still running
    takes it: that one is a kill."""
    f = feeder()
    sigs = [signal(T0 + i * 10_000, TRIGGER, victim) for i, victim in enumerate((201, 202))]
    for sig in sigs:
        f(sig, mark(sig.ktime_ns + 1_000, TRIGGER, sig.target_tid))
    [first] = f(deliver(T0 + MS, sigs[0]), exit_(T0 + 2 * MS, sigs[0]))
    init = task(202, comm="sh")
    teardown = [
        signal(T0 + 3 * MS, init, 201, result=1),  # already exited: a zombie
        signal(T0 + 3 * MS + 1, init, 203, result=1),  # pending below
        signal(T0 + 3 * MS + 2, init, 204),  # delivered: a kill of its own
    ]
    f(signal(T0 + 2 * MS, task(300), 203, code=0), *teardown)
    assert f.corr.stats.duplicates == 1 + 1
    kills = {k.victim_tid: k for k in f.tick(T0 + 3 * MS + DEFAULT_WINDOW_NS + MS)}
    kills |= {k.victim_tid: k for k in f.corr.drain()}
    assert sorted(kills) == [202, 203, 204]
    assert first.victim_tid == 201
    # 204 was not reached by the OOM killer's scan: the init's end took it, so it
    # belongs to the OOM, a group kill via the pid namespace's exit.
    taken = kills[204]
    assert (taken.kind, taken.group_kill, taken.group_kill_via) == (
        "oom_kill",
        True,
        "pid_namespace_exit",
    )
    assert taken.context is first.context
    assert (kills[202].group_kill_via, kills[203].kind) == ("oom_killer", "signal")


def test_unqueued_kernel_sigkill_to_a_process_never_killed_is_reported() -> None:
    f = feeder()
    f(signal(T0, task(1, comm="init"), 401, result=1))
    [kill] = f.tick(T0 + DEFAULT_WINDOW_NS + MS)
    assert (kill.victim_tid, kill.kind) == (401, "signal")
    assert f.corr.stats.duplicates == 0


@pytest.mark.parametrize("oom_group", [True, False])
def test_slow_oom_group_scan_stays_one_context(oom_group: bool) -> None:
    """A serial console prints each member's report before the next member is
    killed: milliseconds apart, past the window, and the victims so far may be
    gone meanwhile. When the kernel said the members' memcg has memory.oom.group
    set, the run is one; without that word, a mark after every victim's exit
    starts a new run, as before."""
    f = feeder()
    flags = TASK_MEMCG_OOM_GROUP if oom_group else 0

    def kernel_kill(t: int, victim: int) -> SignalRecord:
        return replace(signal(t, TRIGGER, victim), target=replace(task(victim), flags=flags))

    chosen = kernel_kill(T0, 201)
    f(chosen, mark(T0 + 10_000, TRIGGER, 201))
    f(exit_(T0 + 3 * MS, chosen))  # the victim is gone before the scan goes on
    member = kernel_kill(T0 + 120 * MS, 202)
    f(member, mark(T0 + 120 * MS + 10_000, TRIGGER, 202), exit_(T0 + 121 * MS, member))
    f.tick(T0 + 130 * MS)
    kills = {k.victim_tid: k for k in f.kills}
    assert sorted(kills) == [201, 202]
    assert (kills[202].context is kills[201].context) is oom_group
    assert kills[202].group_kill is oom_group


def test_member_signalled_while_a_victim_lived_stays_in_the_run() -> None:
    """The member's SIGKILL came while the chosen victim still lived, so no new
    run could have chosen it; its mark came late (the trigger was preempted), after
    every victim marked so far had exited."""
    f = feeder()
    chosen, first, late = (
        signal(T0 + i * MS, TRIGGER, v) for i, v in ((0, 201), (1, 202), (8, 203))
    )
    f(chosen, mark(T0 + 10_000, TRIGGER, 201))
    f(first, mark(T0 + MS + 10_000, TRIGGER, 202), exit_(T0 + 5 * MS, first))
    f(late, exit_(T0 + 20 * MS, chosen))
    f(mark(T0 + 38 * MS, TRIGGER, 203), exit_(T0 + 39 * MS, late))
    kills = {k.victim_tid: k for k in f.kills}
    assert sorted(kills) == [201, 202, 203]
    assert {id(k.context) for k in kills.values()} == {id(kills[201].context)}
    assert [kills[t].group_kill for t in (201, 202, 203)] == [False, True, True]


def test_scan_reaching_a_member_the_namespace_took_is_a_duplicate() -> None:
    """The pid namespace's end took a member; the OOM killer's scan reaches it later,
    still exiting, and marks it with no SIGKILL of its own: no second kill."""
    f = feeder()
    chosen = signal(T0, TRIGGER, 201)
    f(chosen, mark(T0 + 10_000, TRIGGER, 201), exit_(T0 + MS, chosen))
    taken = signal(T0 + 2 * MS, task(201, comm="sh"), 203)
    f(taken, exit_(T0 + 3 * MS, taken))
    f.tick(T0 + 2 * MS + DEFAULT_WINDOW_NS + MS)
    assert [(k.victim_tid, k.group_kill_via) for k in f.kills] == [
        (201, None),
        (203, "pid_namespace_exit"),
    ]
    assert f(mark(T0 + 2 * MS + DEFAULT_WINDOW_NS + 2 * MS, TRIGGER, 203)) == []
    assert f.corr.drain() == []
    assert f.corr.stats.duplicates == 1


def test_same_tid_signalled_again_outside_the_context_is_a_new_kill() -> None:
    f = feeder()
    f(signal(T0, TRIGGER, 201), mark(T0 + 10_000, TRIGGER, 201))
    later = signal(T0 + DEFAULT_WINDOW_NS + MS, TRIGGER, 201)
    f(later)
    assert f.corr.stats.duplicates == 0
    assert f.corr.pending_count() == 2


def test_two_ooms_from_one_trigger_split_at_the_first_victims_exit() -> None:
    f = feeder()
    first = signal(T0, TRIGGER, 201)
    second = signal(T0 + 3 * MS, TRIGGER, 202)  # well within the window
    f(first, mark(T0 + 10_000, TRIGGER, 201), deliver(T0 + MS, first))
    f(exit_(T0 + 2 * MS, first))
    f(second, mark(second.ktime_ns + 10_000, TRIGGER, 202), deliver(T0 + 4 * MS, second))
    f(exit_(T0 + 5 * MS, second))
    assert [k.victim_tid for k in f.kills] == [201, 202]
    assert [k.kind for k in f.kills] == ["oom_kill", "oom_kill"]
    assert [k.group_kill for k in f.kills] == [False, False]
    a, b = (k.context for k in f.kills)
    assert a is not None and b is not None and a is not b
    assert a.id != b.id
    assert a.id == f"100-{T0 + 10_000}"
    assert b.id == f"100-{second.ktime_ns + 10_000}"
    assert a.victims == b.victims == 1


def test_signal_kill_without_exit_times_out() -> None:
    f = feeder(exit_wait_ns=1000 * MS)
    sig = signal(T0, task(700, comm="kubelet"), 701, code=SI_USER)
    f(sig, deliver(T0 + MS, sig))
    assert f.tick(T0 + 1000 * MS - 1) == []
    [kill] = f.tick(T0 + 1000 * MS)
    assert kill.exit_timed_out is True
    assert kill.exit is None and kill.deliver is not None
    assert f.corr.pending_count() == 0
    # A late exit no longer matches anything.
    assert f(exit_(T0 + 2000 * MS, sig)) == []
    assert f.corr.stats.unmatched_exit == 1


def test_oom_kill_without_exit_times_out() -> None:
    f = feeder(exit_wait_ns=1000 * MS)
    sig = signal(T0, TRIGGER, 201)
    f(sig, mark(T0 + 10_000, TRIGGER, 201))
    assert f.tick(T0 + DEFAULT_WINDOW_NS + 1) == []
    [kill] = f.tick(T0 + 1000 * MS)
    assert kill.kind == "oom_kill" and kill.exit_timed_out is True


def test_ignored_signal_expects_nothing_and_does_not_time_out() -> None:
    f = feeder()
    sig = signal(T0, task(700), 701, code=SI_USER, result=1)
    f(sig)
    assert f.tick(T0 + DEFAULT_WINDOW_NS - 1) == []
    [kill] = f.tick(T0 + DEFAULT_WINDOW_NS)
    assert kill.expects_exit is False
    assert kill.exit_timed_out is False


def test_handled_sigterm_completes_at_deliver() -> None:
    f = feeder()
    sig = signal(T0, task(700, comm="kubelet"), 701, sig=SIGTERM, code=SI_USER)
    assert f(sig) == []
    [kill] = f(deliver(T0 + MS, sig, delivered=SIGTERM, handler=0x55D0_0000_1234))
    assert kill.kind == "signal"
    assert kill.deliver is not None and kill.deliver.sa_handler == 0x55D0_0000_1234
    assert kill.exit is None and kill.exit_timed_out is False
    assert f.corr.pending_count() == 0
    # The handler may exit later on its own: that exit is no longer this kill's.
    assert f(exit_(T0 + 2 * MS, sig)) == []
    assert f.corr.stats.unmatched_exit == 1


def test_fatal_sigterm_waits_for_the_exit() -> None:
    f = feeder()
    sig = signal(T0, task(700), 701, sig=SIGTERM, code=SI_USER)
    assert f(sig, deliver(T0 + MS, sig, delivered=SIGKILL)) == []
    [kill] = f(exit_(T0 + 2 * MS, sig))
    assert kill.exit is not None


def test_unmatched_deliver_is_counted() -> None:
    f = feeder()
    stray = signal(T0, task(700), 701, code=SI_USER)
    assert f(deliver(T0 + MS, stray)) == []
    assert f.corr.stats.unmatched_deliver == 1


def test_max_pending_evicts_the_oldest_kill() -> None:
    f = feeder(max_pending=2)
    sender = task(700)
    sigs = [signal(T0 + i, sender, 800 + i, code=SI_USER) for i in range(3)]
    assert f(sigs[0], sigs[1]) == []
    evicted = f(sigs[2])
    assert [k.victim_tid for k in evicted] == [800]
    assert evicted[0].exit is None
    assert f.corr.stats.evicted == 1
    assert f.corr.pending_count() == 2
    # The evicted kill's records find nothing any more.
    assert f(deliver(T0 + MS, sigs[0])) == []
    assert f.corr.stats.unmatched_deliver == 1
    assert [k.victim_tid for k in f(exit_(T0 + MS, sigs[1]))] == [801]


def test_max_pending_evicts_a_held_kernel_kill() -> None:
    f = feeder(max_pending=1)
    held = signal(T0, task(500), 501)
    f(held)
    [evicted] = f(signal(T0 + 1, task(700), 701, code=SI_USER))
    assert evicted.signal is held
    # Nothing is left held: the window passing releases nothing more.
    assert f.tick(T0 + DEFAULT_WINDOW_NS + 1) == []
    assert f.corr.pending_count() == 1


def test_max_pending_eviction_by_a_mark_without_signal_is_returned() -> None:
    """A mark with no SIGKILL before it (the victim was already exiting) adds a
    kill too; the kill it evicts must be handed back like any other."""
    f = feeder(max_pending=1)
    sig = signal(T0, task(700), 701, code=SI_USER)
    f(sig)
    evicted = f(mark(T0 + 1, TRIGGER, 201))
    assert [k.victim_tid for k in evicted] == [701]
    assert f.corr.stats.evicted == 1
    assert f.corr.pending_count() == 1


def test_mark_without_a_signal_is_an_oom_kill_without_deliver() -> None:
    f = feeder(exit_wait_ns=1000 * MS)
    f(mark(T0, TRIGGER, 201, comm="exiting"))
    [kill] = f.tick(T0 + 1000 * MS)
    assert kill.kind == "oom_kill"
    assert kill.signal is None and kill.expects_exit is False
    assert kill.victim_comm == "exiting"
    assert kill.context is not None and kill.group_kill is False


def test_drain_releases_everything_on_shutdown() -> None:
    f = feeder()
    waiting = signal(T0, task(700), 701, code=SI_USER)
    victim = signal(T0 + MS, TRIGGER, 201)
    sharer = signal(T0 + MS + 20_000, TRIGGER, 301)
    lone = signal(T0 + 2 * MS, task(500), 501)
    f(waiting, deliver(T0 + MS, waiting))
    f(victim, mark(T0 + MS + 10_000, TRIGGER, 201), sharer, lone)
    assert f.corr.pending_count() == 4

    drained = f.corr.drain()
    assert [k.victim_tid for k in drained] == [701, 201, 301, 501]
    by_tid = {k.victim_tid: k for k in drained}
    assert by_tid[701].kind == "signal"
    assert (by_tid[201].kind, by_tid[201].group_kill) == ("oom_kill", False)
    # Undecided kernel SIGKILLs are decided as the window would have.
    assert (by_tid[301].kind, by_tid[301].group_kill) == ("oom_kill", True)
    assert by_tid[301].context is by_tid[201].context
    assert (by_tid[501].kind, by_tid[501].context) == ("signal", None)
    assert all(k.exit is None for k in drained)
    assert f.corr.pending_count() == 0
    assert f.corr.drain() == []
    assert f.tick(T0 + DEFAULT_EXIT_WAIT_NS * 2) == []


def test_mark_read_after_the_window_still_joins_its_sigkill() -> None:
    """The agent fell behind: tick() ran on wall time past the window after the
    victim's SIGKILL was read but before its mark was. Still one oom_kill."""
    f = feeder()
    sig = signal(T0, TRIGGER, 201)
    f(sig)
    assert f.tick(T0 + DEFAULT_WINDOW_NS + 5 * MS) == []
    f(mark(T0 + 10_000, TRIGGER, 201), deliver(T0 + MS, sig))
    [kill] = f(exit_(T0 + 2 * MS, sig))
    assert kill.kind == "oom_kill"
    assert kill.signal is sig and kill.mark is not None and kill.exit is not None
    assert kill.group_kill is False
    assert f.corr.pending_count() == 0
    assert f.corr.drain() == []


def test_late_mark_does_not_take_an_unrelated_kernel_sigkill() -> None:
    """Only a SIGKILL from the mark's own trigger, just before it, is its kill."""
    f = feeder(exit_wait_ns=1000 * MS)
    other = signal(T0, task(500), 201)
    f(other)
    f.tick(T0 + DEFAULT_WINDOW_NS + 5 * MS)
    f(mark(T0 + 10_000, TRIGGER, 201))
    kills = f.tick(T0 + 2000 * MS)
    assert sorted((k.kind, k.signal is other) for k in kills) == [
        ("oom_kill", False),
        ("signal", True),
    ]
