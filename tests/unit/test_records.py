"""oomtrace.kernel.records against raw records recorded from a real kernel (tests/data).

The records were written by the real BPF programs on Linux 6.18 (re-record with
tests/data/record.py); every one must decode, and its fields must tell the story
of the scenario that produced it. The old, pid-only mark_victim layout (kernels
before v6.9) is synthesized from a recorded record the way the BPF program
writes it there.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from oomtrace.kernel import features, probes, records
from oomtrace.kernel.records import (
    CgroupRecord,
    DecodeError,
    DeliverRecord,
    ExitRecord,
    MarkVictimRecord,
    RawCgroup,
    RawMarkVictim,
    Record,
    RecordDecoder,
    SignalRecord,
    Task,
)
from oomtrace.sigdefs import SI_KERNEL, SI_USER, SIGKILL

DATA = Path(__file__).resolve().parent.parent / "data" / "records-6.18.jsonl"
SIGTERM = 15
MiB_KB = 1024
PAGE_KB = 4  # recorded on x86_64
UNLIMITED_PAGES = 1 << 50  # PAGE_COUNTER_MAX is LONG_MAX / PAGE_SIZE

MIRROR_BY_KIND = {kind.code: kind.mirror for kind in records.RECORD_KINDS}


def _raw_by_scenario() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for line in DATA.read_text().splitlines():
        entry = json.loads(line)
        out[entry["scenario"]].append(bytes.fromhex(entry["hex"]))
    return dict(out)


RAW = _raw_by_scenario()


def _decoded(scenario: str) -> list[Record]:
    decoder = RecordDecoder()
    return [decoder.decode(data) for data in RAW[scenario]]


def _kill_records(scenario: str) -> list[Record]:
    """The scenario's records without the cgroup_mkdir of the cgroup it made."""
    return [r for r in _decoded(scenario) if not isinstance(r, CgroupRecord)]


def _kinds(recs: list[Record]) -> list[str]:
    names = {
        SignalRecord: "signal",
        MarkVictimRecord: "mark_victim",
        DeliverRecord: "deliver",
        ExitRecord: "exit",
        CgroupRecord: "cgroup_mkdir",
    }
    return [names[type(r)] for r in recs]


def _first_mark(scenario: str) -> bytes:
    for data in RAW[scenario]:
        if int.from_bytes(data[:2], "little") == records.REC_MARK_VICTIM:
            return data
    raise AssertionError(f"no mark_victim in {scenario}")


# -- the declaration of each kind ---------------------------------------------

HEADER = probes.bpf_dir() / "oomtrace.h"


def _header_kinds() -> dict[str, int]:
    """OOMTRACE_REC_<NAME> -> code, read from the header's text."""
    found = re.findall(r"^#define\s+OOMTRACE_(REC_\w+)\s+(\d+)\b", HEADER.read_text(), re.M)
    return {name: int(code) for name, code in found if name != "REC_KINDS"}


def test_every_kind_in_the_header_is_declared() -> None:
    in_header = _header_kinds()
    assert in_header, "no OOMTRACE_REC_* found in the header"
    declared = {kind.constant: kind.code for kind in records.RECORD_KINDS}
    assert declared == in_header
    for kind in records.RECORD_KINDS:
        assert getattr(records, kind.constant) == kind.code, kind.name
        assert 0 < kind.code < records.REC_KINDS, kind.name


def test_declarations_are_distinct() -> None:
    kinds = records.RECORD_KINDS
    for attribute in ("code", "name", "c_struct", "mirror"):
        values = [getattr(kind, attribute) for kind in kinds]
        assert len(set(values)) == len(values), attribute
    hooks = [hook for kind in kinds for hook in kind.hooks]
    assert len(set(hooks)) == len(hooks)


