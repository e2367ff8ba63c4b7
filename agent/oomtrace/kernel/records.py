"""Decoding of raw ring-buffer records into typed, immutable Python objects.

Each record kind is declared once, in :data:`RECORD_KINDS`: its code, its name, the
C struct it is, the ctypes mirror of that struct, the function that turns the mirror
into a record, and the BPF program and kernel hooks that write it. The decoder, the
name and mirror tables, the tracepoints the kernel is probed for and the hooks each
program attaches are all derived from that tuple.

A new kind: bpf/oomtrace.h, its bpf/*.bpf.c program, a RecordKind here, a branch in correlate.py.

The ctypes classes below mirror ``bpf/oomtrace.h`` field for field; the root test
``tests/kernel/test_alignment.py`` compares them with the layout bcc derives from
the header, so a change on one side without the other fails. Each record's
context task is decoded into :class:`Task` under the role the record gives it.
"""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

COMM_LEN: Final = 16
MEMCG_LEVELS: Final = 4
CGROUP_PATH_LEN: Final = 512
ARGV_LEN: Final = 256

REC_SIGNAL: Final = 1
REC_MARK_VICTIM: Final = 2
REC_DELIVER: Final = 3
REC_EXIT: Final = 4
REC_CGROUP_MKDIR: Final = 5
REC_OOM_KILL: Final = 6
REC_KINDS: Final = 8
# OOMTRACE_LAYOUT_VERSION: pinned programs of another version are not resumed.
LAYOUT_VERSION: Final = 1

# Kills followed at once, from their signal to their exit: the size of the BPF
# programs' maps of pending kills and the correlator's bound alike, so that the
# kernel never forgets a kill the agent still waits for. A frozen cgroup or a
# task stuck in D state holds its SIGKILL until it runs again, so a whole node's
# processes can be pending together.
PENDING_KILLS_MAX: Final = 65536

TASK_NO_OFFSETS: Final = 1
TASK_READ_FAILED: Final = 2
TASK_MEMCG_OOM_GROUP: Final = 4

INFO_UNKNOWN: Final = 0
INFO_NOINFO: Final = 1
INFO_PRIV: Final = 2
INFO_SIGINFO: Final = 3

SIGNAL_TRACED: Final = 1
SIGNAL_STOP: Final = 2

MARK_VICTIM_PID_ONLY: Final = 0
MARK_VICTIM_FULL: Final = 1

ARGV_NONE: Final = 0
ARGV_EXEC: Final = 1
ARGV_PROC: Final = 2
ARGV_SOURCES: Final = {ARGV_EXEC: "exec", ARGV_PROC: "proc"}

_u16, _u32, _s32 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int32
_u64, _s64 = ctypes.c_uint64, ctypes.c_int64
_comm = ctypes.c_char * COMM_LEN

_Fields = list[tuple[str, type]]

_HEADER: _Fields = [("kind", _u16), ("cpu", _u16), ("reserved", _u32), ("ktime_ns", _u64)]


def _task(role: str) -> _Fields:
    return [
        (f"{role}_tid", _u32),
        (f"{role}_tgid", _u32),
        (f"{role}_ppid", _u32),
        (f"{role}_uid", _u32),
        (f"{role}_start_ns", _u64),
        (f"{role}_cgroup_id", _u64),
        (f"{role}_memcg_id", _u64),
        (f"{role}_oom_score_adj", _s32),
        (f"{role}_flags", _u32),
        (f"{role}_comm", _comm),
        (f"{role}_parent_comm", _comm),
    ]


def _argv(role: str) -> _Fields:
    # Bytes, not c_char: a ctypes char array reads back cut at its first NUL,
    # and argv is NUL-separated.
    return [
        (f"{role}_argv_size", _u32),
        (f"{role}_argv_source", _u32),
        (f"{role}_argv", ctypes.c_ubyte * ARGV_LEN),
    ]


