"""Choosing and assembling the BPF programs, and reading what they write.

The C that is loaded is one text: the #defines computed for this kernel, then
``bpf/oomtrace.h``, ``bpf/common.bpf.h`` and one file per concern. ``--ebpf``
prints exactly that text. It is compiled and attached by oomtrace.kernel.loader,
in a child process by default. Which hooks a program attaches is derived from the
record kinds it writes (oomtrace.kernel.records.RECORD_KINDS).
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from oomtrace.host.procfs import PAGE_SIZE
from oomtrace.kernel import loader, records
from oomtrace.kernel import pins as pins_mod
from oomtrace.kernel.features import COMMANDS_HOOKS, KernelFeatures, find_symbol
from oomtrace.kernel.loader import Compiled, RawCallback
from oomtrace.kernel.records import PENDING_KILLS_MAX, REC_DELIVER, REC_KINDS
from oomtrace.sigdefs import SIGKILL, signal_mask

# Defined with the loader, which raises it from a compile; planning raises it too.
LoadError = loader.LoadError


def bpf_dir() -> Path:
    """bpf/ ships inside the wheel as oomtrace/bpf, and sits at the top of a source tree."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "bpf", package.parent.parent / "bpf"):
        if (candidate / "oomtrace.h").is_file():
            return candidate
    raise FileNotFoundError("the bpf/ directory with oomtrace.h is not installed")


@dataclass(frozen=True, slots=True)
class Program:
    """One BPF source file and the kernel hooks it needs."""

    name: str
    source: str
    hooks: tuple[str, ...]
    required: bool
    tier: str  # "tracepoint" | "kprobe"

    @classmethod
    def writing(cls, name: str, source: str, *, required: bool, tier: str) -> Program:
        """The program in ``source``, attached at the hooks its record kinds are written from."""
        return cls(name, source, records.hooks_of(source), required=required, tier=tier)


PROGRAMS: Final = (
    Program.writing("signals", "signals.bpf.c", required=True, tier="tracepoint"),
    Program.writing("oom_victim", "oom_victim.bpf.c", required=True, tier="tracepoint"),
    Program.writing("cgroups", "cgroups.bpf.c", required=False, tier="tracepoint"),
)

# Writes no records, so its hooks are named here: it keeps each process's argv
# from exec (and fork) for the records of its kill to copy.
COMMANDS_PROGRAM: Final = Program(
    "commands",
    "commands.bpf.c",
    COMMANDS_HOOKS,
    required=False,
    tier="tracepoint",
)
# Entries of the commands map: live processes whose argv is kept. Each takes
# about 400 bytes of kernel memory (a 264-byte value, the key, the hash
# element), allocated as processes exec, so a node with 2 000 processes uses
# some 800 KiB and a full map 13 MiB.
ARGV_MAX: Final = 32768

DEFAULT_RINGBUF_PAGES: Final = 1024
# Kills already written out, kept for a restarted agent (bpf/common.bpf.h):
# it reads again only the records of kills the previous agent left unfinished,
# seconds' worth, and this holds 16 s of a 1 000 kills/s storm.
REPORTED_MAX: Final = 16384
DELIVER_HOOK: Final = records.BY_CODE[REC_DELIVER].hooks[0]


@dataclass(slots=True)
class Plan:
    """What will be loaded on this kernel, and why anything is left out."""

    tier: str
    programs: list[Program]
    defines: dict[str, str]
    signals: frozenset[int] = frozenset({SIGKILL})
    # Followed from a container runtime as the start of a stop; empty when the
    # kernel side cannot (no task offsets).
    stop_signals: frozenset[int] = frozenset()
    missing: dict[str, str] = field(default_factory=dict)
    kernel_source: Path | None = None  # BCC_KERNEL_SOURCE, when the kernel has no headers
    kprobe_symbol: str | None = None
    requested_tier: str = "auto"
    tracefs: Path | None = None  # where the tracepoints' ids are read, to link them

    @property
    def hooks(self) -> list[str]:
        return [hook for program in self.programs for hook in program.hooks]


KPROBE_PROGRAM: Final = Program.writing("oom_kill", "oom_kill.bpf.c", required=False, tier="kprobe")


