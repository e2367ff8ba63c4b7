"""oomtrace.host.cgroupfs: id -> path maps over fake mounts, then over this kernel's cgroups.

The tests marked ``kernel`` make cgroups in the real hierarchies (root needed) and remove
them afterwards; the others run the same code over directories in tmp_path, whose inode
numbers serve as ids just as kernfs's do.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oomtrace.host import procfs
from oomtrace.host.cgroupfs import CgroupPaths, Hierarchy, parse_mountinfo
from oomtrace.host.memcg import read_memcg

MiB = 1024 * 1024

# ---------------------------------------------------------------- fake mounts (no root)

PROC_CGROUPS = """\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t1\t1\t1
memory\t4\t28\t1
pids\t8\t1\t1
"""


def mountinfo_line(n: int, root: str, mount: Path, fstype: str, options: str) -> str:
    return f"{n} 1 0:{n} {root} {mount} rw,relatime - {fstype} {fstype} rw,{options}\n"


def make_tree(base: Path, rels: list[str]) -> dict[str, int]:
    inodes = {"/": os.stat(base).st_ino}
    for rel in rels:
        (base / rel.lstrip("/")).mkdir(parents=True)
        inodes[rel] = os.stat(base / rel.lstrip("/")).st_ino
    return inodes


@pytest.fixture
def hybrid(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """Mountinfo and /proc/cgroups of a hybrid node: memory on v1, cgroup2 without it."""
    memory, unified, cpu = tmp_path / "memory", tmp_path / "unified", tmp_path / "cpu"
    for d in (memory, unified, cpu):
        d.mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        + mountinfo_line(31, "/", cpu, "cgroup", "cpu")
        + mountinfo_line(35, "/", memory, "cgroup", "memory")
        + mountinfo_line(41, "/", unified, "cgroup2", "nsdelegate")
        # A container's view of its own subtree, mounted again elsewhere.
        + mountinfo_line(90, "/kubepods", tmp_path / "elsewhere", "cgroup", "memory")
    )
    proc_cgroups = tmp_path / "cgroups"
    proc_cgroups.write_text(PROC_CGROUPS)
    return mountinfo, proc_cgroups, memory, unified


def test_parse_mountinfo_unescapes() -> None:
    text = (
        "35 31 0:32 / /sys/fs/cgroup/my\\040memory rw,relatime shared:9 - cgroup cgroup "
        "rw,memory\n"
        "41 31 0:38 /a\\134b /x rw - cgroup2 cgroup2 rw\n"
        "42 23 0:13 / /sys/kernel/tracing rw - tracefs nodev rw\n"
    )
    mounts = parse_mountinfo(text)
    assert [(m.mount, m.root, m.fstype, m.super_options) for m in mounts] == [
        (Path("/sys/fs/cgroup/my memory"), "/", "cgroup", ("rw", "memory")),
        (Path("/x"), "/a\\b", "cgroup2", ("rw",)),
    ]


def test_hybrid_layout(hybrid: tuple[Path, Path, Path, Path]) -> None:
    mountinfo, proc_cgroups, memory, unified = hybrid
    paths = CgroupPaths(mountinfo, proc_cgroups)
    assert paths.memory == Hierarchy(mount=memory, hierarchy_id=4, version=1)
    assert paths.unified == Hierarchy(mount=unified, hierarchy_id=0, version=2)
    assert paths.memcg_dir("/kubepods/pod1") == memory / "kubepods" / "pod1"


def test_pure_v2_layout(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        mountinfo_line(30, "/", tmp_path, "cgroup2", "nsdelegate,memory_recursiveprot")
    )
    proc_cgroups = tmp_path / "cgroups"
    proc_cgroups.write_text(PROC_CGROUPS.replace("memory\t4", "memory\t0"))
    paths = CgroupPaths(mountinfo, proc_cgroups)
    assert paths.unified == Hierarchy(mount=tmp_path, hierarchy_id=0, version=2)
    assert paths.memory is paths.unified
    inodes = make_tree(tmp_path, ["/kubepods.slice", "/kubepods.slice/pod.slice"])
    paths.warm()
    ino = inodes["/kubepods.slice/pod.slice"]
    assert paths.memcg_path(ino) == paths.unified_path(ino) == "/kubepods.slice/pod.slice"
    # cgroup_mkdir reports cgroup2 as hierarchy 0, and memory lives there.
    (tmp_path / "new").mkdir()
    paths.learn(0, 999_999_999, "/new")
    assert paths.memcg_path(999_999_999) == "/new"


def test_pure_v1_layout(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(mountinfo_line(35, "/", tmp_path, "cgroup", "memory"))
    paths = CgroupPaths(mountinfo, tmp_path / "no-proc-cgroups")
    assert paths.unified is None
    assert paths.memory == Hierarchy(mount=tmp_path, hierarchy_id=-1, version=1)
    assert paths.unified_path(1) is None
    paths.learn(0, 5, "/x")  # no cgroup2 to learn into
    assert paths.unified_path(5) is None


def test_no_cgroup_mounts(tmp_path: Path) -> None:
    paths = CgroupPaths(tmp_path / "empty", tmp_path / "empty")
    assert paths.memory is None
    assert paths.unified is None
    paths.warm()
    assert paths.memcg_path(1) is None
    assert paths.memcg_dir("/") is None


def test_namespaced_mount_root(tmp_path: Path) -> None:
    # Mounted inside a cgroup namespace: the mount shows only /kubepods/pod1 and below,
    # while ids and paths from the kernel are relative to the hierarchy's root.
    mountinfo = tmp_path / "mountinfo"
    mount = tmp_path / "m"
    mount.mkdir()
    mountinfo.write_text(mountinfo_line(30, "/kubepods/pod1", mount, "cgroup2", "rw"))
    paths = CgroupPaths(mountinfo, tmp_path / "cgroups")
    inodes = make_tree(mount, ["/ctr"])
    paths.warm()
    assert paths.unified_path(os.stat(mount).st_ino) == "/kubepods/pod1"
    assert paths.unified_path(inodes["/ctr"]) == "/kubepods/pod1/ctr"
    assert paths.memcg_dir("/kubepods/pod1/ctr") == mount / "ctr"
    assert paths.memcg_dir("/kubepods/pod2") is None


def test_warm_and_lookup(hybrid: tuple[Path, Path, Path, Path]) -> None:
    mountinfo, proc_cgroups, memory, unified = hybrid
    mem = make_tree(memory, ["/kubepods", "/kubepods/burstable", "/kubepods/burstable/pod 1"])
    uni = make_tree(unified, ["/system.slice", "/system.slice/containerd.service"])
    (memory / "memory.stat").write_text("")  # files are not cgroups
    paths = CgroupPaths(mountinfo, proc_cgroups)
    paths.warm()
    for rel, ino in mem.items():
        assert paths.memcg_path(ino) == rel
    for rel, ino in uni.items():
        assert paths.unified_path(ino) == rel
    assert paths.memcg_path(os.stat(memory / "memory.stat").st_ino) is None
    assert paths.memcg_path(0) is None
    assert paths.unified_path(mem["/kubepods"]) != "/kubepods"


def test_miss_rescans_at_most_once_per_interval(hybrid: tuple[Path, Path, Path, Path]) -> None:
    mountinfo, proc_cgroups, memory, _ = hybrid
    slow = CgroupPaths(mountinfo, proc_cgroups, rescan_interval=3600)
    eager = CgroupPaths(mountinfo, proc_cgroups, rescan_interval=0)
    slow.warm()
    eager.warm()
    ino = make_tree(memory, ["/late"])["/late"]
    assert slow.memcg_path(ino) is None  # warm() just walked: no second walk yet
    assert eager.memcg_path(ino) == "/late"

    fresh = CgroupPaths(mountinfo, proc_cgroups, rescan_interval=3600)
    assert fresh.memcg_path(ino) == "/late"  # never walked: the first miss walks
    ino2 = make_tree(memory, ["/later"])["/later"]
    assert fresh.memcg_path(ino2) is None


def test_learn_and_keep_removed(hybrid: tuple[Path, Path, Path, Path]) -> None:
    mountinfo, proc_cgroups, memory, _ = hybrid
    paths = CgroupPaths(mountinfo, proc_cgroups, rescan_interval=0)
    paths.learn(4, 1001, "/kubepods/pod1/ctr")
    paths.learn(0, 1002, "/kubepods.slice/ctr.scope")
    paths.learn(3, 1003, "/cpuset-only")  # another v1 hierarchy: not ours
    paths.learn(4, 1004, "relative")  # not a path from the kernel
    assert paths.memcg_path(1001) == "/kubepods/pod1/ctr"
    assert paths.unified_path(1002) == "/kubepods.slice/ctr.scope"
    assert paths.memcg_path(1003) is None
    assert paths.memcg_path(1004) is None
    assert paths.unified_path(1001) is None

    ino = make_tree(memory, ["/gone"])["/gone"]
    paths.warm()
    (memory / "gone").rmdir()
    paths.warm()
    assert paths.memcg_path(ino) == "/gone"


def test_lru_bound(hybrid: tuple[Path, Path, Path, Path]) -> None:
    mountinfo, proc_cgroups, _, _ = hybrid
    paths = CgroupPaths(mountinfo, proc_cgroups, max_entries=3, rescan_interval=3600)
    paths.warm()  # puts the roots in, then nothing more for an hour
    for i in range(1, 4):
        paths.learn(4, 100 + i, f"/c{i}")
    assert paths.memcg_path(101) == "/c1"  # now the most recently used
    paths.learn(4, 104, "/c4")
    assert paths.memcg_path(102) is None
    assert [paths.memcg_path(i) for i in (101, 103, 104)] == ["/c1", "/c3", "/c4"]


def test_bad_max_entries(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CgroupPaths(tmp_path / "x", tmp_path / "y", max_entries=0)


# ---------------------------------------------------------------- this kernel (root)


@pytest.fixture
def paths() -> CgroupPaths:
    paths = CgroupPaths()
    assert paths.memory is not None, "no memory controller mounted"
    return paths


Mkcg = Callable[[Hierarchy, str], tuple[str, Path]]


@pytest.fixture
def mkcg() -> Iterator[Mkcg]:
    """Makes cgroups (parents first); removes them deepest first afterwards."""
    made: list[Path] = []

    def make(hierarchy: Hierarchy, path: str) -> tuple[str, Path]:
        directory = hierarchy.dir_of(path)
        assert directory is not None
        directory.mkdir()
        made.append(directory)
        return path, directory

    yield make
    for directory in reversed(made):
        remove_cgroup(directory)


def remove_cgroup(directory: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            # A task just killed leaves its cgroup a moment after it is reaped.
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)


def unique(prefix: str = "/oomtrace-test") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def tracefs() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        if tail.split()[0] == "tracefs":
            return Path(fields.split()[4])
    pytest.fail("tracefs is not mounted")


def limit_file(hierarchy: Hierarchy) -> str:
    return "memory.limit_in_bytes" if hierarchy.version == 1 else "memory.max"


@pytest.mark.kernel
def test_this_node(paths: CgroupPaths) -> None:
    assert paths.memory is not None
    if paths.memory.version == 1:
        assert (paths.memory.mount / "memory.limit_in_bytes").exists()
        assert paths.memory.hierarchy_id > 0
    assert paths.unified is None or (paths.unified.mount / "cgroup.procs").exists()
    assert os.stat(paths.memory.mount).st_ino == 1  # kernfs numbers a hierarchy's root 1
    paths.warm()
    assert paths.memcg_path(1) == "/"


@pytest.mark.kernel
def test_mkdir_tracepoint_ids_are_inode_numbers(paths: CgroupPaths, mkcg: Mkcg) -> None:
    """cgroup_mkdir's id is the directory's inode, its root the /proc/cgroups hierarchy id
    (0 for cgroup2), its path relative to the hierarchy: what learn() is given."""
    hierarchies = [h for h in (paths.memory, paths.unified) if h is not None]
    instance = tracefs() / "instances" / f"oomtrace-test-{secrets.token_hex(4)}"
    instance.mkdir()
    try:
        enable = instance / "events" / "cgroup" / "cgroup_mkdir" / "enable"
        enable.write_text("1")
        made = []
        for h in dict.fromkeys(hierarchies):
            parent, _ = mkcg(h, unique())
            child, directory = mkcg(h, f"{parent}/child")
            made.append((h, parent, os.stat(directory.parent).st_ino))
            made.append((h, child, os.stat(directory).st_ino))
        enable.write_text("0")
        trace = (instance / "trace").read_text()
    finally:
        instance.rmdir()
    seen = {
        m["path"]: (int(m["root"]), int(m["id"]))
        for m in re.finditer(
            r"cgroup_mkdir: root=(?P<root>\d+) id=(?P<id>\d+) .*?path=(?P<path>\S+)", trace
        )
    }
    fresh = CgroupPaths(rescan_interval=3600)
    fresh.warm()  # the walk that follows finds nothing new
    for h, path, ino in made:
        assert seen[path] == (h.hierarchy_id, ino)
        fresh.learn(h.hierarchy_id, ino, path)
        if h == paths.memory:
            assert fresh.memcg_path(ino) == path
        if h == paths.unified:
            assert fresh.unified_path(ino) == path


@pytest.mark.kernel
def test_memcg_path_after_warm_and_rescan(paths: CgroupPaths, mkcg: Mkcg) -> None:
    assert paths.memory is not None
    parent, parent_dir = mkcg(paths.memory, unique())
    child, child_dir = mkcg(paths.memory, f"{parent}/child")
    paths.warm()
    assert paths.memcg_path(parent_dir.stat().st_ino) == parent
    assert paths.memcg_path(child_dir.stat().st_ino) == child
    assert paths.memcg_dir(child) == child_dir

    eager = CgroupPaths(rescan_interval=0)
    eager.warm()
    late, late_dir = mkcg(paths.memory, f"{parent}/late")
    assert eager.memcg_path(late_dir.stat().st_ino) == late


@pytest.mark.kernel
def test_learned_path_outlives_rmdir(paths: CgroupPaths, mkcg: Mkcg) -> None:
    assert paths.memory is not None
    path, directory = mkcg(paths.memory, unique())
    ino = directory.stat().st_ino
    paths.learn(paths.memory.hierarchy_id, ino, path)
    directory.rmdir()
    paths.warm()
    assert paths.memcg_path(ino) == path
    assert read_memcg(paths.memory, path) is None


@pytest.mark.kernel
def test_unified_hierarchy(paths: CgroupPaths, mkcg: Mkcg) -> None:
    assert paths.unified is not None, "no cgroup2 mount"
    parent, parent_dir = mkcg(paths.unified, unique())
    paths.warm()
    assert paths.unified_path(parent_dir.stat().st_ino) == parent
    eager = CgroupPaths(rescan_interval=0)
    eager.warm()
    child, child_dir = mkcg(paths.unified, f"{parent}/child")
    ino = child_dir.stat().st_ino
    assert eager.unified_path(ino) == child
    child_dir.rmdir()
    assert eager.unified_path(ino) == child


@pytest.mark.kernel
def test_process_in_cgroups(
    paths: CgroupPaths, mkcg: Mkcg, sleeper: subprocess.Popen[bytes]
) -> None:
    memory = paths.memory
    assert memory is not None
    parent, parent_dir = mkcg(memory, unique())
    if memory.version == 2:
        (parent_dir / "cgroup.subtree_control").write_text("+memory")
    child, child_dir = mkcg(memory, f"{parent}/child")
    (parent_dir / limit_file(memory)).write_text(str(64 * MiB))
    (child_dir / "cgroup.procs").write_text(str(sleeper.pid))
    unified_child = None
    if paths.unified is not None and paths.unified != memory:
        unified_parent, _ = mkcg(paths.unified, unique())
        unified_child, unified_dir = mkcg(paths.unified, f"{unified_parent}/child")
        (unified_dir / "cgroup.procs").write_text(str(sleeper.pid))

    snap = procfs.snapshot(sleeper.pid)
    assert snap is not None
    assert snap.memory_cgroup == child
    if unified_child is not None:
        assert snap.unified_cgroup == unified_child
    paths.warm()
    assert paths.memcg_path(child_dir.stat().st_ino) == snap.memory_cgroup

    data = read_memcg(memory, child)
    assert data is not None
    assert data["limit_bytes"] is None
    assert isinstance(data["usage_bytes"], int)
    assert isinstance(data["stat"], dict)
    assert isinstance(data["events"], dict)
    assert data["events"]["oom_kill"] == 0
    limited = read_memcg(memory, parent)
    assert limited is not None
    assert limited["limit_bytes"] == 64 * MiB