class RawArgv(ctypes.Structure):
    """struct oomtrace_argv: a value of the commands map, which the agent seeds."""

    _fields_ = [("size", _u32), ("source", _u32), ("args", ctypes.c_ubyte * ARGV_LEN)]


class RawSignalMasks(ctypes.Structure):
    """The traced_signals map's value: traced signals, and stop signals to follow."""

    _fields_ = [("traced", _u64), ("stop", _u64)]


class RawResume(ctypes.Structure):
    """The pinned `resume` map's value (struct oomtrace_resume)."""

    _fields_ = [
        ("commit", _u64),
        ("realtime_ns", _u64),
        ("lost_reported", _u64 * REC_KINDS),
    ]


class RawReportedKey(ctypes.Structure):
    """The pinned `reported` map's key (struct oomtrace_reported_key)."""

    _fields_ = [("ktime_ns", _u64), ("victim_tid", _u32), ("pad", _u32)]


class RawSignal(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        *_task("sender"),
        ("target_tid", _u32),
        ("sig", _s32),
        ("errno_value", _s32),
        ("code", _s32),
        ("group", _s32),
        ("result", _s32),
        ("target_comm", _comm),
        ("target_tgid", _u32),
        ("target_uid", _u32),
        ("info_kind", _u32),
        ("role", _u32),
        ("target_start_ns", _u64),
        ("target_cgroup_id", _u64),
        ("target_memcg_id", _u64),
        ("target_oom_score_adj", _s32),
        ("target_flags", _u32),
        ("sender_tty", _comm),
        *_argv("target"),
        *_argv("sender"),
    ]


class RawMarkVictim(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        *_task("trigger"),
        ("victim_tid", _u32),
        ("victim_uid", _u32),
        ("victim_total_vm_kb", _u64),
        ("victim_anon_rss_kb", _u64),
        ("victim_file_rss_kb", _u64),
        ("victim_shmem_rss_kb", _u64),
        ("victim_pgtables_kb", _u64),
        ("victim_oom_score_adj", _s32),
        ("mark_victim_layout", _u32),
        ("victim_comm", _comm),
        ("trigger_memcg_ids", _u64 * MEMCG_LEVELS),
        ("trigger_memcg_usage_pages", _u64 * MEMCG_LEVELS),
        ("trigger_memcg_max_pages", _u64 * MEMCG_LEVELS),
        *_argv("trigger"),
    ]


_KILL_LINK: _Fields = [("kill_ktime_ns", _u64), ("kill_sender_tgid", _u32), ("kill_sig", _s32)]


class RawDeliver(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        *_task("victim"),
        *_KILL_LINK,
        ("sig", _s32),
        ("code", _s32),
        ("sa_handler", _u64),
    ]


class RawExit(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        *_task("victim"),
        *_KILL_LINK,
        ("exit_code", _s32),
        ("group_dead", _u32),
    ]


class RawCgroup(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        ("hierarchy", _s32),
        ("level", _s32),
        ("cgroup_id", _u64),
        ("path", ctypes.c_char * CGROUP_PATH_LEN),
    ]


class RawOomKill(ctypes.Structure):
    _fields_ = [
        *_HEADER,
        *_task("trigger"),
        ("victim_tid", _u32),
        ("victim_tgid", _u32),
        ("oom_memcg_id", _u64),
        ("totalpages", _u64),
        ("chosen_points", _s64),
        ("gfp_mask", _u32),
        ("order", _s32),
        ("constraint", _u32),
        ("pad0", _u32),
        ("oom_memcg_usage_pages", _u64),
        ("victim_comm", _comm),
    ]


class DecodeError(ValueError):
    """A record that is too short or of an unknown kind."""


def _text(raw: bytes) -> str:
    # comm and cgroup names are any bytes: decoded as os.fsdecode() does, so that
    # what is not UTF-8 stays exact (as lone surrogates); build.py makes it JSON-safe.
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


