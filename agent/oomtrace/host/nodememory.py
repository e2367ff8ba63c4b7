"""The node's memory as the kubelet's eviction manager sees it, read from /proc and cgroupfs.

The eviction manager does not read /proc/meminfo's MemAvailable. Its ``memory.available``
signal is the root cgroup's limit minus the root cgroup's working set, and its
``allocatableMemory.available`` signal is the same for the kubepods cgroup; both come from
the cAdvisor stats of those cgroups. The facts this module follows, by function name:

- kubelet ``makeSignalObservations`` (pkg/kubelet/eviction/helpers.go): the signals are the
  node's and the "pods" system container's ``AvailableBytes``; the capacity a percentage
  threshold is taken of is ``AvailableBytes + WorkingSetBytes``.
- kubelet ``cadvisorInfoToCPUandMemoryStats`` (pkg/kubelet/stats/helper.go): ``AvailableBytes``
  is the cgroup's memory limit minus its working set, and is left out when
  ``isMemoryUnlimited`` (a limit above 1<<62).
- cAdvisor raw handler ``GetSpec``: the root cgroup's limit is the machine's memory,
  ``GetMachineMemoryCapacity`` (MemTotal of /proc/meminfo, kB times 1024).
- cAdvisor libcontainer handler ``setMemoryStats``: the working set is usage minus
  ``total_inactive_file`` (v1) or ``inactive_file`` (v2) of memory.stat, floored at 0; with no
  such key nothing is subtracted.
- opencontainers/cgroups fs2 ``statMemory`` / ``rootStatsFromMeminfo``: a v2 cgroup's usage is
  memory.current, but the root cgroup has none, so its usage is ``anon + file`` of the root's
  memory.stat (what v1's memory.usage_in_bytes counts: rss + cache).

Every file is parsed by a pure function of its text; ``read`` reads them below a root
directory, so a fake tree stands in for the host in tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "KUBEPODS_NAMES",
    "Formula",
    "NodeMemory",
    "compute",
    "parse_bytes",
    "parse_limit",
    "parse_memtotal",
    "parse_psi",
    "parse_stat",
    "read",
    "v2_root_usage",
    "working_set",
]

Formula = Literal["cgroup v1", "cgroup v2"]

# The kubepods cgroup under the systemd driver, then under the cgroupfs driver.
KUBEPODS_NAMES: Final = ("kubepods.slice", "kubepods")

# The kubelet's isMemoryUnlimited: a limit above 1<<62 is no limit. v2 shows "max"; v1 shows
# PAGE_COUNTER_MAX pages in bytes, just below 2**63.
_UNLIMITED_ABOVE: Final = 1 << 62

# A count of bytes as the kernel prints it; the length bound keeps int() cheap on garbage.
_DIGITS = re.compile(r"[0-9]{1,20}")
_PSI_AVG = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")


@dataclass(frozen=True, slots=True)
class NodeMemory:
    """What the eviction manager would observe now; None where a file could not be read."""

    capacity_bytes: int | None  # MemTotal
    working_set_bytes: int | None  # of the root cgroup
    available_bytes: int | None  # memory.available: capacity - working set, floor 0
    # allocatableMemory.available: the kubepods cgroup's limit minus its working set, floor
    # 0; None when there is no kubepods cgroup, or it has no limit (the kubelet then has no
    # such signal).
    allocatable_available_bytes: int | None
    # The kubepods limit: what a percentage threshold on allocatableMemory.available is
    # taken of.
    allocatable_capacity_bytes: int | None
    psi_some_avg10: float | None  # /proc/pressure/memory; None without PSI
    psi_full_avg10: float | None
    formula: Formula


def _nonnegative_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if _DIGITS.fullmatch(text) else None


def parse_memtotal(text: str) -> int | None:
    """MemTotal of /proc/meminfo in bytes (the kernel prints kB), or None."""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "MemTotal":
            fields = rest.split()
            if len(fields) == 2 and fields[1] == "kB":
                kb = _nonnegative_int(fields[0])
                return None if kb is None else kb * 1024
            return None
    return None


def parse_stat(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (memory.stat): name -> value; malformed lines are skipped."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            value = _nonnegative_int(fields[1])
            if value is not None:
                values[fields[0]] = value
    return values


def parse_bytes(text: str) -> int | None:
    """A single count of bytes (memory.current, memory.usage_in_bytes), or None."""
    return _nonnegative_int(text)


def parse_limit(text: str) -> int | Literal["max"] | None:
    """A memory limit (memory.max, memory.limit_in_bytes): bytes, "max" for no limit, or None
    when malformed."""
    text = text.strip()
    if text == "max":
        return "max"
    value = _nonnegative_int(text)
    if value is None:
        return None
    return "max" if value > _UNLIMITED_ABOVE else value


def parse_psi(text: str) -> tuple[float | None, float | None]:
    """avg10 of the "some" and "full" lines of a pressure file; None for a missing line."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        kind, *pairs = line.split() or [""]
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key == "avg10" and kind in ("some", "full") and _PSI_AVG.fullmatch(value):
                found[kind] = float(value)
    return found.get("some"), found.get("full")