@pytest.mark.parametrize("kind", records.RECORD_KINDS, ids=lambda kind: kind.name)
def test_declaration_names_what_the_kernel_side_has(
    kind: records.RecordKind[ctypes.Structure],
) -> None:
    header = HEADER.read_text()
    assert re.search(rf"^struct {kind.c_struct} \{{", header, re.M), kind.c_struct
    assert kind.mirror._fields_[0][0] == "kind"
    program = (probes.bpf_dir() / kind.source).read_text()
    # The program reserves the kind's struct under the kind's code.
    assert f"struct {kind.c_struct} *" in program
    assert f"OOMTRACE_{kind.constant}" in program
    assert kind.hooks
    for hook in kind.hooks:
        if hook in features.TRACEPOINTS:
            category, event = hook.split(":", 1)
            assert f"TRACEPOINT_PROBE({category}, {event})" in program, hook
        else:
            assert hook.startswith(records.KPROBE_HOOK_PREFIX), hook


def test_programs_attach_the_hooks_of_the_kinds_they_write() -> None:
    programs = (*probes.PROGRAMS, probes.KPROBE_PROGRAM)
    assert {p.source for p in programs} == {kind.source for kind in records.RECORD_KINDS}
    assert sorted(hook for p in programs for hook in p.hooks) == sorted(
        hook for kind in records.RECORD_KINDS for hook in kind.hooks
    )
    assert probes.PROGRAMS[0].hooks == (
        "signal:signal_generate",
        "signal:signal_deliver",
        "sched:sched_process_exit",
    )
    assert probes.DELIVER_HOOK in probes.PROGRAMS[0].hooks
    # The commands program writes a map, not records: its hooks are its own.
    assert set(features.TRACEPOINTS) == {
        hook for p in (*probes.PROGRAMS, probes.COMMANDS_PROGRAM) for hook in p.hooks
    }


# -- every record --------------------------------------------------------------


def test_data_holds_the_five_scenarios() -> None:
    assert set(RAW) == {"oom_hog", "holder_allocator", "sigkill", "sigterm", "runtime_stop"}
    assert 10 <= sum(len(v) for v in RAW.values()) <= 100


@pytest.mark.parametrize(
    ("scenario", "index"), [(s, i) for s, recs in RAW.items() for i in range(len(recs))]
)
def test_every_recorded_record_decodes_at_its_exact_size(scenario: str, index: int) -> None:
    data = RAW[scenario][index]
    kind = int.from_bytes(data[:2], "little")
    # The ring buffer hands over exactly sizeof(struct): the mirror must agree.
    assert len(data) == ctypes.sizeof(MIRROR_BY_KIND[kind])
    rec = RecordDecoder().decode(data)
    assert records.KIND_NAMES[kind] == _kinds([rec])[0]
    assert rec.ktime_ns > 0
    assert 0 <= rec.cpu < 4096
    # The header's reserved word is written as zero by oomtrace_reserve().
    assert int.from_bytes(data[4:8], "little") == 0


def test_records_are_in_ring_buffer_order() -> None:
    for scenario, recs in RAW.items():
        times = [RecordDecoder().decode(d).ktime_ns for d in recs]
        assert times == sorted(times), scenario


def _context_task(rec: Record) -> Task:
    if isinstance(rec, SignalRecord):
        return rec.sender
    if isinstance(rec, MarkVictimRecord):
        return rec.trigger
    assert isinstance(rec, DeliverRecord | ExitRecord)
    return rec.victim


def test_tasks_carry_their_struct_fields() -> None:
    """Recorded with BTF offsets: ppid, start time, memcg and oom_score_adj are set."""
    for scenario in RAW:
        for rec in _kill_records(scenario):
            task = _context_task(rec)
            assert task.has_struct_fields, (scenario, task)
            assert task.flags == 0
            assert task.tid > 0 and task.tgid > 0 and task.ppid > 0
            assert task.start_ns > 0
            assert task.cgroup_id > 0 and task.memcg_id > 0
            assert task.comm and task.parent_comm


# -- per scenario --------------------------------------------------------------


def _cgroup_of(scenario: str) -> CgroupRecord:
    made = [r for r in _decoded(scenario) if isinstance(r, CgroupRecord)]
    assert len(made) == 1, made
    cg = made[0]
    assert cg.path.startswith("/oomtrace-test-")
    assert cg.level == 1
    assert cg.cgroup_id > 0
    assert cg.hierarchy >= 0
    return cg