_TASK_FIELDS: Final = (
    "tid",
    "tgid",
    "ppid",
    "uid",
    "start_ns",
    "cgroup_id",
    "memcg_id",
    "oom_score_adj",
    "flags",
    "comm",
    "parent_comm",
)
_TASK_GETTERS: dict[str, operator.attrgetter[Any]] = {}


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the kernel saw it when a record was written."""

    tid: int
    tgid: int
    ppid: int
    uid: int
    start_ns: int
    cgroup_id: int
    memcg_id: int
    oom_score_adj: int
    flags: int
    comm: str
    parent_comm: str

    @property
    def memcg_oom_group(self) -> bool:
        """Its memcg has memory.oom.group set (read in the kernel, with BTF)."""
        return bool(self.flags & TASK_MEMCG_OOM_GROUP)

    @property
    def has_struct_fields(self) -> bool:
        """True when ppid, start time, memcg and oom_score_adj were read in the kernel."""
        return not self.flags & (TASK_NO_OFFSETS | TASK_READ_FAILED)

    @classmethod
    def from_raw(cls, raw: ctypes.Structure, role: str) -> Task:
        # Runs for every record: one attrgetter per role reads the eleven fields
        # at C speed (ctypes gives integer fields as ints, char arrays as bytes).
        getter = _TASK_GETTERS.get(role)
        if getter is None:
            getter = _TASK_GETTERS[role] = operator.attrgetter(
                *(f"{role}_{name}" for name in _TASK_FIELDS)
            )
        tid, tgid, ppid, uid, start_ns, cgroup_id, memcg_id, adj, flags, comm, parent = getter(raw)
        return cls(
            tid,
            tgid,
            ppid,
            uid,
            start_ns,
            cgroup_id,
            memcg_id,
            adj,
            flags,
            _text(comm),
            _text(parent),
        )


@dataclass(frozen=True, slots=True)
class Argv:
    """A process's command line kept while it lived: at its exec, by the kernel
    (or inherited at fork), or from /proc when the agent started."""

    args: tuple[str, ...]
    source: str  # "exec" | "proc"
    truncated: bool  # the kernel kept the first ARGV_LEN bytes of a longer argv


def decode_argv(size: int, source: int, raw: bytes) -> Argv | None:
    """An argv from a record's or a map entry's fields; None when none was kept."""
    name = ARGV_SOURCES.get(source)
    if name is None:
        return None
    truncated = size > ARGV_LEN
    parts = raw[: min(size, ARGV_LEN)].split(b"\0")
    if parts and not parts[-1]:
        parts.pop()  # the NUL that ends the last argument, or a cut right after one
    return Argv(tuple(p.decode("utf-8", "surrogateescape") for p in parts), name, truncated)


_ARGV_GETTERS: Final = {
    role: operator.attrgetter(f"{role}_argv_source", f"{role}_argv_size", f"{role}_argv")
    for role in ("target", "sender", "trigger")
}


def _argv_of(r: ctypes.Structure, role: str) -> Argv | None:
    source, size, args = _ARGV_GETTERS[role](r)
    if source == ARGV_NONE:
        return None
    return decode_argv(size, source, bytes(args))


@dataclass(frozen=True, slots=True)
class SignalRecord:
    ktime_ns: int
    cpu: int
    sender: Task
    target_tid: int
    target_comm: str
    sig: int
    errno: int
    code: int
    group: bool
    result: int
    info_kind: int = INFO_UNKNOWN
    # The target task read in the kernel at generate time (raw tracepoint).
    target: Task | None = None
    sender_tty: str | None = None
    # Kept from exec in the kernel, copied into the record at the kill.
    target_argv: Argv | None = None
    sender_argv: Argv | None = None
    # A container runtime's stop signal (SIGTERM, ...), recorded as evidence of
    # a stop rather than as a kill of its own (SIGNAL_STOP).
    stop: bool = False


@dataclass(frozen=True, slots=True)
class VictimMemory:
    """mark_victim's view of the victim's memory, in kB as the kernel reports it."""

    total_vm_kb: int
    anon_rss_kb: int
    file_rss_kb: int
    shmem_rss_kb: int
    pgtables_kb: int


@dataclass(frozen=True, slots=True)
class MemcgCounter:
    """A memcg's page counter read in the kernel."""

    memcg_id: int
    usage_pages: int
    max_pages: int