def working_set(usage: int, stat: Mapping[str, int], inactive_key: str) -> int:
    """Usage minus inactive file pages, floored at 0 (cAdvisor ``setMemoryStats``).

    Inactive file pages are the first the kernel reclaims, so they do not count as in use;
    active file pages do, which is why a node full of page cache can still be evicted from.
    """
    return max(usage - stat.get(inactive_key, 0), 0)


def v2_root_usage(stat: Mapping[str, int]) -> int | None:
    """The v2 root cgroup's usage: ``anon + file`` of its memory.stat (``rootStatsFromMeminfo``).

    Kernel memory, sockets and the like are left out, as v1's root usage_in_bytes leaves them
    out. None when memory.stat lacks either line.
    """
    anon, file = stat.get("anon"), stat.get("file")
    return None if anon is None or file is None else anon + file


def _inactive_key(formula: Formula) -> str:
    # v1 memory.stat has the cgroup's own inactive_file and the hierarchical total_*; the
    # hierarchical one matches usage_in_bytes, which counts the descendants too.
    return "inactive_file" if formula == "cgroup v2" else "total_inactive_file"


def _cgroup_working_set(
    usage_text: str | None, stat_text: str | None, formula: Formula
) -> int | None:
    if usage_text is None or stat_text is None:
        return None
    usage = parse_bytes(usage_text)
    if usage is None:
        return None
    return working_set(usage, parse_stat(stat_text), _inactive_key(formula))


def compute(
    *,
    formula: Formula,
    meminfo: str | None,
    root_stat: str | None,
    root_usage: str | None = None,
    kubepods_usage: str | None = None,
    kubepods_limit: str | None = None,
    kubepods_stat: str | None = None,
    pressure: str | None = None,
) -> NodeMemory:
    """NodeMemory from the files' texts (None for a file that could not be read).

    ``root_usage`` is v1's root memory.usage_in_bytes; on v2 the root has no usage file and
    its usage comes from ``root_stat``. The kubepods texts are that cgroup's memory.current
    (v2) or memory.usage_in_bytes (v1), memory.max or memory.limit_in_bytes, and memory.stat.
    """
    capacity = parse_memtotal(meminfo) if meminfo is not None else None

    root_ws: int | None
    if formula == "cgroup v2":
        root_ws = None
        if root_stat is not None:
            stat = parse_stat(root_stat)
            usage = v2_root_usage(stat)
            if usage is not None:
                root_ws = working_set(usage, stat, _inactive_key(formula))
    else:
        root_ws = _cgroup_working_set(root_usage, root_stat, formula)

    available = None
    if capacity is not None and root_ws is not None:
        available = max(capacity - root_ws, 0)

    pods_available = pods_capacity = None
    pods_ws = _cgroup_working_set(kubepods_usage, kubepods_stat, formula)
    limit = parse_limit(kubepods_limit) if kubepods_limit is not None else None
    # An unlimited kubepods ("max", which cAdvisor reads as the largest uint64) has no
    # AvailableBytes in the kubelet's stats (isMemoryUnlimited), so no signal either.
    if limit is not None and limit != "max":
        pods_capacity = limit
    if pods_ws is not None and pods_capacity is not None:
        pods_available = max(pods_capacity - pods_ws, 0)

    some, full = parse_psi(pressure) if pressure is not None else (None, None)
    return NodeMemory(
        capacity_bytes=capacity,
        working_set_bytes=root_ws,
        available_bytes=available,
        allocatable_available_bytes=pods_available,
        allocatable_capacity_bytes=pods_capacity,
        psi_some_avg10=some,
        psi_full_avg10=full,
        formula=formula,
    )


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("ascii", "replace")
    except (OSError, ValueError):
        return None


def read(root: Path = Path("/"), *, kubepods: Sequence[str] = KUBEPODS_NAMES) -> NodeMemory:
    """Read the node's memory from the files under ``root`` (the host's "/" by default).

    ``kubepods`` names the kubepods cgroup, relative to the memory hierarchy's root, in the
    order to try: under a kubelet ``--cgroup-root`` it is not at the top.
    """
    cgroup = root / "sys/fs/cgroup"
    # cgroup.controllers exists only at the root of a cgroup2 hierarchy: the unified layout.
    # A hybrid host (cgroup2 at sys/fs/cgroup/unified) keeps memory on v1, as the kubelet does.
    formula: Formula = "cgroup v2" if (cgroup / "cgroup.controllers").is_file() else "cgroup v1"
    if formula == "cgroup v2":
        memory, usage_file, limit_file = cgroup, "memory.current", "memory.max"
    else:
        memory = cgroup / "memory"
        usage_file, limit_file = "memory.usage_in_bytes", "memory.limit_in_bytes"

    pods = next((memory / name for name in kubepods if (memory / name).is_dir()), None)
    return compute(
        formula=formula,
        meminfo=_read_text(root / "proc/meminfo"),
        root_stat=_read_text(memory / "memory.stat"),
        root_usage=_read_text(memory / usage_file) if formula == "cgroup v1" else None,
        kubepods_usage=_read_text(pods / usage_file) if pods else None,
        kubepods_limit=_read_text(pods / limit_file) if pods else None,
        kubepods_stat=_read_text(pods / "memory.stat") if pods else None,
        pressure=_read_text(root / "proc/pressure/memory"),
    )
