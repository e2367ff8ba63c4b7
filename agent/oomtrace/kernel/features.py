"""What the running kernel offers oomtrace: probed, never assumed.

Everything here reads the kernel's own descriptions (tracefs format files, BTF,
kallsyms, /lib/modules) so the loader can pick programs and #defines that compile
and attach on this kernel, and say why a hook is missing.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from oomtrace.kernel import records
from oomtrace.kernel.btf import Btf, BtfError

TRACEFS_CANDIDATES: Final = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
BTF_VMLINUX: Final = Path("/sys/kernel/btf/vmlinux")

# task_struct walk of common.bpf.h: macro name -> (struct, member path).
TASK_OFFSETS: Final[dict[str, tuple[str, str]]] = {
    "OFF_TASK_PID": ("task_struct", "pid"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_TASK_COMM": ("task_struct", "comm"),
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "OFF_TASK_START_BOOTTIME": ("task_struct", "start_boottime"),
    "OFF_TASK_SIGNAL": ("task_struct", "signal"),
    "OFF_TASK_CGROUPS": ("task_struct", "cgroups"),
    "OFF_TASK_EXIT_CODE": ("task_struct", "exit_code"),
    "OFF_TASK_REAL_CRED": ("task_struct", "real_cred"),
    "OFF_TASK_MM": ("task_struct", "mm"),
    "OFF_MM_ARG_START": ("mm_struct", "arg_start"),
    "OFF_MM_ARG_END": ("mm_struct", "arg_end"),
    "OFF_CRED_UID": ("cred", "uid"),
    "OFF_SIGNAL_OOM_SCORE_ADJ": ("signal_struct", "oom_score_adj"),
    "OFF_SIGNAL_TTY": ("signal_struct", "tty"),
    "OFF_TTY_NAME": ("tty_struct", "name"),
    "OFF_CSS_SET_SUBSYS": ("css_set", "subsys"),
    "OFF_CSS_SET_DFL_CGRP": ("css_set", "dfl_cgrp"),
    "OFF_CSS_CGROUP": ("cgroup_subsys_state", "cgroup"),
    "OFF_CGROUP_KN": ("cgroup", "kn"),
    "OFF_KERNFS_NODE_ID": ("kernfs_node", "id"),
    "OFF_CSS_PARENT": ("cgroup_subsys_state", "parent"),
    "OFF_MEMCG_CSS": ("mem_cgroup", "css"),
    "OFF_MEMCG_MEMORY": ("mem_cgroup", "memory"),
    "OFF_MEMCG_OOM_GROUP": ("mem_cgroup", "oom_group"),
    "OFF_PAGE_COUNTER_USAGE": ("page_counter", "usage"),
    "OFF_PAGE_COUNTER_MAX": ("page_counter", "max"),
    "OFF_KSIGACTION_HANDLER": ("k_sigaction", "sa.sa_handler"),
}


# oom_kill_process(struct oom_control *oc, ...) as read by bpf/oom_kill.bpf.c.
KPROBE_OFFSETS: Final[dict[str, tuple[str, str]]] = {
    "OFF_OC_MEMCG": ("oom_control", "memcg"),
    "OFF_OC_GFP_MASK": ("oom_control", "gfp_mask"),
    "OFF_OC_ORDER": ("oom_control", "order"),
    "OFF_OC_TOTALPAGES": ("oom_control", "totalpages"),
    "OFF_OC_CHOSEN": ("oom_control", "chosen"),
    "OFF_OC_CHOSEN_POINTS": ("oom_control", "chosen_points"),
    "OFF_OC_CONSTRAINT": ("oom_control", "constraint"),
}

# enum oom_constraint, named as oomtrace reports it.
CONSTRAINT_NAMES: Final = {
    "CONSTRAINT_NONE": "global",
    "CONSTRAINT_CPUSET": "cpuset",
    "CONSTRAINT_MEMORY_POLICY": "mempolicy",
    "CONSTRAINT_MEMCG": "memcg",
}

# gfp flag names. Kernels since v6.8 describe their bits in an enum (___GFP_<NAME>_BIT)
# that BTF carries; older ones only have #defines, whose v5.x-v6.7 values follow.
GFP_NAMES: Final = (
    "DMA", "HIGHMEM", "DMA32", "MOVABLE", "RECLAIMABLE", "HIGH", "IO", "FS", "ZERO",
    "UNUSED", "ATOMIC", "DIRECT_RECLAIM", "KSWAPD_RECLAIM", "WRITE", "NOWARN",
    "RETRY_MAYFAIL", "NOFAIL", "NORETRY", "MEMALLOC", "COMP", "NOMEMALLOC", "HARDWALL",
    "THISNODE", "ACCOUNT", "ZEROTAGS", "SKIP_ZERO", "SKIP_KASAN", "SKIP_KASAN_UNPOISON",
    "SKIP_KASAN_POISON", "NOLOCKDEP", "NO_OBJ_EXT",
)  # fmt: skip
GFP_BITS_BEFORE_6_8: Final = {
    "DMA": 0, "HIGHMEM": 1, "DMA32": 2, "MOVABLE": 3, "RECLAIMABLE": 4, "HIGH": 5, "IO": 6,
    "FS": 7, "ZERO": 8, "ATOMIC": 9, "DIRECT_RECLAIM": 10, "KSWAPD_RECLAIM": 11,
    "WRITE": 12, "NOWARN": 13, "RETRY_MAYFAIL": 14, "NOFAIL": 15, "NORETRY": 16,
    "MEMALLOC": 17, "COMP": 18, "NOMEMALLOC": 19, "HARDWALL": 20, "THISNODE": 21,
    "ACCOUNT": 22, "ZEROTAGS": 23,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class KernelVocabulary:
    """How this kernel numbers what the kprobe reads."""

    gfp_bits: dict[str, int]
    constraints: dict[int, str]

    def gfp_flags(self, mask: int) -> list[str]:
        return [f"__GFP_{name}" for name, bit in self.gfp_bits.items() if mask & (1 << bit)]


def vocabulary(btf: Btf | None) -> KernelVocabulary:
    gfp: dict[str, int] = {}
    constraints = dict(enumerate(CONSTRAINT_NAMES.values()))
    if btf is not None:
        for name in GFP_NAMES:
            try:
                gfp[name] = btf.enumerator_value(f"___GFP_{name}_BIT")
            except BtfError:
                continue
        found: dict[int, str] = {}
        for enumerator, label in CONSTRAINT_NAMES.items():
            try:
                found[btf.enumerator_value(enumerator)] = label
            except BtfError:
                continue
        constraints = found or constraints
    return KernelVocabulary(gfp_bits=gfp or dict(GFP_BITS_BEFORE_6_8), constraints=constraints)


def find_symbol(
    name: str, kallsyms: Path = Path("/proc/kallsyms"), tracefs: Path | None = None
) -> str | None:
    """The kernel's symbol for function `name`: itself, or a compiler clone
    (name.constprop.0, name.isra.0) when only that exists. `.cold` parts are
    not entry points.

    Read from /proc/kallsyms, or where that is hidden (systemd's
    ProtectKernelTunables= masks it) from tracefs's available_filter_functions,
    the functions a kprobe can attach to."""
    sources = [(kallsyms, 2)]
    if tracefs is not None:
        sources.append((tracefs / "available_filter_functions", 0))
    for path, column in sources:
        clone: str | None = None
        try:
            with path.open(encoding="ascii", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) <= column or not parts[column].startswith(name):
                        continue
                    symbol = parts[column]
                    if symbol == name:
                        return symbol
                    if symbol.startswith(name + ".") and not symbol.endswith(".cold"):
                        clone = clone or symbol
        except OSError:
            continue
        return clone
    return None


class TracefsError(RuntimeError):
    """tracefs is neither mounted nor mountable."""


def find_tracefs(*, mount: bool) -> Path:
    """Returns the tracefs directory, mounting it at /sys/kernel/tracing if asked."""
    for candidate in TRACEFS_CANDIDATES:
        if (candidate / "events").is_dir():
            return candidate
    target = TRACEFS_CANDIDATES[0]
    if mount:
        result = subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0 and (target / "events").is_dir():
            return target
        reason = result.stderr.strip() or f"exit {result.returncode}"
        raise TracefsError(
            f"tracefs is not mounted and mounting it failed ({reason}); "
            f"mount it with: mount -t tracefs nodev {target}"
        )
    raise TracefsError(f"tracefs is not mounted; mount it with: mount -t tracefs nodev {target}")


@dataclass(frozen=True, slots=True)
class TracepointFormat:
    fields: frozenset[str]


def read_tracepoint_format(tracefs: Path, category: str, event: str) -> TracepointFormat | None:
    """The field names of a tracepoint, or None when the kernel lacks it."""
    try:
        text = (tracefs / "events" / category / event / "format").read_text()
    except OSError:
        return None
    names: set[str] = set()
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line.startswith("field:"):
            continue
        decl = line[len("field:") :].split(";", 1)[0]
        name = decl.split()[-1].split("[", 1)[0]
        names.add(name)
    return TracepointFormat(fields=frozenset(names))


@dataclass(frozen=True, slots=True)
class TaskOffsets:
    """Byte offsets for the BPF task_struct walk, learnt from BTF."""

    values: dict[str, int]

    def defines(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.values.items()}


def task_offsets(btf: Btf) -> TaskOffsets:
    values = {
        name: btf.offset_of(struct, member) for name, (struct, member) in TASK_OFFSETS.items()
    }
    values["MEMORY_CGRP_ID"] = btf.enum_value("cgroup_subsys_id", "memory_cgrp_id")
    if values["OFF_MEMCG_CSS"] != 0:
        raise BtfError("mem_cgroup.css is not the first member; the memcg walk assumes it is")
    return TaskOffsets(values=values)


def kernel_headers_dir(release: str | None = None) -> Path | None:
    """The running kernel's header tree, which bcc finds by itself when it exists."""
    build = Path("/lib/modules") / (release or platform.release()) / "build"
    try:
        return build if build.is_dir() else None
    except OSError:
        # Hidden (systemd's ProtectKernelModules= makes /lib/modules unreadable):
        # the stub tree and BTF stand in, as on a kernel without headers.
        return None