def test_oom_hog_kill_in_the_victims_own_context() -> None:
    recs = _kill_records("oom_hog")
    # A SIGKILL cannot be caught: it has no deliver record, its exit follows.
    assert _kinds(recs) == ["signal", "mark_victim", "exit"]
    sig, mark, ex = recs
    assert isinstance(sig, SignalRecord) and isinstance(mark, MarkVictimRecord)
    assert isinstance(ex, ExitRecord)
    cg = _cgroup_of("oom_hog")
    assert cg.ktime_ns < sig.ktime_ns <= mark.ktime_ns <= ex.ktime_ns

    # The OOM killer's SIGKILL: kernel code, whole group, queued.
    assert (sig.sig, sig.code, sig.group, sig.result, sig.errno) == (SIGKILL, SI_KERNEL, True, 0, 0)
    # The hog's own charge failed: it is trigger, sender and victim at once.
    victim = sig.target_tid
    assert sig.sender.tid == sig.sender.tgid == victim
    assert mark.trigger.tid == mark.victim_tid == victim
    assert mark.trigger == sig.sender
    assert sig.target_comm == mark.victim_comm == sig.target.comm == ex.victim.comm == "python"
    # The memcg the hog ran in is the one made for it, full at the kill.
    assert mark.trigger.memcg_id == cg.cgroup_id
    _assert_limited_memcg_at_limit(mark, cg)

    # Full layout: the kernel's own view of the victim's memory.
    assert mark.victim_uid == 0
    assert mark.victim_oom_score_adj == 0
    mem = mark.victim_memory
    assert mem is not None
    assert 32 * MiB_KB < mem.anon_rss_kb <= 64 * MiB_KB
    assert mem.file_rss_kb > 0
    assert mem.total_vm_kb >= mem.anon_rss_kb + mem.file_rss_kb + mem.shmem_rss_kb
    assert mem.pgtables_kb > 0

    _assert_linked(sig, ex)
    assert ex.exit_code & 0x7F == SIGKILL


def test_holder_is_victim_and_allocator_is_trigger() -> None:
    recs = _kill_records("holder_allocator")
    assert _kinds(recs) == ["signal", "mark_victim", "exit"]
    sig, mark, ex = recs
    assert isinstance(sig, SignalRecord) and isinstance(mark, MarkVictimRecord)
    assert isinstance(ex, ExitRecord)
    cg = _cgroup_of("holder_allocator")
    victim = sig.target

    holder = sig.target_tid
    allocator = sig.sender
    assert (sig.sig, sig.code, sig.result) == (SIGKILL, SI_KERNEL, 0)
    assert allocator.tgid != holder
    assert mark.trigger == allocator
    assert mark.victim_tid == holder
    # The OOM killer's view (mark_victim), the target task read at the signal
    # and the victim's own at its exit agree.
    assert mark.victim_oom_score_adj == victim.oom_score_adj == ex.victim.oom_score_adj == 1000
    assert allocator.oom_score_adj == 0
    assert victim.tgid == holder
    assert victim.start_ns < allocator.start_ns  # the holder came first
    # Both ran in the one limited memcg.
    assert allocator.memcg_id == victim.memcg_id == cg.cgroup_id
    assert allocator.ppid == ex.victim.ppid
    _assert_limited_memcg_at_limit(mark, cg)
    mem = mark.victim_memory
    assert mem is not None and 36 * MiB_KB <= mem.anon_rss_kb < 64 * MiB_KB

    _assert_linked(sig, ex)
    assert ex.exit_code & 0x7F == SIGKILL


def test_kill_9_of_a_sleep() -> None:
    recs = _kill_records("sigkill")
    assert _kinds(recs) == ["signal", "exit"]
    sig, ex = recs
    assert isinstance(sig, SignalRecord) and isinstance(ex, ExitRecord)
    assert (sig.sig, sig.code, sig.group, sig.result) == (SIGKILL, SI_USER, True, 0)
    assert sig.sender.comm == "kill"
    assert sig.target_comm == sig.target.comm == ex.victim.comm == "sleep"
    assert sig.sender.tgid != sig.target_tid
    # kill(1) and the sleep are both children of the recorder.
    assert sig.sender.ppid == ex.victim.ppid
    assert sig.target.tgid == sig.target_tid
    _assert_linked(sig, ex)
    assert ex.exit_code == SIGKILL


