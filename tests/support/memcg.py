"""Memory-limited cgroups for tests, on cgroup v1 (memory hierarchy) or v2.

An OOM kill must stay inside such a cgroup: a node-wide OOM would take the test
runner with it. Everything made here is removed on exit, processes first.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fstype, _source, options = right.split()[:3]
            out.append((left.split()[4], fstype, options))
    return out


def memory_root() -> tuple[Path, int]:
    """The directory under which memory limits apply, and its cgroup version."""
    for mount, fstype, options in _mounts():
        if fstype == "cgroup" and "memory" in options.split(","):
            return Path(mount), 1
    for mount, fstype, _ in _mounts():
        if (
            fstype == "cgroup2"
            and "memory" in Path(mount, "cgroup.controllers").read_text().split()
        ):
            return Path(mount), 2
    raise RuntimeError("no memory controller is mounted")


class Memcg:
    def __init__(self, path: Path, version: int, root: Path) -> None:
        self.path = path
        self.version = version
        self.root = root

    @property
    def cgroup_path(self) -> str:
        """The path as oomtrace reports it: relative to the hierarchy root."""
        return "/" + str(self.path.relative_to(self.root))

    def set_limit(self, limit_bytes: int) -> None:
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        (self.path / name).write_text(str(limit_bytes))
        if self.version == 1:
            # Without swap accounting limits a swapless box already; with it,
            # keep the hog from escaping to swap.
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(limit_bytes))
        else:
            swap = self.path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")

    def child(self, name: str) -> Memcg:
        path = self.path / name
        if self.version == 2:
            (self.path / "cgroup.subtree_control").write_text("+memory")
        path.mkdir()
        return Memcg(path, self.version, self.root)

    def procs(self) -> list[int]:
        pids: list[int] = []
        for d in [self.path, *sorted(p for p in self.path.rglob("*") if p.is_dir())]:
            pids += [int(x) for x in (d / "cgroup.procs").read_text().split()]
        return pids

    def preexec(self) -> None:
        """For subprocess.Popen(preexec_fn=...): join before exec, so the program
        allocates only inside the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for _ in range(50):
            pids = self.procs() if self.path.exists() else []
            if not pids:
                break
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for d in sorted(
            (p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            d.rmdir()
        if self.path.exists():
            self.path.rmdir()


@contextmanager
def memcg(limit_bytes: int | None, prefix: str = "oomtrace-test") -> Iterator[Memcg]:
    root, version = memory_root()
    parent = root
    if version == 2:
        (root / "cgroup.subtree_control").write_text("+memory")
    path = parent / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    group = Memcg(path, version, root)
    try:
        if limit_bytes is not None:
            group.set_limit(limit_bytes)
        yield group
    finally:
        group.remove()
