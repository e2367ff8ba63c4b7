"""The node's memory.available as the kubelet's eviction manager computes it, read
here without the agent's code, so that a test of the agent's reading does not
check the agent against itself.

memory.available is the machine's memory (MemTotal, the root cgroup's limit in
cAdvisor) minus the root cgroup's working set: its usage less its inactive file
pages. On cgroup v1 the usage is the memory hierarchy root's
memory.usage_in_bytes and the inactive pages total_inactive_file; cgroup v2 has no
memory.current at the root, so runc's cgroup stats (fs2 rootStatsFromMeminfo) take
anon + file of the root's memory.stat, and the inactive pages are inactive_file.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.memcg import memory_root


def _stat(path: Path) -> dict[str, int]:
    fields = (line.split() for line in path.read_text().splitlines())
    return {name: int(value) for name, value in fields}


def capacity_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def working_set_bytes() -> int:
    root, version = memory_root()
    stat = _stat(root / "memory.stat")
    if version == 1:
        usage = int((root / "memory.usage_in_bytes").read_text())
        inactive = stat["total_inactive_file"]
    else:
        usage = stat["anon"] + stat["file"]
        inactive = stat["inactive_file"]
    return max(usage - inactive, 0)


def available_bytes() -> int:
    return max(capacity_bytes() - working_set_bytes(), 0)