def test_sigterm_of_a_sleep_is_delivered_as_group_sigkill() -> None:
    recs = _kill_records("sigterm")
    assert _kinds(recs) == ["signal", "deliver", "exit"]
    sig, deliver, ex = recs
    assert isinstance(sig, SignalRecord) and isinstance(deliver, DeliverRecord)
    assert isinstance(ex, ExitRecord)
    assert (sig.sig, sig.code, sig.result) == (SIGTERM, SI_USER, 0)
    assert sig.target_comm == "sleep"
    _assert_linked(sig, ex, deliver)
    # A fatal default-action signal turns into SIGKILL for the dying group;
    # the link still names the SIGTERM that was generated.
    assert deliver.kill_sig == SIGTERM and deliver.sig == SIGKILL
    assert deliver.sa_handler == 0
    assert ex.kill_sig == SIGTERM
    assert ex.exit_code == SIGTERM


def _assert_limited_memcg_at_limit(mark: MarkVictimRecord, cg: CgroupRecord) -> None:
    """The trigger's memcg chain, read in the kernel at the kill: the 64 MiB memcg
    first, its usage at the limit, then its ancestors up to the unlimited root."""
    chain = mark.trigger_memcgs
    assert 2 <= len(chain) <= records.MEMCG_LEVELS
    own = chain[0]
    assert own.memcg_id == cg.cgroup_id
    assert own.max_pages == 64 * MiB_KB // PAGE_KB
    assert own.max_pages - 256 <= own.usage_pages <= own.max_pages
    assert chain[-1].max_pages >= UNLIMITED_PAGES
    assert len({c.memcg_id for c in chain}) == len(chain)
    assert all(c.memcg_id > 0 for c in chain)


def _assert_linked(sig: SignalRecord, ex: ExitRecord, deliver: DeliverRecord | None = None) -> None:
    """deliver and exit carry the (generate ktime, sender tgid, sig) of their signal."""
    for rec in (ex,) if deliver is None else (deliver, ex):
        assert rec.kill_ktime_ns == sig.ktime_ns
        assert rec.kill_sender_tgid == sig.sender.tgid
        assert rec.kill_sig == sig.sig
        assert rec.victim.tgid == sig.target_tid
    if deliver is not None:
        assert deliver.victim == ex.victim
    assert ex.group_dead is True


# -- the old mark_victim layout ----------------------------------------------


def _pid_only(data: bytes) -> bytes:
    """What oom_victim.bpf.c writes when the tracepoint has only `pid`: the
    victim_* fields after victim_tid stay zero from its memset (the trigger's
    memcg counters do not depend on the tracepoint and are kept)."""
    raw = RawMarkVictim.from_buffer_copy(data)
    raw.mark_victim_layout = records.MARK_VICTIM_PID_ONLY
    raw.victim_uid = 0
    raw.victim_total_vm_kb = 0
    raw.victim_anon_rss_kb = 0
    raw.victim_file_rss_kb = 0
    raw.victim_shmem_rss_kb = 0
    raw.victim_pgtables_kb = 0
    raw.victim_oom_score_adj = 0
    raw.victim_comm = b""
    return bytes(raw)


@pytest.mark.parametrize("scenario", ["oom_hog", "holder_allocator"])
def test_recorded_mark_victim_has_the_full_layout(scenario: str) -> None:
    data = _first_mark(scenario)
    assert RawMarkVictim.from_buffer_copy(data).mark_victim_layout == records.MARK_VICTIM_FULL
    mark = RecordDecoder().decode(data)
    assert isinstance(mark, MarkVictimRecord)
    assert mark.victim_memory is not None and mark.victim_memory.anon_rss_kb > 0
    assert mark.victim_comm and mark.victim_uid is not None
    assert mark.victim_oom_score_adj is not None