def plan(
    features: KernelFeatures,
    *,
    tier: str = "auto",
    ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
    signals: frozenset[int] = frozenset({SIGKILL}),
    stop_signals: frozenset[int] = frozenset(),
    stop_senders: tuple[str, ...] = (),
) -> Plan:
    """What to load. tier "kprobe" fails when the kprobe cannot be had; "auto" falls
    back to the tracepoint tier and says why. ``signals`` are the traced signal
    numbers; they decide whether signal_deliver is needed. ``stop_signals`` sent
    by a process named in ``stop_senders`` (comms) are followed as stops."""
    if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
        raise ValueError(f"ring buffer pages must be a power of two, not {ringbuf_pages}")
    defines = {
        "OOMTRACE_RINGBUF_PAGES": str(ringbuf_pages),
        "OOMTRACE_PENDING_MAX": str(PENDING_KILLS_MAX),
        "OOMTRACE_REPORTED_MAX": str(REPORTED_MAX),
        "PAGE_SIZE": f"{PAGE_SIZE}UL",
    }
    missing: dict[str, str] = {}
    if features.offsets is not None:
        defines |= features.offsets.defines()
        defines["OOMTRACE_HAVE_TASK_OFFSETS"] = "1"
    else:
        missing["task_struct fields"] = (
            f"{features.offsets_error}; ppid, start time, memcg and oom_score_adj "
            "come from /proc while the process lives"
        )
    if features.tracepoint_has_field("oom:mark_victim", "anon_rss"):
        defines["OOMTRACE_MARK_VICTIM_HAS_RSS"] = "1"
    if features.tracepoint_has_field("sched:sched_process_exit", "group_dead"):
        defines["OOMTRACE_EXIT_HAS_GROUP_DEAD"] = "1"

    stop_signals = _plan_stops(
        features,
        signals=signals,
        stop_signals=stop_signals,
        senders=stop_senders,
        defines=defines,
        missing=missing,
    )
    needs_deliver = _needs_deliver(features, signals)
    candidates: tuple[Program, ...] = PROGRAMS
    if needs_deliver:
        defines["OOMTRACE_NEEDS_DELIVER"] = "1"
    else:
        candidates = tuple(
            replace(p, hooks=tuple(h for h in p.hooks if h != DELIVER_HOOK)) for p in PROGRAMS
        )
    programs: list[Program] = []
    for program in candidates:
        absent = [h for h in program.hooks if not features.has_tracepoint(h)]
        if absent:
            reason = f"tracepoint {', '.join(absent)} not in this kernel"
            if program.required:
                raise LoadError(f"{program.name}: {reason}")
            missing[program.name] = reason
            continue
        programs.append(program)
    _plan_commands(features, programs, defines, missing)

    chosen = "tracepoint"
    kprobe_symbol: str | None = None
    if tier != "tracepoint":
        why_not = _kprobe_unavailable(features)
        if why_not is None:
            kprobe_symbol = find_symbol("oom_kill_process", tracefs=features.tracefs)
            if kprobe_symbol is None:
                why_not = "oom_kill_process is not in /proc/kallsyms (inlined or renamed)"
        if why_not is not None:
            if tier == "kprobe":
                raise LoadError(f"--tier kprobe: {why_not}")
            missing[KPROBE_PROGRAM.hooks[0]] = why_not
        else:
            assert features.kprobe_offsets is not None
            defines |= features.kprobe_offsets.defines()
            programs.append(KPROBE_PROGRAM)
            chosen = "kprobe"
    return Plan(
        tier=chosen,
        programs=programs,
        defines=defines,
        signals=signals,
        stop_signals=stop_signals,
        missing=missing,
        kernel_source=None if features.headers else bpf_dir() / "include",
        kprobe_symbol=kprobe_symbol,
        requested_tier=tier,
        tracefs=features.tracefs,
    )


def _needs_deliver(features: KernelFeatures, signals: frozenset[int]) -> bool:
    """signal_deliver runs for every signal on the node, so it is attached only
    when a kill cannot be followed to its exit without it: when signal_generate
    cannot read the target's tgid (no task offsets), or when a signal other
    than SIGKILL is traced (a handler may catch it; only delivery tells)."""
    return features.offsets is None or signals != {SIGKILL}


