"""oomtrace.host.nodememory on a recorded cgroup v1 host and a cgroup v2 tree of a 6.1 kernel.

tests/data/nodememory/v1 is a copy of a real host's /proc/meminfo, /proc/pressure/memory and
root memory.usage_in_bytes / memory.stat of the v1 memory hierarchy (no kubelet ran there:
no kubepods). tests/data/nodememory/v2 is written in the shape a 6.1 kernel prints, with a
kubepods.slice whose limit is the capacity less 1 GiB reserved. The expected numbers are
worked out by hand in the comments.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from oomtrace.host.nodememory import (
    NodeMemory,
    compute,
    parse_bytes,
    parse_limit,
    parse_memtotal,
    parse_psi,
    parse_stat,
    read,
    v2_root_usage,
    working_set,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "nodememory"
V1 = DATA / "v1"
V2 = DATA / "v2"
GiB = 1024**3


@pytest.fixture
def v2_tree(tmp_path: Path) -> Path:
    """A writable copy of the v2 tree."""
    root = tmp_path / "root"
    shutil.copytree(V2, root)
    return root


def test_v1_recorded_host() -> None:
    memory = read(V1)
    # MemTotal 24683792 kB * 1024
    assert memory.capacity_bytes == 25_276_203_008
    # memory.usage_in_bytes 3822145536 - total_inactive_file 817389568 (not the root's own
    # inactive_file 12288: usage_in_bytes counts the whole hierarchy)
    assert memory.working_set_bytes == 3_004_755_968
    # 25276203008 - 3004755968
    assert memory.available_bytes == 22_271_447_040
    assert memory.allocatable_available_bytes is None
    assert memory.allocatable_capacity_bytes is None
    assert memory.psi_some_avg10 == 0.0
    assert memory.psi_full_avg10 == 0.0
    assert memory.formula == "cgroup v1"


def test_v2_tree() -> None:
    assert read(V2) == NodeMemory(
        # MemTotal 8148712 kB * 1024
        capacity_bytes=8_344_281_088,
        # root usage = anon 1873829888 + file 3221618688 = 5095448576;
        # minus inactive_file 1904852992
        working_set_bytes=3_190_595_584,
        # 8344281088 - 3190595584
        available_bytes=5_153_685_504,
        # kubepods.slice: memory.max 7270539264 - (memory.current 2963283968 - inactive_file
        # 1048576000 = 1914707968)
        allocatable_available_bytes=5_355_831_296,
        allocatable_capacity_bytes=7_270_539_264,
        psi_some_avg10=1.53,
        psi_full_avg10=0.97,
        formula="cgroup v2",
    )


def test_v2_root_usage_leaves_kernel_memory_out() -> None:
    stat = parse_stat((V2 / "sys/fs/cgroup/memory.stat").read_text())
    assert v2_root_usage(stat) == 1_873_829_888 + 3_221_618_688
    assert stat["kernel"] == 298_385_408  # present, and not counted
    assert v2_root_usage({"anon": 1}) is None
    assert v2_root_usage({"file": 1}) is None


def test_v2_root_has_no_memory_current(v2_tree: Path) -> None:
    # A memory.current at the root (there is none on a real host) is not what the usage is
    # taken from: the kubelet's root usage is anon + file.
    (v2_tree / "sys/fs/cgroup/memory.current").write_text("7000000000\n")
    assert read(v2_tree).working_set_bytes == 3_190_595_584


def test_cgroupfs_driver_kubepods(v2_tree: Path) -> None:
    cgroup = v2_tree / "sys/fs/cgroup"
    (cgroup / "kubepods.slice").rename(cgroup / "kubepods")
    assert read(v2_tree).allocatable_available_bytes == 5_355_831_296


def test_kubepods_under_a_cgroup_root(v2_tree: Path) -> None:
    cgroup = v2_tree / "sys/fs/cgroup"
    (cgroup / "kubelet.slice").mkdir()
    (cgroup / "kubepods.slice").rename(cgroup / "kubelet.slice/kubelet-kubepods.slice")
    assert read(v2_tree).allocatable_available_bytes is None
    memory = read(v2_tree, kubepods=["kubelet.slice/kubelet-kubepods.slice"])
    assert memory.allocatable_available_bytes == 5_355_831_296


def test_unlimited_kubepods_has_no_allocatable_signal(v2_tree: Path) -> None:
    # cAdvisor reads "max" as the largest uint64, and the kubelet leaves AvailableBytes out
    # for a limit above 1<<62: allocatableMemory.available is not observed at all.
    (v2_tree / "sys/fs/cgroup/kubepods.slice/memory.max").write_text("max\n")
    memory = read(v2_tree)
    assert memory.allocatable_capacity_bytes is None
    assert memory.allocatable_available_bytes is None
    assert memory.available_bytes == 5_153_685_504


def test_v1_kubepods(tmp_path: Path) -> None:
    shutil.copytree(V1, tmp_path / "root")
    pods = tmp_path / "root/sys/fs/cgroup/memory/kubepods"
    pods.mkdir()
    (pods / "memory.usage_in_bytes").write_text("1073741824\n")
    # PAGE_COUNTER_MAX in bytes: v1's "no limit"
    (pods / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (pods / "memory.stat").write_text("inactive_file 1\ntotal_inactive_file 268435456\n")
    memory = read(tmp_path / "root")
    assert memory.allocatable_capacity_bytes is None
    assert memory.allocatable_available_bytes is None
    # The kubelet's limit on kubepods: capacity less 4 GiB reserved.
    (pods / "memory.limit_in_bytes").write_text("20981235712\n")
    memory = read(tmp_path / "root")
    assert memory.allocatable_capacity_bytes == 20_981_235_712
    # 20981235712 - (1073741824 - total_inactive_file 268435456, not inactive_file)
    assert memory.allocatable_available_bytes == 20_175_929_344


def test_kubepods_without_memory_files(v2_tree: Path) -> None:
    # memory not in the root's cgroup.subtree_control: the directory has no memory.* files.
    for name in ("memory.current", "memory.max", "memory.stat"):
        (v2_tree / "sys/fs/cgroup/kubepods.slice" / name).unlink()
    memory = read(v2_tree)
    assert memory.allocatable_available_bytes is None
    assert memory.available_bytes == 5_153_685_504


def test_nothing_readable(tmp_path: Path) -> None:
    assert read(tmp_path) == NodeMemory(
        capacity_bytes=None,
        working_set_bytes=None,
        available_bytes=None,
        allocatable_available_bytes=None,
        allocatable_capacity_bytes=None,
        psi_some_avg10=None,
        psi_full_avg10=None,
        formula="cgroup v1",
    )


def test_unreadable_files_give_none(v2_tree: Path) -> None:
    # A directory where a file should be: reading it fails with an OSError.
    stat = v2_tree / "sys/fs/cgroup/memory.stat"
    stat.unlink()
    stat.mkdir()
    (v2_tree / "proc/pressure/memory").unlink()
    memory = read(v2_tree)
    assert memory.capacity_bytes == 8_344_281_088
    assert memory.working_set_bytes is None
    assert memory.available_bytes is None
    assert memory.psi_some_avg10 is None
    assert memory.psi_full_avg10 is None
    assert memory.allocatable_available_bytes == 5_355_831_296


def test_garbage_files_give_none(v2_tree: Path) -> None:
    (v2_tree / "proc/meminfo").write_bytes(b"MemTotal: lots\n\xff\xfe")
    (v2_tree / "sys/fs/cgroup/kubepods.slice/memory.current").write_text("-1\n")
    memory = read(v2_tree)
    assert memory.capacity_bytes is None
    assert memory.available_bytes is None
    assert memory.working_set_bytes == 3_190_595_584
    assert memory.allocatable_available_bytes is None


def test_working_set_floor_and_missing_inactive() -> None:
    assert working_set(100, {"inactive_file": 30}, "inactive_file") == 70
    assert working_set(100, {"inactive_file": 300}, "inactive_file") == 0
    # cAdvisor subtracts nothing when memory.stat has no such line.
    assert working_set(100, {}, "total_inactive_file") == 100


def test_available_is_floored() -> None:
    memory = compute(
        formula="cgroup v2",
        meminfo="MemTotal:       1 kB\n",
        root_stat="anon 4096\nfile 4096\ninactive_file 0\n",
        kubepods_usage="8192\n",
        kubepods_limit="4096\n",
        kubepods_stat="inactive_file 0\n",
    )
    assert memory.working_set_bytes == 8192
    assert memory.available_bytes == 0
    assert memory.allocatable_available_bytes == 0


def test_parse_memtotal() -> None:
    assert parse_memtotal("MemTotal:        8148712 kB\nMemFree: 1 kB\n") == 8_344_281_088
    assert parse_memtotal("MemFree: 1 kB\n") is None
    assert parse_memtotal("MemTotal: 12 MB\n") is None
    assert parse_memtotal("MemTotal: 1e9 kB\n") is None
    assert parse_memtotal("MemTotal: " + "9" * 40 + " kB\n") is None
    assert parse_memtotal("") is None


def test_parse_stat_skips_malformed_lines() -> None:
    text = "anon 10\n\nfile x\nbroken\ninactive_file 3 extra\nshmem -4\nslab 7\n"
    assert parse_stat(text) == {"anon": 10, "slab": 7}


def test_parse_bytes_and_limit() -> None:
    assert parse_bytes("2963283968\n") == 2_963_283_968
    assert parse_bytes("") is None
    assert parse_bytes("max\n") is None
    assert parse_limit("7270539264\n") == 7_270_539_264
    assert parse_limit("max\n") == "max"
    assert parse_limit("9223372036854771712\n") == "max"
    assert parse_limit(str(2**62)) == 2**62
    assert parse_limit("-1\n") is None
    assert parse_limit("") is None


def test_parse_psi() -> None:
    text = V2.joinpath("proc/pressure/memory").read_text()
    assert parse_psi(text) == (1.53, 0.97)
    # A missing line is None; values that are not plain numbers are skipped.
    assert parse_psi("some avg10=12.50 avg60=3.00 avg300=1.00 total=9\n") == (12.5, None)
    assert parse_psi("\nsome avg10=nan\nfull avg10=inf\nfull avg10\n") == (None, None)
    assert parse_psi("") == (None, None)