@dataclass(frozen=True, slots=True)
class MarkVictimRecord:
    ktime_ns: int
    cpu: int
    trigger: Task
    victim_tid: int
    # None when the kernel's tracepoint has the old, pid-only layout.
    victim_comm: str | None
    victim_uid: int | None
    victim_oom_score_adj: int | None
    victim_memory: VictimMemory | None
    # The trigger's memcg and its ancestors at the kill, nearest first.
    trigger_memcgs: tuple[MemcgCounter, ...] = ()
    trigger_argv: Argv | None = None


@dataclass(frozen=True, slots=True)
class DeliverRecord:
    ktime_ns: int
    cpu: int
    victim: Task
    kill_ktime_ns: int
    kill_sender_tgid: int
    kill_sig: int
    sig: int
    code: int
    sa_handler: int


@dataclass(frozen=True, slots=True)
class ExitRecord:
    ktime_ns: int
    cpu: int
    victim: Task
    kill_ktime_ns: int
    kill_sender_tgid: int
    kill_sig: int
    exit_code: int
    group_dead: bool


@dataclass(frozen=True, slots=True)
class CgroupRecord:
    ktime_ns: int
    cpu: int
    hierarchy: int
    level: int
    cgroup_id: int
    path: str


@dataclass(frozen=True, slots=True)
class OomKillRecord:
    ktime_ns: int
    cpu: int
    trigger: Task
    victim_tid: int
    victim_tgid: int
    victim_comm: str
    oom_memcg_id: int
    totalpages: int
    chosen_points: int
    gfp_mask: int
    order: int
    constraint: int
    oom_memcg_usage_pages: int


Record = SignalRecord | MarkVictimRecord | DeliverRecord | ExitRecord | CgroupRecord | OomKillRecord


def _signal(r: RawSignal) -> SignalRecord:
    return SignalRecord(
        ktime_ns=r.ktime_ns,
        cpu=r.cpu,
        sender=Task.from_raw(r, "sender"),
        target_tid=r.target_tid,
        target_comm=_text(r.target_comm),
        sig=r.sig,
        errno=r.errno_value,
        code=r.code,
        group=bool(r.group),
        result=r.result,
        info_kind=r.info_kind,
        target=None if r.target_flags & TASK_NO_OFFSETS else _target(r),
        sender_tty=_tty(_text(r.sender_tty)),
        target_argv=_argv_of(r, "target"),
        sender_argv=_argv_of(r, "sender"),
        stop=r.role == SIGNAL_STOP,
    )


def _tty(name: str) -> str | None:
    """tty_struct names a pseudo-terminal "pts3"; /dev and ps call it pts/3."""
    if not name:
        return None
    if name.startswith("pts") and name[3:].isdigit():
        return f"pts/{name[3:]}"
    return name


def _target(r: RawSignal) -> Task:
    return Task(
        tid=r.target_tid,
        tgid=r.target_tgid,
        ppid=0,
        uid=r.target_uid,
        start_ns=r.target_start_ns,
        cgroup_id=r.target_cgroup_id,
        memcg_id=r.target_memcg_id,
        oom_score_adj=r.target_oom_score_adj,
        flags=r.target_flags,
        comm=_text(r.target_comm),
        parent_comm="",
    )