def has_kprobes(tracefs: Path) -> bool:
    return (tracefs / "kprobe_events").exists()


@dataclass(slots=True)
class KernelFeatures:
    """A snapshot of the probed kernel facts the loader decides on."""

    release: str
    tracefs: Path
    tracepoints: dict[str, TracepointFormat | None]
    headers: Path | None
    offsets: TaskOffsets | None
    offsets_error: str | None
    kprobe_offsets: TaskOffsets | None
    kprobe_offsets_error: str | None
    vocabulary: KernelVocabulary
    kprobes: bool
    notes: list[str] = field(default_factory=list)

    def has_tracepoint(self, name: str) -> bool:
        return self.tracepoints.get(name) is not None

    def tracepoint_has_field(self, name: str, field_name: str) -> bool:
        fmt = self.tracepoints.get(name)
        return fmt is not None and field_name in fmt.fields


# What commands.bpf.c attaches: it writes a map, not records.
COMMANDS_HOOKS: Final = ("sched:sched_process_exec", "sched:sched_process_fork")
# What the record kinds are written from, and the commands program: the
# tracepoints the loader may attach.
TRACEPOINTS: Final = records.tracepoints() + COMMANDS_HOOKS


def probe_kernel(tracefs: Path, *, btf_path: Path = BTF_VMLINUX) -> KernelFeatures:
    tracepoints = {
        name: read_tracepoint_format(tracefs, *name.split(":", 1)) for name in TRACEPOINTS
    }
    offsets: TaskOffsets | None = None
    kprobe_offsets: TaskOffsets | None = None
    offsets_error: str | None = None
    kprobe_offsets_error: str | None = None
    btf: Btf | None = None
    if btf_path.exists():
        try:
            btf = Btf.load(btf_path)
            offsets = task_offsets(btf)
        except (BtfError, OSError) as exc:
            offsets_error = f"BTF unusable: {exc}"
        if btf is not None and offsets is not None:
            try:
                kprobe_offsets = TaskOffsets(
                    values={n: btf.offset_of(s, m) for n, (s, m) in KPROBE_OFFSETS.items()}
                )
            except BtfError as exc:
                kprobe_offsets_error = f"BTF lacks what the kprobe reads: {exc}"
    else:
        offsets_error = f"no BTF at {btf_path}"
    return KernelFeatures(
        release=platform.release(),
        tracefs=tracefs,
        tracepoints=tracepoints,
        headers=kernel_headers_dir(),
        offsets=offsets,
        offsets_error=offsets_error,
        kprobe_offsets=kprobe_offsets,
        kprobe_offsets_error=kprobe_offsets_error or offsets_error,
        vocabulary=vocabulary(btf),
        kprobes=has_kprobes(tracefs),
    )