def _plan_stops(
    features: KernelFeatures,
    *,
    signals: frozenset[int],
    stop_signals: frozenset[int],
    senders: tuple[str, ...],
    defines: dict[str, str],
    missing: dict[str, str],
) -> frozenset[int]:
    """The stop signals the kernel follows from a container runtime: a stop waits
    for its target's exit by tgid, which only the raw tracepoint with task
    offsets knows. A signal traced anyway is a kill of its own, not a stop."""
    if not (stop_signals - signals) or not senders:
        return frozenset()
    if features.offsets is None:
        missing["stop signals"] = (
            "no BTF offsets to key a stopped process's exit; "
            "a runtime stop is known from its SIGKILL alone"
        )
        return frozenset()
    defines["OOMTRACE_FOLLOW_STOPS"] = "1"
    defines["OOMTRACE_STOP_SENDERS"] = " ".join(
        "OOMTRACE_SENDER({:#x}, {:#x})".format(*comm_words(name)) for name in senders
    )
    return stop_signals - signals


def comm_words(name: str) -> tuple[int, int]:
    """A comm as the kernel holds it (16 bytes, NUL-padded) read as two
    native-endian u64, the way the BPF side compares a sender's comm."""
    raw = name.encode()
    if not raw or len(raw) > 15:
        raise ValueError(f"comm {name!r} is not 1 to 15 bytes")
    lo, hi = struct.unpack("=QQ", raw.ljust(16, b"\0"))
    return int(lo), int(hi)


def _plan_commands(
    features: KernelFeatures,
    programs: list[Program],
    defines: dict[str, str],
    missing: dict[str, str],
) -> None:
    why_not = _commands_unavailable(features)
    if why_not is None:
        programs.append(COMMANDS_PROGRAM)
        defines["OOMTRACE_HAVE_ARGV"] = "1"
        defines["OOMTRACE_ARGV_MAX"] = str(ARGV_MAX)
    else:
        missing[COMMANDS_PROGRAM.name] = (
            f"{why_not}; command lines come from /proc while the process lives"
        )


def _commands_unavailable(features: KernelFeatures) -> str | None:
    """Why argv cannot be kept from exec: the program walks task_struct to the
    mm, and tells a new process from a new thread by the fork's child task."""
    if features.offsets is None:
        return "no BTF offsets to read a process's mm"
    absent = [h for h in COMMANDS_PROGRAM.hooks if not features.has_tracepoint(h)]
    if absent:
        return f"tracepoint {', '.join(absent)} not in this kernel"
    return None


def _kprobe_unavailable(features: KernelFeatures) -> str | None:
    if not features.kprobes:
        return "the kernel has no kprobes (CONFIG_KPROBES is off)"
    if features.offsets is None or features.kprobe_offsets is None:
        return features.kprobe_offsets_error or "no BTF to learn struct oom_control from"
    return None


def assemble(p: Plan) -> str:
    root = bpf_dir()
    parts = [
        "/* Generated by oomtrace for this kernel. */",
        *(f"#define {name} {value}" for name, value in p.defines.items()),
        "",
        (root / "oomtrace.h").read_text(),
        (root / "common.bpf.h").read_text(),
    ]
    parts.extend((root / program.source).read_text() for program in p.programs)
    return "\n".join(parts)


@dataclass(slots=True)
class Dropped:
    """Another layout version's ring buffer, removed unread: a gap."""

    layout: int
    records: int
    bytes: int


@dataclass(slots=True)
class Resume:
    """What the kernel side held when this agent started."""

    # The pins this agent keeps its kernel side in; None when not pinned.
    pins: pins_mod.PinSet | None = None
    # The programs were a previous agent's, still attached: read on.
    resumed: bool = False
    # Where reading started (ring buffer position), and what waited there.
    commit: int | None = None
    backlog_records: int = 0
    backlog_bytes: int = 0
    # Records of kills the previous agent had not finished, read again.
    rewound_bytes: int = 0
    # The previous agent's unfinished kills whose records the kernel had reused.
    rewind_failed: bool = False
    lost_baseline: dict[int, int] = field(default_factory=dict)
    # Same layout, other programs: their ring buffer, read to its end first.
    previous: loader.Handed | None = None
    previous_pins: pins_mod.PinSet | None = None
    # Records in this ring buffer older than this are also in `previous`'s.
    skip_before_ktime: int = 0
    dropped: list[Dropped] = field(default_factory=list)
    # CLOCK_MONOTONIC when this agent began: an older record was written while
    # no agent read it.
    started_ktime: int = 0


