"""oomtrace.host.memcg against fake cgroup v1 and v2 memory hierarchies in tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from oomtrace.host import memcg
from oomtrace.host.cgroupfs import Hierarchy
from oomtrace.host.memcg import common_ancestor, read_memcg

MiB = 1024 * 1024
V1_UNLIMITED = "9223372036854771712"  # PAGE_COUNTER_MAX pages in bytes, 4 KiB pages

POD = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
CONTAINER = f"{POD}/cri-containerd-{'a' * 64}.scope"


def v2_stat(anon: int, file: int, inactive_file: int) -> str:
    """memory.stat in the order and shape of a 6.x kernel, with counters among the bytes."""
    values = {
        "anon": anon,
        "file": file,
        "kernel": 3 * MiB,
        "kernel_stack": 245760,
        "pagetables": 1118208,
        "sec_pagetables": 0,
        "percpu": 12960,
        "sock": 0,
        "vmalloc": 8192,
        "shmem": 4096,
        "zswap": 0,
        "zswapped": 0,
        "file_mapped": 25 * MiB,
        "file_dirty": 8192,
        "file_writeback": 0,
        "swapcached": 0,
        "anon_thp": 0,
        "file_thp": 0,
        "shmem_thp": 0,
        "inactive_anon": anon - 4096,
        "active_anon": 8192,
        "inactive_file": inactive_file,
        "active_file": file - inactive_file,
        "unevictable": 0,
        "slab_reclaimable": 1183744,
        "slab_unreclaimable": 560616,
        "slab": 1744360,
        "workingset_refault_anon": 0,
        "workingset_refault_file": 42,
        "workingset_activate_anon": 0,
        "workingset_activate_file": 3,
        "pgscan": 1203,
        "pgsteal": 1170,
        "pgfault": 90231,
        "pgmajfault": 14,
        "thp_fault_alloc": 0,
    }
    return "".join(f"{k} {v}\n" for k, v in values.items())


V2_EVENTS = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n"


def v1_stat(local_rss: int, total_rss: int, total_cache: int, total_inactive_file: int) -> str:
    local = {
        "cache": 4 * MiB,
        "rss": local_rss,
        "rss_huge": 0,
        "shmem": 0,
        "mapped_file": MiB,
        "dirty": 0,
        "writeback": 0,
        "swap": 0,
        "pgpgin": 2000,
        "pgpgout": 100,
        "pgfault": 5000,
        "pgmajfault": 3,
        "inactive_anon": local_rss,
        "active_anon": 0,
        "inactive_file": 2 * MiB,
        "active_file": 2 * MiB,
        "unevictable": 0,
        "hierarchical_memory_limit": 256 * MiB,
        "hierarchical_memsw_limit": int(V1_UNLIMITED),
    }
    total = {
        "total_cache": total_cache,
        "total_rss": total_rss,
        "total_rss_huge": 2 * MiB,
        "total_shmem": 8192,
        "total_mapped_file": 3 * MiB,
        "total_dirty": 4096,
        "total_writeback": 0,
        "total_swap": 0,
        "total_pgpgin": 9000,
        "total_pgpgout": 500,
        "total_pgfault": 20000,
        "total_pgmajfault": 7,
        "total_inactive_anon": total_rss,
        "total_active_anon": 0,
        "total_inactive_file": total_inactive_file,
        "total_active_file": total_cache - total_inactive_file,
        "total_unevictable": 0,
    }
    return "".join(f"{k} {v}\n" for k, v in {**local, **total}.items())


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def v2_cgroup(root: Path, path: str, limit: str, current: int = 100 * MiB) -> None:
    write(
        root / path.lstrip("/"),
        {
            "memory.max": f"{limit}\n",
            "memory.current": f"{current}\n",
            "memory.stat": v2_stat(anon=60 * MiB, file=30 * MiB, inactive_file=20 * MiB),
            "memory.events": V2_EVENTS,
        },
    )


def v1_cgroup(root: Path, path: str, limit: str, usage: int = 100 * MiB) -> None:
    write(
        root / path.lstrip("/"),
        {
            "memory.limit_in_bytes": f"{limit}\n",
            "memory.usage_in_bytes": f"{usage}\n",
            "memory.stat": v1_stat(
                local_rss=MiB,
                total_rss=70 * MiB,
                total_cache=25 * MiB,
                total_inactive_file=15 * MiB,
            ),
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            "memory.failcnt": "41\n",
        },
    )


@pytest.fixture
def v2(tmp_path: Path) -> Hierarchy:
    """A v2 tree as systemd and the kubelet lay it out; the root has no memory.max."""
    (tmp_path / "memory.stat").write_text(v2_stat(anon=MiB, file=MiB, inactive_file=0))
    v2_cgroup(tmp_path, "/kubepods.slice", "max", current=900 * MiB)
    v2_cgroup(tmp_path, "/kubepods.slice/kubepods-burstable.slice", "max", current=800 * MiB)
    v2_cgroup(tmp_path, POD, f"{512 * MiB}", current=300 * MiB)
    v2_cgroup(tmp_path, CONTAINER, "max")
    return Hierarchy(mount=tmp_path, hierarchy_id=0, version=2)


@pytest.fixture
def v1(tmp_path: Path) -> Hierarchy:
    v1_cgroup(tmp_path, "/", V1_UNLIMITED, usage=2000 * MiB)
    v1_cgroup(tmp_path, "/kubepods", V1_UNLIMITED)
    v1_cgroup(tmp_path, "/kubepods/burstable", V1_UNLIMITED)
    v1_cgroup(tmp_path, "/kubepods/burstable/pod1234", f"{256 * MiB}")
    v1_cgroup(tmp_path, f"/kubepods/burstable/pod1234/{'b' * 64}", V1_UNLIMITED)
    return Hierarchy(mount=tmp_path, hierarchy_id=4, version=1)


def test_v2_limited(v2: Hierarchy) -> None:
    data = read_memcg(v2, POD)
    assert data is not None
    assert data["path"] == POD
    assert data["limit_bytes"] == 512 * MiB
    assert data["usage_bytes"] == 300 * MiB
    assert data["working_set_bytes"] == 280 * MiB  # usage - inactive_file
    stat = data["stat"]
    assert isinstance(stat, dict)
    assert stat["anon"] == 60 * MiB
    assert stat["file"] == 30 * MiB
    assert stat["inactive_file"] == 20 * MiB
    assert stat["active_file"] == 10 * MiB
    assert stat["shmem"] == 4096
    assert stat["kernel"] == 3 * MiB
    # Event counters are not bytes: left out of stat.
    assert "pgfault" not in stat
    assert "workingset_refault_file" not in stat
    assert data["events"] == {
        "low": 0,
        "high": 0,
        "max": 17,
        "oom": 2,
        "oom_kill": 1,
        "oom_group_kill": 0,
    }


def test_v2_unlimited(v2: Hierarchy) -> None:
    data = read_memcg(v2, CONTAINER)
    assert data is not None
    assert data["limit_bytes"] is None
    assert data["usage_bytes"] == 100 * MiB


def test_v2_root_has_no_limit_or_current(v2: Hierarchy) -> None:
    data = read_memcg(v2, "/")
    assert data is not None
    assert data["limit_bytes"] is None
    assert data["usage_bytes"] is None
    assert data["working_set_bytes"] is None
    assert data["events"] is None
    assert isinstance(data["stat"], dict)
    assert data["stat"]["anon"] == MiB


def test_v1_prefers_hierarchical_totals(v1: Hierarchy) -> None:
    path = "/kubepods/burstable/pod1234"
    data = read_memcg(v1, path)
    assert data is not None
    assert data["path"] == path
    assert data["limit_bytes"] == 256 * MiB
    assert data["usage_bytes"] == 100 * MiB
    assert data["working_set_bytes"] == 85 * MiB  # usage - total_inactive_file
    stat = data["stat"]
    assert isinstance(stat, dict)
    assert stat["anon"] == 70 * MiB  # total_rss, not rss
    assert stat["file"] == 25 * MiB  # total_cache
    assert stat["inactive_file"] == 15 * MiB
    assert stat["active_file"] == 10 * MiB
    assert stat["shmem"] == 8192
    assert stat["anon_thp"] == 2 * MiB
    assert "kernel" not in stat  # v1 has no such total
    assert "pgfault" not in stat
    assert data["events"] == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3, "failcnt": 41}


def test_v1_without_totals(tmp_path: Path) -> None:
    local_only = "".join(line + "\n" for line in v1_stat(5 * MiB, 0, 0, 0).splitlines()[:19])
    write(
        tmp_path / "old",
        {
            "memory.limit_in_bytes": f"{64 * MiB}\n",
            "memory.usage_in_bytes": f"{MiB}\n",
            "memory.stat": local_only,
        },
    )
    data = read_memcg(Hierarchy(tmp_path, 4, 1), "/old")
    assert data is not None
    stat = data["stat"]
    assert isinstance(stat, dict)
    assert stat["anon"] == 5 * MiB
    assert stat["file"] == 4 * MiB
    assert stat["inactive_file"] == 2 * MiB
    assert data["working_set_bytes"] == 0  # usage below inactive_file: floored
    assert data["events"] is None  # neither memory.oom_control nor memory.failcnt


@pytest.mark.parametrize(
    "value", [V1_UNLIMITED, str(2**62), "9223372036854775807", "18446744073709551615"]
)
def test_v1_unlimited_values(v1: Hierarchy, value: str) -> None:
    (v1.mount / "kubepods" / "memory.limit_in_bytes").write_text(value + "\n")
    data = read_memcg(v1, "/kubepods")
    assert data is not None
    assert data["limit_bytes"] is None


def test_v2_huge_number_is_unlimited(v2: Hierarchy) -> None:
    (v2.mount / "kubepods.slice" / "memory.max").write_text("9223372036854771712\n")
    data = read_memcg(v2, "/kubepods.slice")
    assert data is not None
    assert data["limit_bytes"] is None


def test_unreadable_files_leave_keys_none(v2: Hierarchy) -> None:
    directory = v2.mount / CONTAINER.lstrip("/")
    (directory / "memory.current").unlink()
    (directory / "memory.stat").unlink()
    (directory / "memory.events").unlink()
    (directory / "memory.events").mkdir()  # opens but cannot be read: EISDIR
    (directory / "memory.max").write_text(f"{128 * MiB}\n")
    data = read_memcg(v2, CONTAINER)
    assert data == {
        "path": CONTAINER,
        "limit_bytes": 128 * MiB,
        "usage_bytes": None,
        "working_set_bytes": None,
        "stat": None,
        "events": None,
    }


def test_garbage_values(v2: Hierarchy) -> None:
    directory = v2.mount / CONTAINER.lstrip("/")
    (directory / "memory.current").write_text("")
    (directory / "memory.max").write_text("lots\n")
    (directory / "memory.events").write_text("oom 1\nbogus\nmax x\n")
    data = read_memcg(v2, CONTAINER)
    assert data is not None
    assert data["usage_bytes"] is None
    assert data["limit_bytes"] is None
    assert data["events"] == {"oom": 1}


def test_vanished_directory(v1: Hierarchy, v2: Hierarchy) -> None:
    assert read_memcg(v2, POD + "/gone") is None
    assert read_memcg(v1, "/kubepods/gone") is None
    assert read_memcg(v2, "not/absolute") is None
    assert read_memcg(v2, "/kubepods.slice/../etc") is None


def test_directory_vanishes_midway(v2: Hierarchy, monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = memcg._read
    directory = v2.mount / POD.lstrip("/")

    def read_then_remove(dir_fd: int, name: str) -> str | None:
        text = real_read(dir_fd, name)
        if directory.exists():
            shutil.rmtree(directory)
        return text

    monkeypatch.setattr(memcg, "_read", read_then_remove)
    data = read_memcg(v2, POD)
    assert data is not None
    # The first file was read before the removal; the directory fd sees nothing after it.
    assert data["limit_bytes"] == 512 * MiB
    assert data["usage_bytes"] is None
    assert data["stat"] is None
    assert data["events"] is None


def test_no_fd_leak(v1: Hierarchy) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        read_memcg(v1, "/kubepods/burstable/pod1234")
        read_memcg(v1, "/kubepods/gone")
    assert len(os.listdir("/proc/self/fd")) == before


def test_read_memcg_under_a_mount_root(tmp_path: Path) -> None:
    # A mount of the subtree /kubepods (as in a cgroup namespace): levels above it are unseen.
    v2_cgroup(tmp_path, "/pod", f"{64 * MiB}")
    v2_cgroup(tmp_path, "/pod/ctr", "max")
    hierarchy = Hierarchy(mount=tmp_path, hierarchy_id=0, version=2, root="/kubepods")
    data = read_memcg(hierarchy, "/kubepods/pod")
    assert data is not None
    assert data["limit_bytes"] == 64 * MiB
    assert read_memcg(hierarchy, "/pod") is None  # not below the mount's root


@pytest.mark.parametrize(
    ("a", "b", "common"),
    [
        ("/a/b/c", "/a/b/d", "/a/b"),
        ("/a/b/c", "/a/b/c", "/a/b/c"),
        ("/a/b", "/a/b/c/d", "/a/b"),
        ("/a/bc", "/a/b", "/a"),  # by component, not by prefix
        ("/x", "/y", "/"),
        ("/", "/a", "/"),
        ("/a/b/", "/a/b", "/a/b"),
        (CONTAINER, POD + "/other.scope", POD),
    ],
)
def test_common_ancestor(a: str, b: str, common: str) -> None:
    assert common_ancestor(a, b) == common
    assert common_ancestor(b, a) == common


@pytest.mark.parametrize(
    ("root", "path", "rel"),
    [
        ("/", "/", ""),
        ("/", "/a/b", "a/b"),
        ("/", "//a//b/", "a/b"),
        ("/ns", "/ns", ""),
        ("/ns", "/ns/a", "a"),
        ("/ns", "/nsx/a", None),
        ("/ns", "/a", None),
        ("/", "a", None),
        ("/", "/a/../b", None),
    ],
)
def test_hierarchy_dir_of(root: str, path: str, rel: str | None) -> None:
    hierarchy = Hierarchy(mount=Path("/m"), hierarchy_id=0, version=2, root=root)
    expected = None if rel is None else Path("/m") / rel
    assert hierarchy.dir_of(path) == expected
