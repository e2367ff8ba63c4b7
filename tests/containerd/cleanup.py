"""Removing what a test containerd leaves on the host when the CRI could not remove it:
processes, mounts and cgroup directories. Each helper touches only what it is named."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    found = []
    for fields in _mountinfo():
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            found.append(Path(fields[4]))
    return found


def memory_hierarchy() -> Path:
    """Mount point of the hierarchy that holds the memory controller: the v1 memory
    hierarchy where there is one (hybrid or legacy), else the cgroup2 hierarchy if memory
    is among its controllers. A v2 hierarchy is told by its root's cgroup.controllers."""
    unified = None
    for fields in _mountinfo():
        dash = fields.index("-")
        fstype, options = fields[dash + 1], fields[dash + 3]
        if fstype == "cgroup" and "memory" in options.split(","):
            return Path(fields[4])
        if fstype == "cgroup2" and unified is None:
            unified = Path(fields[4])
    if unified is not None:
        with contextlib.suppress(OSError):
            if "memory" in (unified / "cgroup.controllers").read_text().split():
                return unified
    raise LookupError("no cgroup hierarchy with the memory controller is mounted")


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first."""
    root = root.resolve()
    points = [Path(fields[4]) for fields in _mountinfo()]
    inside = [p for p in points if p == root or root in p.parents]
    return sorted(set(inside), key=lambda p: len(p.parts), reverse=True)


def unmount_all(root: Path) -> None:
    for point in mounts_under(root):
        done = subprocess.run(["umount", str(point)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def shim_pids(address: str) -> list[int]:
    """containerd-shim processes serving the containerd at ``address`` (its -address flag)."""
    pids = []
    for pid, argv in _processes():
        if argv and argv[0].endswith(("containerd-shim-runc-v2", "containerd-shim")):
            with contextlib.suppress(ValueError, IndexError):
                if argv[argv.index("-address") + 1] == address:
                    pids.append(pid)
    return pids


def cgroup_pids(relpath: str) -> set[int]:
    """Processes in ``relpath`` or below it, in any hierarchy."""
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / relpath.strip("/")
        if not top.is_dir():
            continue
        for directory, _subdirs, _files in os.walk(top):
            with contextlib.suppress(OSError):
                text = (Path(directory) / "cgroup.procs").read_text()
                pids.update(int(line) for line in text.split())
    return pids


def kill_and_reap(pids: Iterable[int], timeout: float = 5.0) -> None:
    pids = set(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + timeout
    while pids and time.monotonic() < end:
        pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
        time.sleep(0.02)


def remove_cgroup_tree(relpath: str) -> None:
    """rmdir ``relpath`` and everything below it in every hierarchy, leaves first."""
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / relpath.strip("/")
        if not top.is_dir():
            continue
        for directory, _subdirs, _files in os.walk(top, topdown=False):
            _rmdir_retrying(Path(directory))


def remove_empty_cgroup(relpath: str) -> None:
    """rmdir one cgroup directory in every hierarchy where it exists and is empty."""
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / relpath.strip("/")
        with contextlib.suppress(OSError):
            path.rmdir()


def _rmdir_retrying(path: Path, timeout: float = 2.0) -> None:
    # A killed process leaves its cgroup only once it is reaped: rmdir fails with EBUSY until
    # then.
    end = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > end:
                return
            time.sleep(0.02)


def _mountinfo() -> Iterator[list[str]]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fields[4] = _unescape(fields[4])
        yield fields


def _unescape(path: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            raw = (entry / "cmdline").read_bytes()
            yield int(entry.name), [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