def _mark_victim(r: RawMarkVictim) -> MarkVictimRecord:
    full = r.mark_victim_layout == MARK_VICTIM_FULL
    return MarkVictimRecord(
        ktime_ns=r.ktime_ns,
        cpu=r.cpu,
        trigger=Task.from_raw(r, "trigger"),
        victim_tid=r.victim_tid,
        victim_comm=_text(r.victim_comm) if full else None,
        victim_uid=r.victim_uid if full else None,
        victim_oom_score_adj=r.victim_oom_score_adj if full else None,
        victim_memory=VictimMemory(
            total_vm_kb=r.victim_total_vm_kb,
            anon_rss_kb=r.victim_anon_rss_kb,
            file_rss_kb=r.victim_file_rss_kb,
            shmem_rss_kb=r.victim_shmem_rss_kb,
            pgtables_kb=r.victim_pgtables_kb,
        )
        if full
        else None,
        trigger_memcgs=tuple(
            MemcgCounter(memcg_id=mid, usage_pages=usage, max_pages=cap)
            for mid, usage, cap in zip(
                r.trigger_memcg_ids,
                r.trigger_memcg_usage_pages,
                r.trigger_memcg_max_pages,
                strict=True,
            )
            if mid
        ),
        trigger_argv=_argv_of(r, "trigger"),
    )


def _deliver(r: RawDeliver) -> DeliverRecord:
    return DeliverRecord(
        ktime_ns=r.ktime_ns,
        cpu=r.cpu,
        victim=Task.from_raw(r, "victim"),
        kill_ktime_ns=r.kill_ktime_ns,
        kill_sender_tgid=r.kill_sender_tgid,
        kill_sig=r.kill_sig,
        sig=r.sig,
        code=r.code,
        sa_handler=r.sa_handler,
    )


def _exit(r: RawExit) -> ExitRecord:
    return ExitRecord(
        ktime_ns=r.ktime_ns,
        cpu=r.cpu,
        victim=Task.from_raw(r, "victim"),
        kill_ktime_ns=r.kill_ktime_ns,
        kill_sender_tgid=r.kill_sender_tgid,
        kill_sig=r.kill_sig,
        exit_code=r.exit_code,
        group_dead=bool(r.group_dead),
    )


def _cgroup(r: RawCgroup) -> CgroupRecord:
    return CgroupRecord(
        ktime_ns=r.ktime_ns,
        cpu=r.cpu,
        hierarchy=r.hierarchy,
        level=r.level,
        cgroup_id=r.cgroup_id,
        path=_text(r.path) or "/",
    )


def _oom_kill(r: RawOomKill) -> OomKillRecord:
    return OomKillRecord(
        ktime_ns=r.ktime_ns,
        cpu=r.cpu,
        trigger=Task.from_raw(r, "trigger"),
        victim_tid=r.victim_tid,
        victim_tgid=r.victim_tgid,
        victim_comm=_text(r.victim_comm),
        oom_memcg_id=r.oom_memcg_id,
        totalpages=r.totalpages,
        chosen_points=r.chosen_points,
        gfp_mask=r.gfp_mask,
        order=r.order,
        constraint=r.constraint,
        oom_memcg_usage_pages=r.oom_memcg_usage_pages,
    )


_Raw = TypeVar("_Raw", bound=ctypes.Structure)

# The hook of a kprobe program is "kprobe:<function>"; every other hook is a
# tracepoint, "<category>:<event>" as tracefs names it.
KPROBE_HOOK_PREFIX: Final = "kprobe:"


@dataclass(frozen=True, slots=True)
class RecordKind(Generic[_Raw]):
    """One kind of ring-buffer record, declared once: everything derives from it."""

    code: int  # OOMTRACE_REC_* in bpf/oomtrace.h, the record's first field
    name: str  # REC_<NAME> here, and how lost counts and logs name the kind
    c_struct: str  # struct <c_struct> in bpf/oomtrace.h
    mirror: type[_Raw]
    decode: Callable[[_Raw], Record]
    source: str  # the BPF program in bpf/ that writes it
    hooks: tuple[str, ...]  # the kernel hooks of that program that write it

    @property
    def constant(self) -> str:
        return f"REC_{self.name.upper()}"

    @property
    def size(self) -> int:
        """What the ring buffer hands over: sizeof the struct, never less."""
        return ctypes.sizeof(self.mirror)


