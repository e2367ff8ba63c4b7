"""Memory cgroup state (limit, usage, stat, events) read from cgroupfs, v1 or v2."""

from __future__ import annotations

import os

from oomtrace.host.cgroupfs import Hierarchy

__all__ = ["ancestry", "common_ancestor", "read_memcg", "subtree_pids"]

# "No limit": v2 shows "max"; v1 shows PAGE_COUNTER_MAX pages in bytes (LONG_MAX rounded down
# to a page, 9223372036854771712 with 4 KiB pages). Nobody sets a real limit this high.
_UNLIMITED = 2**62

# memory.stat keys that are byte counts on cgroup v2 (the rest are event counters).
_V2_STAT_BYTES = (
    "anon",
    "file",
    "kernel",
    "kernel_stack",
    "pagetables",
    "sec_pagetables",
    "percpu",
    "sock",
    "vmalloc",
    "shmem",
    "zswap",
    "zswapped",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "swapcached",
    "anon_thp",
    "file_thp",
    "shmem_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "slab",
)

# v1 memory.stat name -> v2 name. The total_* variants (hierarchical: the cgroup and its
# descendants, as v2 counts) are preferred when the kernel has them.
_V1_STAT_BYTES = {
    "rss": "anon",
    "cache": "file",
    "shmem": "shmem",
    "mapped_file": "file_mapped",
    "dirty": "file_dirty",
    "writeback": "file_writeback",
    "swap": "swap",
    "rss_huge": "anon_thp",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
}


def _open_dir(hierarchy: Hierarchy, path: str) -> int | None:
    directory = hierarchy.dir_of(path)
    if directory is None:
        return None
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _read(dir_fd: int, name: str) -> str | None:
    # Opening relative to the directory's fd keeps every read on the same cgroup even if
    # its path is removed and made again meanwhile; once removed, opens fail (ENOENT).
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _limit(text: str | None) -> int | None:
    if text is None or text.strip() == "max":
        return None
    value = _int(text)
    # No limit is negative (writing -1 sets the unlimited maximum); one read as a limit
    # would make capture take an unlimited memcg for the one whose limit was hit.
    return value if value is not None and 0 <= value < _UNLIMITED else None


def _flat_keyed(text: str | None) -> dict[str, int] | None:
    if text is None:
        return None
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = int(value)
        except ValueError:
            continue
    return values


def _limit_file(hierarchy: Hierarchy) -> str:
    return "memory.max" if hierarchy.version == 2 else "memory.limit_in_bytes"


def _v1_stat(raw: dict[str, int]) -> dict[str, int]:
    stat = {}
    for v1_name, name in _V1_STAT_BYTES.items():
        value = raw.get(f"total_{v1_name}", raw.get(v1_name))
        if value is not None:
            stat[name] = value
    return stat


def read_memcg(hierarchy: Hierarchy, path: str) -> dict[str, object] | None:
    """Limit, usage, working set, stat (bytes) and events of memcg ``path``; None when its
    directory is gone. A file that cannot be read leaves its key None."""
    dir_fd = _open_dir(hierarchy, path)
    if dir_fd is None:
        return None
    try:
        limit = _limit(_read(dir_fd, _limit_file(hierarchy)))
        stat: dict[str, int] | None
        events: dict[str, int] | None
        if hierarchy.version == 2:
            usage = _int(_read(dir_fd, "memory.current"))
            raw = _flat_keyed(_read(dir_fd, "memory.stat"))
            stat = {k: raw[k] for k in _V2_STAT_BYTES if k in raw} if raw is not None else None
            events = _flat_keyed(_read(dir_fd, "memory.events"))
        else:
            usage = _int(_read(dir_fd, "memory.usage_in_bytes"))
            raw = _flat_keyed(_read(dir_fd, "memory.stat"))
            stat = _v1_stat(raw) if raw is not None else None
            events = _flat_keyed(_read(dir_fd, "memory.oom_control"))
            failcnt = _int(_read(dir_fd, "memory.failcnt"))
            if failcnt is not None:
                events = {**(events or {}), "failcnt": failcnt}
    finally:
        os.close(dir_fd)
    working_set = None
    inactive_file = stat.get("inactive_file") if stat is not None else None
    if usage is not None and inactive_file is not None:
        # kubelet's eviction signal and cAdvisor's container_memory_working_set_bytes.
        working_set = max(usage - inactive_file, 0)
    return {
        "path": path,
        "limit_bytes": limit,
        "usage_bytes": usage,
        "working_set_bytes": working_set,
        "stat": stat,
        "events": events,
    }


def ancestry(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def common_ancestor(a: str, b: str) -> str:
    """The deepest cgroup path that is ``a`` or an ancestor of it, and the same of ``b``."""
    common = []
    for x, y in zip((p for p in a.split("/") if p), (p for p in b.split("/") if p), strict=False):
        if x != y:
            break
        common.append(x)
    return "/" + "/".join(common)


def subtree_pids(hierarchy: Hierarchy, path: str) -> dict[int, str]:
    """Every process in the memcg at ``path`` and below it, with the memcg it is in.

    A dying process's /proc/<pid>/cgroup may already read "/", so the directory
    a pid was listed in is the reliable answer here.
    """
    top = hierarchy.dir_of(path)
    if top is None:
        return {}
    base = path.rstrip("/")
    pids: dict[int, str] = {}
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" not in files:
            continue
        rel = os.path.relpath(dirpath, top)
        where = base if rel == "." else f"{base}/{rel}"
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                for line in f:
                    if line.strip():
                        pids[int(line)] = where or "/"
        except (OSError, ValueError):
            continue
    return pids
