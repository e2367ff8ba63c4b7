"""Which capabilities oomtrace needs, named when missing."""

from __future__ import annotations

from pathlib import Path
from typing import Final

CAP_SYS_PTRACE: Final = 19
CAP_SYS_ADMIN: Final = 21
CAP_PERFMON: Final = 38
CAP_BPF: Final = 39

NAMES: Final = {
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}


def effective_caps(status: Path = Path("/proc/self/status")) -> int:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return CAP_BPF


def missing_for_bpf(caps: int, last: int) -> list[str]:
    """Capabilities still needed to load and attach tracing BPF programs.

    Since v5.8 CAP_BPF + CAP_PERFMON suffice; before, only CAP_SYS_ADMIN does.
    """
    if caps & (1 << CAP_SYS_ADMIN):
        return []
    if last < CAP_BPF:
        return [NAMES[CAP_SYS_ADMIN]]
    return [NAMES[c] for c in (CAP_BPF, CAP_PERFMON) if not caps & (1 << c)]