RECORD_KINDS: Final[tuple[RecordKind[Any], ...]] = (
    RecordKind(
        REC_SIGNAL,
        "signal",
        "oomtrace_signal_rec",
        RawSignal,
        _signal,
        "signals.bpf.c",
        ("signal:signal_generate",),
    ),
    RecordKind(
        REC_MARK_VICTIM,
        "mark_victim",
        "oomtrace_mark_victim_rec",
        RawMarkVictim,
        _mark_victim,
        "oom_victim.bpf.c",
        ("oom:mark_victim",),
    ),
    RecordKind(
        REC_DELIVER,
        "deliver",
        "oomtrace_deliver_rec",
        RawDeliver,
        _deliver,
        "signals.bpf.c",
        ("signal:signal_deliver",),
    ),
    RecordKind(
        REC_EXIT,
        "exit",
        "oomtrace_exit_rec",
        RawExit,
        _exit,
        "signals.bpf.c",
        ("sched:sched_process_exit",),
    ),
    RecordKind(
        REC_CGROUP_MKDIR,
        "cgroup_mkdir",
        "oomtrace_cgroup_rec",
        RawCgroup,
        _cgroup,
        "cgroups.bpf.c",
        ("cgroup:cgroup_mkdir",),
    ),
    RecordKind(
        REC_OOM_KILL,
        "oom_kill",
        "oomtrace_oom_kill_rec",
        RawOomKill,
        _oom_kill,
        "oom_kill.bpf.c",
        (f"{KPROBE_HOOK_PREFIX}oom_kill_process",),
    ),
)

BY_CODE: Final[dict[int, RecordKind[Any]]] = {kind.code: kind for kind in RECORD_KINDS}
KIND_NAMES: Final[dict[int, str]] = {kind.code: kind.name for kind in RECORD_KINDS}
# C struct name in bpf/oomtrace.h -> mirror, for the alignment test.
MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {
    kind.c_struct: kind.mirror for kind in RECORD_KINDS
}
# Structs the agent writes into maps, checked the same way.
MAP_MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {
    "oomtrace_argv": RawArgv,
    "oomtrace_signal_masks": RawSignalMasks,
    "oomtrace_resume": RawResume,
    "oomtrace_reported_key": RawReportedKey,
}
# (mirror, builder) by code, the shape bench/hotpath.py's struct-based decoder reads.
_DECODERS: Final[dict[int, tuple[type[ctypes.Structure], Callable[[Any], Record]]]] = {
    kind.code: (kind.mirror, kind.decode) for kind in RECORD_KINDS
}


def hooks_of(source: str) -> tuple[str, ...]:
    """The hooks of BPF program ``source`` that write records, in record-code order."""
    return tuple(hook for kind in RECORD_KINDS if kind.source == source for hook in kind.hooks)


def tracepoints() -> tuple[str, ...]:
    """Every tracepoint some record kind is written from."""
    return tuple(
        hook
        for kind in RECORD_KINDS
        for hook in kind.hooks
        if not hook.startswith(KPROBE_HOOK_PREFIX)
    )


class RecordDecoder:
    """Turns the bytes of one ring-buffer record into a Record.

    Any bytes give a record or a :class:`DecodeError`: every bit pattern of a
    mirror of the right size is a valid struct, and the builders only read it."""

    def __init__(self) -> None:
        # Sizes computed once: decode runs for every record.
        self._kinds = {kind.code: (kind.mirror, kind.size, kind.decode) for kind in RECORD_KINDS}

    def decode(self, data: bytes) -> Record:
        if len(data) < 2:
            raise DecodeError(f"record of {len(data)} bytes has no kind")
        kind = int.from_bytes(data[:2], "little")
        entry = self._kinds.get(kind)
        if entry is None:
            raise DecodeError(f"unknown record kind {kind}")
        raw_cls, size, build = entry
        if len(data) < size:
            raise DecodeError(f"record kind {kind} has {len(data)} bytes, expected {size}")
        return build(raw_cls.from_buffer_copy(data))
