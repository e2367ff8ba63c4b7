"""Cgroup ids to paths, for the memory hierarchy and the cgroup v2 hierarchy.

A cgroup's id (``cgroup_id()``, the kernfs node id the BPF programs report) is the inode
number of its directory in the mounted hierarchy: kernfs hands out ``kn->id`` as ``i_ino``
and as ``d_ino`` in readdir on 64-bit kernels. Paths are relative to the hierarchy's root,
as the ``cgroup_mkdir`` tracepoint and ``/proc/<pid>/cgroup`` (in the initial cgroup
namespace) give them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from oomtrace.host import mountinfo
from oomtrace.host.mountinfo import Mount

__all__ = ["CgroupPaths", "Hierarchy", "parse_mountinfo"]


def _encodable(path: str) -> bool:
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Hierarchy:
    mount: Path
    hierarchy_id: int  # as in /proc/cgroups; 0 for cgroup2, -1 when unknown
    version: int  # 1 or 2
    # The mount's root inside the hierarchy (mountinfo's 4th field): not "/" when the
    # mount was made inside a cgroup namespace or is a bind mount of a subtree.
    root: str = "/"

    def dir_of(self, path: str) -> Path | None:
        """The directory of hierarchy path ``path`` under this mount; None when it is not
        below the mount's root or is not a plain absolute path."""
        if not path.startswith("/"):
            return None
        # No cgroup can have such a name, and os calls raise ValueError, not OSError, on a
        # NUL or on a lone surrogate (a str that no bytes decode to).
        if "\0" in path or not _encodable(path):
            return None
        parts = [p for p in path.split("/") if p]
        if any(p in {".", ".."} for p in parts):
            return None
        root_parts = [p for p in self.root.split("/") if p]
        if parts[: len(root_parts)] != root_parts:
            return None
        return self.mount.joinpath(*parts[len(root_parts) :])


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts of a mountinfo file, in its order."""
    return mountinfo.parse(text, {"cgroup", "cgroup2"})


def _parse_proc_cgroups(text: str) -> dict[str, int]:
    ids = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        cols = line.split()
        # isascii(): isdigit() also admits digits int() rejects, such as "\u00b2".
        if len(cols) >= 2 and cols[1].isascii() and cols[1].isdigit():
            with contextlib.suppress(ValueError):  # too many digits to convert
                ids[cols[0]] = int(cols[1])
    return ids


def _pick(mounts: list[Mount]) -> Mount | None:
    # A later mount on the same mount point hides the earlier one: in a pod on cgroup
    # v2, the runtime's mount of the container's own cgroup lies under the hostPath
    # mount of the node's /sys/fs/cgroup, and only the latter is read there.
    visible = list({m.mount: m for m in mounts}.values())
    # Containers and kubelet volumes may bind-mount subtrees of a hierarchy again;
    # the mount of the whole hierarchy names every cgroup.
    return min(visible, key=lambda m: len(_true_root(m.root).rstrip("/")), default=None)


def _true_root(root: str) -> str:
    """A mount's root in the hierarchy. Inside a cgroup namespace (every pod on
    cgroup v2 has its own) mountinfo shows a mount of the hierarchy's root as the
    way up from the namespace's root, "/../../..": the node's /sys/fs/cgroup, which
    kernel paths (cgroup_mkdir's, absolute) are below as they are."""
    parts = [p for p in root.split("/") if p]
    return "/" if parts and all(p == ".." for p in parts) else root


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    # Mount points are any bytes, not always UTF-8; surrogateescape gives them back
    # unchanged when the path is used, where read_text() raised UnicodeDecodeError.
    return data.decode("utf-8", "surrogateescape")


def _scan(hierarchy: Hierarchy) -> list[tuple[int, str]]:
    """(inode, path) of every cgroup under the mount; cgroups removed meanwhile are skipped."""
    try:
        root_ino = os.stat(hierarchy.mount).st_ino
    except OSError:
        return []
    base = hierarchy.root.rstrip("/")
    found = [(root_ino, base or "/")]
    stack = [(str(hierarchy.mount), base)]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    # d_type and d_ino come with getdents on kernfs: no stat per cgroup.
                    if entry.is_dir(follow_symlinks=False):
                        path = f"{rel}/{entry.name}"
                        found.append((entry.inode(), path))
                        stack.append((entry.path, path))
        except OSError:
            continue
    return found


class _Index:
    """inode -> path of one hierarchy: a bounded LRU that keeps removed cgroups too."""

    __slots__ = ("hierarchy", "last_scan", "max_entries", "paths")

    def __init__(self, hierarchy: Hierarchy, max_entries: int) -> None:
        self.hierarchy = hierarchy
        self.max_entries = max_entries
        self.paths: OrderedDict[int, str] = OrderedDict()
        self.last_scan = float("-inf")

    def put(self, cgroup_id: int, path: str) -> None:
        self.paths[cgroup_id] = path
        self.paths.move_to_end(cgroup_id)
        while len(self.paths) > self.max_entries:
            self.paths.popitem(last=False)

    def get(self, cgroup_id: int) -> str | None:
        path = self.paths.get(cgroup_id)
        if path is not None:
            self.paths.move_to_end(cgroup_id)
        return path


class CgroupPaths:
    """Maps the BPF programs' memcg and cgroup v2 ids to cgroup paths.

    Safe for concurrent use by threads; directory walks run outside the lock.
    """

    def __init__(
        self,
        mountinfo: Path = Path("/proc/self/mountinfo"),
        proc_cgroups: Path = Path("/proc/cgroups"),
        *,
        max_entries: int = 65536,
        rescan_interval: float = 1.0,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        mounts = parse_mountinfo(_read_text(mountinfo))
        ids = _parse_proc_cgroups(_read_text(proc_cgroups))
        self.rescan_interval = rescan_interval
        self._lock = threading.Lock()

        v2 = _pick([m for m in mounts if m.fstype == "cgroup2"])
        self.unified: Hierarchy | None = (
            Hierarchy(mount=v2.mount, hierarchy_id=0, version=2, root=_true_root(v2.root))
            if v2
            else None
        )
        v1 = _pick([m for m in mounts if m.fstype == "cgroup" and "memory" in m.super_options])
        self.memory: Hierarchy | None
        if v1 is not None:
            self.memory = Hierarchy(
                mount=v1.mount,
                hierarchy_id=ids.get("memory", -1),
                version=1,
                root=_true_root(v1.root),
            )
        else:
            # A controller bound to no v1 hierarchy belongs to cgroup2; where cgroup2 does
            # not enable it below the root, every task's memcg is the root ("/").
            self.memory = self.unified

        self._unified = _Index(self.unified, max_entries) if self.unified else None
        if self.memory is not None and self.memory is self.unified:
            self._memory = self._unified
        else:
            self._memory = _Index(self.memory, max_entries) if self.memory else None

    def warm(self) -> None:
        """Walk both hierarchies once."""
        self._rescan(self._memory, force=True)
        if self._unified is not self._memory:
            self._rescan(self._unified, force=True)

    def learn(self, hierarchy_id: int, cgroup_id: int, path: str) -> None:
        """Record a cgroup made in hierarchy ``hierarchy_id`` (a cgroup_mkdir record)."""
        if not path.startswith("/") or cgroup_id <= 0:
            return
        index: _Index | None = None
        if hierarchy_id == 0:
            index = self._unified
        elif (
            self.memory is not None
            and self.memory.version == 1
            and hierarchy_id == self.memory.hierarchy_id
        ):
            index = self._memory
        if index is not None:
            with self._lock:
                index.put(cgroup_id, path)

    def memcg_path(self, cgroup_id: int) -> str | None:
        """Path of memcg ``cgroup_id`` in the memory hierarchy; None when unknown."""
        return self._lookup(self._memory, cgroup_id)

    def unified_path(self, cgroup_id: int) -> str | None:
        """Path of cgroup v2 ``cgroup_id``; None when unknown."""
        return self._lookup(self._unified, cgroup_id)

    def memcg_dir(self, path: str) -> Path | None:
        """Directory of memcg ``path`` under the memory hierarchy's mount (may be gone)."""
        return self.memory.dir_of(path) if self.memory is not None else None

    def _lookup(self, index: _Index | None, cgroup_id: int) -> str | None:
        if index is None or cgroup_id <= 0:
            return None
        with self._lock:
            path = index.get(cgroup_id)
        if path is None and self._rescan(index, force=False):
            with self._lock:
                path = index.get(cgroup_id)
        return path

    def _rescan(self, index: _Index | None, *, force: bool) -> bool:
        if index is None:
            return False
        with self._lock:
            now = time.monotonic()
            if not force and now - index.last_scan < self.rescan_interval:
                return False
            # Claimed before the walk, so a burst of misses costs one walk.
            index.last_scan = now
        found = _scan(index.hierarchy)
        with self._lock:
            for cgroup_id, path in found:
                index.put(cgroup_id, path)
        return True