class Probes:
    """The loaded programs: a ring buffer to poll and counters to read.

    By default a short-lived child compiles and attaches them and hands the kernel
    objects over (oomtrace.kernel.loader), so that LLVM never weighs on the agent;
    ``in_process`` compiles here instead, keeping bcc and LLVM mapped.

    With ``pin_root`` (kernel/pins.py) the maps and links are pinned there, and
    programs a previous agent pinned are resumed instead of compiled when they
    are exactly the ones this agent would load.
    """

    def __init__(self, p: Plan, *, in_process: bool = False, pin_root: Path | None = None) -> None:
        self.plan = p
        text = assemble(p)
        self.resume = Resume(started_ktime=time.monotonic_ns())
        self.backend: Compiled | loader.Handed
        pinnable = pin_root is not None and not in_process and loader.supported()
        if pin_root is not None and pinnable:
            problem = pins_mod.bpffs_problem(pin_root)
            if problem is not None:
                p.missing["pins"] = f"{problem}; {NOT_PINNED}"
                pinnable = False
        if pin_root is not None and pinnable:
            self.backend = self._load_pinned(p, text, pin_root)
        elif in_process or not loader.supported():
            self.backend = Compiled(text, p.kernel_source, p.kprobe_symbol)
        else:
            try:
                fds, meta = loader.load_in_child(text, p.kernel_source, p.kprobe_symbol)
                self.backend = loader.Handed(fds, meta)
            except loader.HandoverError as exc:
                raise LoadError(str(exc)) from exc
        self.compiler_output = self.backend.compiler_output
        if self.backend.kprobe_error is not None:
            self._kprobe_failed(p, self.backend.kprobe_error)
        self.backend.set_masks(signal_mask(p.signals), signal_mask(p.stop_signals))

    # -- pins --------------------------------------------------------------------

    def _load_pinned(self, p: Plan, text: str, root: Path) -> loader.Handed:
        programs = pins_mod.digest(text, p.kprobe_symbol)
        sets = pins_mod.find(root)
        mine = next(
            (s for s in sets if s.layout == records.LAYOUT_VERSION and s.digest == programs),
            None,
        )
        if mine is not None:
            resumed = self._open_pinned(p, mine)
            if resumed is not None:
                for other in sets:
                    if other != mine:
                        self._retire(other, keep_reading=False)
                return resumed
            pins_mod.remove(mine)
            sets.remove(mine)
        try:
            fds, meta = loader.load_in_child(
                text, p.kernel_source, p.kprobe_symbol, tracefs=p.tracefs, link=True
            )
            backend = loader.Handed(fds, meta)
        except loader.HandoverError as exc:
            raise LoadError(str(exc)) from exc
        for hook, reason in backend.unlinked.items():
            p.missing[f"pin {hook}"] = f"{reason}; {NOT_PINNED}"
        try:
            self.resume.pins = pins_mod.pin(root, backend.fds, programs)
        except pins_mod.PinError as exc:
            p.missing["pins"] = f"{exc}; {NOT_PINNED}"
        # The new programs are attached: the old ones can go, and what they wrote
        # is read first (same layout) or counted (another layout).
        for old in sets:
            self._retire(old, keep_reading=old.layout == records.LAYOUT_VERSION)
        self.resume.skip_before_ktime = time.monotonic_ns() if self.resume.previous else 0
        return backend

    def _open_pinned(self, p: Plan, pinned: pins_mod.PinSet) -> loader.Handed | None:
        try:
            backend = loader.Handed(pins_mod.open_maps(pinned), {})
        except (pins_mod.PinError, loader.HandoverError):
            return None
        hooks = pins_mod.linked(pinned)
        if not hooks:
            backend.close()
            return None
        r = self.resume
        r.pins, r.resumed = pinned, True
        kprobe = pins_mod.entry_name(f"link:kprobe:{p.kprobe_symbol}")
        if p.kprobe_symbol is not None and kprobe not in hooks:
            backend.kprobe_error = "the pinned programs have no kprobe link"
        self._resume_ring(backend, r)
        return backend

    @staticmethod
    def _resume_ring(backend: loader.Handed, r: Resume) -> None:
        """Reads again from the previous agent's commit: the records of the kills
        it had not written out yet."""
        saved = backend.read_resume()
        ring = backend.ring
        before = ring.consumer
        if saved is not None:
            r.lost_baseline = {k: int(v) for k, v in enumerate(saved.lost_reported) if v}
            if saved.commit and saved.commit < before:
                if ring.rewind(saved.commit):
                    r.rewound_bytes = before - saved.commit
                else:
                    r.rewind_failed = True
        r.commit = ring.consumer
        r.backlog_records, r.backlog_bytes = ring.unread()

    def _retire(self, old: pins_mod.PinSet, *, keep_reading: bool) -> None:
        """Detaches a pin set's programs; reads its ring buffer to its end first
        (kept as `previous`) when its layout is this agent's, else counts it."""
        try:
            fds = pins_mod.open_maps(old)
        except pins_mod.PinError:
            fds = {}
        # Without their pins and these fds, the old links go and their programs
        # are detached: from here the old ring buffer only shrinks.
        for name in [n for n in fds if n.startswith("link:")]:
            os.close(fds.pop(name))
        pins_mod.unlink_programs(old)
        if keep_reading and self.resume.previous is None and "map:events" in fds:
            try:
                previous = loader.Handed(fds, {})
            except loader.HandoverError:
                pass
            else:
                self._resume_ring(previous, Resume())
                self.resume.previous, self.resume.previous_pins = previous, old
                return
        events = fds.get("map:events")
        if events is not None:
            try:
                ring = loader.RingBuffer(events)
                count, size = ring.unread()
                ring.close()
            except OSError:
                count, size = 0, 0
            self.resume.dropped.append(Dropped(old.layout, count, size))
        for fd in fds.values():
            os.close(fd)
        pins_mod.remove(old)

    def drain_previous(self, callback: RawCallback) -> int:
        """Reads the previous programs' ring buffer to its end (they are detached),
        then removes their pins; how many records."""
        r = self.resume
        if r.previous is None:
            return 0
        done = r.previous.ring.consume(callback)
        # Its maps stay open until close(): kills read from it may still be
        # checked against its `reported` map when they complete.
        if r.previous_pins is not None:
            pins_mod.remove(r.previous_pins)
        r.previous_pins = None
        return done

    @property
    def pinned(self) -> bool:
        return self.resume.pins is not None

    def record_end(self) -> int:
        """The ring buffer position past the record being handed to the callback."""
        if isinstance(self.backend, loader.Handed):
            return self.backend.ring.record_end
        return 0

    def commit(self, position: int, lost_reported: dict[int, int]) -> None:
        """Tells the next agent where to start reading: every kill whose records
        lie before ``position`` is written out."""
        if not self.pinned or not isinstance(self.backend, loader.Handed):
            return
        value = records.RawResume(commit=position, realtime_ns=time.time_ns())
        for kind, count in lost_reported.items():
            if 0 <= kind < records.REC_KINDS:
                value.lost_reported[kind] = count
        self.backend.write_resume(value)

    def mark_reported(self, kills: list[tuple[int, int]]) -> None:
        if self.pinned and isinstance(self.backend, loader.Handed):
            self.backend.mark_reported(kills)

    def was_reported(self, ktime_ns: int, tid: int) -> bool:
        """Whether a previous agent already wrote this kill out."""
        for backend in (self.backend, self.resume.previous):
            if isinstance(backend, loader.Handed) and backend.was_reported(ktime_ns, tid):
                return True
        return False

    # -- the programs ------------------------------------------------------------

    def _kprobe_failed(self, p: Plan, error: str) -> None:
        if p.requested_tier == "kprobe":
            self.backend.close()
            raise LoadError(f"--tier kprobe: {error}")
        p.missing[KPROBE_PROGRAM.hooks[0]] = error
        p.programs.remove(KPROBE_PROGRAM)
        p.tier = "tracepoint"

    def open(self, callback: RawCallback) -> None:
        """Calls `callback` with a copy of each record; it must only enqueue."""
        self.backend.open(callback)

    def poll(self, timeout_ms: int) -> None:
        self.backend.poll(timeout_ms)

    def lost_counts(self) -> dict[int, int]:
        """Records dropped for lack of ring-buffer room since load, by kind."""
        counts = {kind: self.backend.lost(kind) for kind in range(REC_KINDS)}
        return {kind: n for kind, n in counts.items() if n}

    def commands(self) -> loader.Commands | None:
        """The commands map, when argv is kept from exec on this kernel."""
        fds = self.backend.commands_fds()
        return loader.Commands(fds) if fds is not None else None

    def ring_peak(self) -> tuple[int, int] | None:
        """(the largest backlog a read found, the ring's size) in bytes, if known."""
        return self.backend.ring_peak()

    def close(self) -> None:
        self.backend.close()
        if self.resume.previous is not None:
            self.resume.previous.close()


NOT_PINNED: Final = "the kernel side ends with the agent: a restart's window is reported as a gap"
