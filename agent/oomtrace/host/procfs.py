"""A process's identity, ancestry, cgroups and memory read from /proc while it still exists.

Every read of one process goes through a file descriptor of its /proc/<pid> directory: that
directory stays bound to the process it was opened for, so once that process is reaped,
opens under it fail instead of reading another process that reused the pid.

Names (comm, argv, cgroup paths) are any bytes a process or root chose: they are
decoded as os.fsdecode() does (bytes that are not UTF-8 become lone surrogates),
so they stay exact and usable as paths; build.py makes them JSON-safe.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CLK_TCK",
    "MemoryHolder",
    "Parent",
    "ProcSnapshot",
    "kernel_start_to_ticks",
    "snapshot",
    "start_ticks",
    "tgid_of",
    "top_memory_holders",
    "tty_name",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAX_PARENTS = 32
# Enough for any real command line's head; /proc/<pid>/cmdline can be as long as ARG_MAX.
CMDLINE_MAX = 8192
_NSEC_PER_SEC = 1_000_000_000

_MEMORY_KEYS = ("VmSize", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmPTE", "VmSwap")


@dataclass(frozen=True, slots=True)
class Parent:
    pid: int
    comm: str


@dataclass(frozen=True, slots=True)
class ProcSnapshot:
    tgid: int
    start_ticks: int
    comm: str
    cmdline: list[str] | None  # [] for kernel threads and zombies
    uid: int | None  # real uid, as bpf_get_current_uid_gid() gives
    ppid: int | None
    parents: tuple[Parent, ...]  # nearest first, up to pid 1
    tty: str | None
    oom_score_adj: int | None
    memory_cgroup: str | None
    unified_cgroup: str | None
    memory_kb: dict[str, int]


@dataclass(frozen=True, slots=True)
class MemoryHolder:
    pid: int
    comm: str
    rss_kb: int


@dataclass(frozen=True, slots=True)
class _Stat:
    comm: str
    ppid: int
    tty_nr: int
    start_ticks: int


def _open_pid(pid: int) -> int | None:
    if pid <= 0:
        return None
    try:
        return os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _read(dir_fd: int, name: str, limit: int = 65536) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:  # ESRCH when the process went away between open and read
        return None
    finally:
        os.close(fd)


def _parse_stat(data: bytes | None) -> _Stat | None:
    if not data:
        return None
    # comm is whatever the program named itself, ")" and spaces included, so it ends at
    # the last ")"; the fields after it are plain numbers (field 3 is the state).
    open_paren, close_paren = data.find(b"("), data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        return None
    fields = data[close_paren + 2 :].split()
    try:
        return _Stat(
            comm=data[open_paren + 1 : close_paren].decode("utf-8", "surrogateescape"),
            ppid=int(fields[1]),
            tty_nr=int(fields[4]),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def _read_stat(pid: int) -> _Stat | None:
    dir_fd = _open_pid(pid)
    if dir_fd is None:
        return None
    try:
        return _parse_stat(_read(dir_fd, "stat"))
    finally:
        os.close(dir_fd)


def _status(data: bytes | None) -> dict[str, str]:
    fields = {}
    # Only "\n" ends a line: splitlines() would also break at "\x1c" or "\x85" in a Name a
    # process chose, and the pieces could pass for other keys.
    for line in (data or b"").decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def _decimal(text: str) -> int | None:
    """A non-negative decimal as the kernel prints it; None for anything else."""
    # isdigit() admits digits int() rejects ("\u00b2"), and int() rejects numbers too long to
    # convert: both are ValueErrors a reader of /proc must not raise.
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def tgid_of(tid: int) -> int | None:
    """The thread group (process) id of thread ``tid``; None when it is gone."""
    # /proc/<tid> resolves any thread's id, though readdir lists only group leaders.
    dir_fd = _open_pid(tid)
    if dir_fd is None:
        return None
    try:
        tgid = _status(_read(dir_fd, "status")).get("Tgid")
    finally:
        os.close(dir_fd)
    return _decimal(tgid) if tgid is not None else None


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    stat = _read_stat(pid)
    return stat.start_ticks if stat is not None else None


def kernel_start_to_ticks(start_ns: int) -> int:
    """A task's ``start_boottime`` (ns since boot) in the ticks /proc/<pid>/stat shows."""
    # do_task_stat() prints nsec_to_clock_t(start_boottime): a truncating division by
    # NSEC_PER_SEC / USER_HZ when USER_HZ divides a second, as every arch's 100 does.
    if _NSEC_PER_SEC % CLK_TCK == 0:
        return start_ns // (_NSEC_PER_SEC // CLK_TCK)
    return start_ns * CLK_TCK // _NSEC_PER_SEC


def tty_name(tty_nr: int) -> str | None:
    """Device name of a controlling terminal given as stat's ``tty_nr``; None for none."""
    if tty_nr == 0:
        return None
    # new_encode_dev(): minor bits 0-7 and 20-31, major bits 8-19.
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:  # UNIX98_PTY_SLAVE_MAJOR and the 7 after it
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4:
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    if major == 5:
        return {0: "tty", 1: "console", 2: "ptmx"}.get(minor, f"5:{minor}")
    if major == 3:  # BSD pty slaves
        return f"ttyp{minor}"
    named = {188: ("ttyUSB", 0), 166: ("ttyACM", 0), 204: ("ttyAMA", 64)}
    if major in named:
        prefix, first = named[major]
        if minor >= first:
            return f"{prefix}{minor - first}"
    return f"{major}:{minor}"