@pytest.mark.parametrize("scenario", ["oom_hog", "holder_allocator"])
def test_pid_only_mark_victim_leaves_victim_details_unknown(scenario: str) -> None:
    data = _first_mark(scenario)
    full = RecordDecoder().decode(data)
    old = RecordDecoder().decode(_pid_only(data))
    assert isinstance(full, MarkVictimRecord) and isinstance(old, MarkVictimRecord)
    assert len(_pid_only(data)) == len(data)
    assert old.victim_memory is None
    assert old.victim_comm is None
    assert old.victim_uid is None
    assert old.victim_oom_score_adj is None
    # What the old tracepoint does give is kept.
    assert old.victim_tid == full.victim_tid
    assert old.trigger == full.trigger
    # The trigger's memcg counters come from BTF offsets, not the tracepoint.
    assert old.trigger_memcgs == full.trigger_memcgs != ()
    assert (old.ktime_ns, old.cpu) == (full.ktime_ns, full.cpu)


def test_pid_only_layout_ignores_stray_victim_bytes() -> None:
    """Layout 0 means unknown, whatever the other victim_* fields hold."""
    raw = RawMarkVictim.from_buffer_copy(_first_mark("oom_hog"))
    raw.mark_victim_layout = records.MARK_VICTIM_PID_ONLY
    old = RecordDecoder().decode(bytes(raw))
    assert isinstance(old, MarkVictimRecord)
    assert old.victim_memory is None and old.victim_comm is None


# -- cgroup records ------------------------------------------------------------


def test_root_cgroup_path_reads_as_slash() -> None:
    raw = RawCgroup(kind=records.REC_CGROUP_MKDIR, ktime_ns=5, hierarchy=0, level=0, cgroup_id=1)
    rec = RecordDecoder().decode(bytes(raw))
    assert rec == CgroupRecord(ktime_ns=5, cpu=0, hierarchy=0, level=0, cgroup_id=1, path="/")


def test_cgroup_path_fills_the_whole_field() -> None:
    path = b"/" + b"p" * (records.CGROUP_PATH_LEN - 1)
    raw = RawCgroup(kind=records.REC_CGROUP_MKDIR, ktime_ns=5, level=1, cgroup_id=7, path=path)
    rec = RecordDecoder().decode(bytes(raw))
    assert isinstance(rec, CgroupRecord) and rec.path == path.decode()


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x01"])
def test_record_without_a_kind(data: bytes) -> None:
    with pytest.raises(DecodeError, match="no kind"):
        RecordDecoder().decode(data)


@pytest.mark.parametrize("scenario", ["oom_hog", "sigkill"])
def test_short_records(scenario: str) -> None:
    for data in RAW[scenario]:
        kind = int.from_bytes(data[:2], "little")
        for cut in (2, 16, len(data) - 1):
            with pytest.raises(DecodeError, match=f"kind {kind} has {cut} bytes"):
                RecordDecoder().decode(data[:cut])


@pytest.mark.parametrize("kind", [0, 7, records.REC_KINDS, 0xFFFF])
def test_unknown_kinds(kind: int) -> None:
    data = kind.to_bytes(2, "little") + bytes(1024)
    with pytest.raises(DecodeError, match=f"unknown record kind {kind}"):
        RecordDecoder().decode(data)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


def test_mark_victim_without_btf_has_no_trigger_memcgs() -> None:
    """Without BTF offsets the BPF program leaves the memcg arrays zero."""
    raw = RawMarkVictim.from_buffer_copy(_first_mark("oom_hog"))
    for name in ("trigger_memcg_ids", "trigger_memcg_usage_pages", "trigger_memcg_max_pages"):
        field = getattr(RawMarkVictim, name)
        ctypes.memset(ctypes.addressof(raw) + field.offset, 0, field.size)
    mark = RecordDecoder().decode(bytes(raw))
    assert isinstance(mark, MarkVictimRecord)
    assert mark.trigger_memcgs == ()
    assert mark.victim_memory is not None