def _cgroups(data: bytes | None) -> tuple[str | None, str | None]:
    memory = unified = None
    # A cgroup's name may hold "\r", "\x85" or "\u2028", printed raw: only "\n" ends a line.
    for line in (data or b"").decode("utf-8", "surrogateescape").split("\n"):
        hierarchy, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2):
            continue
        # A v2 cgroup removed while the task still sits in it (an exiting task) is shown
        # with this suffix by proc_cgroup_show().
        path = path.removesuffix(" (deleted)")
        if hierarchy == "0" and not controllers:
            unified = path
        elif "memory" in controllers.split(","):
            memory = path
    # With no v1 line for it, the memory controller is on cgroup2.
    return (memory if memory is not None else unified), unified


def parents(ppid: int) -> tuple[Parent, ...]:
    chain: list[Parent] = []
    pid = ppid
    while pid > 0 and len(chain) < MAX_PARENTS:
        stat = _read_stat(pid)
        if stat is None:
            break
        chain.append(Parent(pid=pid, comm=stat.comm))
        if pid == 1:
            break
        pid = stat.ppid
    return tuple(chain)


def snapshot(
    pid: int, *, expect_start_ticks: int | None = None, with_parents: bool = True
) -> ProcSnapshot | None:
    """What /proc tells about ``pid`` now; None when it is gone or, with
    ``expect_start_ticks``, when ``pid`` now names a process that started at another time.

    Give a thread group id: /proc/<tid>/stat of a thread has the thread's own start time.
    """
    dir_fd = _open_pid(pid)
    if dir_fd is None:
        return None
    try:
        stat = _parse_stat(_read(dir_fd, "stat"))
        if stat is None:
            return None
        if expect_start_ticks is not None and stat.start_ticks != expect_start_ticks:
            return None
        status = _status(_read(dir_fd, "status"))
        cmdline_raw = _read(dir_fd, "cmdline", CMDLINE_MAX)
        oom_raw = _read(dir_fd, "oom_score_adj")
        cgroup_raw = _read(dir_fd, "cgroup")
    finally:
        os.close(dir_fd)

    cmdline = None
    if cmdline_raw is not None:
        cmdline = [a.decode("utf-8", "surrogateescape") for a in cmdline_raw.split(b"\0")]
        if cmdline and cmdline[-1] == "":
            cmdline.pop()
    uid_fields = status.get("Uid", "").split()
    tgid = _decimal(status.get("Tgid", ""))
    memory_kb = {}
    for key in _MEMORY_KEYS:
        value = _decimal(status.get(key, "").removesuffix(" kB"))
        if value is not None:
            memory_kb[key] = value
    memory_cgroup, unified_cgroup = _cgroups(cgroup_raw)
    return ProcSnapshot(
        tgid=tgid if tgid is not None else pid,
        start_ticks=stat.start_ticks,
        comm=stat.comm,
        cmdline=cmdline,
        uid=_decimal(uid_fields[0]) if uid_fields else None,
        ppid=stat.ppid,
        parents=parents(stat.ppid) if with_parents else (),
        tty=tty_name(stat.tty_nr),
        oom_score_adj=_int(oom_raw),
        memory_cgroup=memory_cgroup,
        unified_cgroup=unified_cgroup,
        memory_kb=memory_kb,
    )


def _int(data: bytes | None) -> int | None:
    try:
        return int(data) if data is not None else None
    except ValueError:
        return None


def top_memory_holders(pids: Iterable[int], n: int) -> list[MemoryHolder]:
    """The ``n`` of ``pids`` with the largest resident set, largest first; gone ones skipped."""
    holders = []
    for pid in pids:
        dir_fd = _open_pid(pid)
        if dir_fd is None:
            continue
        try:
            statm = _read(dir_fd, "statm")
            stat = _parse_stat(_read(dir_fd, "stat"))
        finally:
            os.close(dir_fd)
        fields = statm.split() if statm else []
        # statm's second field is resident pages: anon + file + shmem, as VmRSS.
        rss_pages = _decimal(fields[1].decode("ascii", "replace")) if len(fields) >= 2 else None
        if stat is None or rss_pages is None:
            continue
        holders.append(MemoryHolder(pid=pid, comm=stat.comm, rss_kb=rss_pages * PAGE_SIZE // 1024))
    return heapq.nlargest(n, holders, key=lambda h: h.rss_kb)


def raw_cmdline(pid: int) -> bytes | None:
    """/proc/<pid>/cmdline as the kernel keeps it (NUL-separated, up to
    CMDLINE_MAX); empty for kernel threads and zombies, None when gone."""
    dir_fd = _open_pid(pid)
    if dir_fd is None:
        return None
    try:
        return _read(dir_fd, "cmdline", CMDLINE_MAX)
    finally:
        os.close(dir_fd)


_SIGKILL_BIT = 1 << 8  # SIGKILL (9) in a /proc pending-signal mask


def lives_on(pid: int) -> bool | None:
    """Whether process ``pid`` runs and has not been killed: not a zombie, and no
    SIGKILL pending for its group (a kill stays in ShdPnd, the group's shared
    pending set, from the moment it is sent until the process is reaped). None
    when /proc cannot say."""
    dir_fd = _open_pid(pid)
    if dir_fd is None:
        return False
    try:
        fields = _status(_read(dir_fd, "status"))
    finally:
        os.close(dir_fd)
    state, pending = fields.get("State", ""), fields.get("ShdPnd")
    if not state or pending is None:
        return None
    try:
        killed = bool(int(pending, 16) & _SIGKILL_BIT)
    except ValueError:
        return None
    return state[0] not in "ZX" and not killed


def all_pids() -> list[int]:
    """Every process on the node (as this pid namespace sees it)."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
