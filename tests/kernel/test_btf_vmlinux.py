"""oomtrace.kernel.btf against this machine's kernel BTF, cross-checked with bpftool."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import pytest

from oomtrace.kernel.btf import VMLINUX_BTF, Btf, BtfError

pytestmark = pytest.mark.kernel

POINTER = 8


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load()


def test_task_struct(btf: Btf) -> None:
    size = btf.sizeof_struct("task_struct")
    for member, member_size in [
        ("pid", 4),
        ("tgid", 4),
        ("real_parent", POINTER),
        ("group_leader", POINTER),
        ("cgroups", POINTER),
        ("signal", POINTER),
        ("comm", 16),
        ("start_boottime", 8),
    ]:
        assert 0 < btf.offset_of("task_struct", member) < size
        assert btf.size_of("task_struct", member) == member_size, member
    assert btf.offset_of("task_struct", "tgid") == btf.offset_of("task_struct", "pid") + 4


def test_signal_struct(btf: Btf) -> None:
    assert btf.size_of("signal_struct", "oom_score_adj") == 2
    assert btf.offset_of("signal_struct", "oom_score_adj") < btf.sizeof_struct("signal_struct")


def test_cgroup_chain(btf: Btf) -> None:
    subsys_count = btf.enum_value("cgroup_subsys_id", "CGROUP_SUBSYS_COUNT")
    memory_id = btf.enum_value("cgroup_subsys_id", "memory_cgrp_id")
    assert 0 <= memory_id < subsys_count
    assert btf.enumerator_value("memory_cgrp_id") == memory_id
    assert btf.size_of("css_set", "subsys") == POINTER * subsys_count
    assert btf.size_of("css_set", "dfl_cgrp") == POINTER
    assert btf.size_of("cgroup_subsys_state", "cgroup") == POINTER
    assert btf.size_of("cgroup", "kn") == POINTER
    assert btf.size_of("kernfs_node", "id") == 8


def test_mem_cgroup_usage(btf: Btf) -> None:
    assert btf.has_member("mem_cgroup", "memory")
    if btf.has_member("mem_cgroup", "memory.usage.counter"):
        assert btf.size_of("mem_cgroup", "memory.usage.counter") == 8
        assert btf.offset_of("mem_cgroup", "memory.usage.counter") >= btf.offset_of(
            "mem_cgroup", "memory"
        )


def test_oom_control(btf: Btf) -> None:
    for member in ["memcg", "totalpages", "chosen", "chosen_points", "gfp_mask", "order"]:
        assert btf.offset_of("oom_control", member) < btf.sizeof_struct("oom_control")
    assert btf.size_of("oom_control", "memcg") == POINTER
    assert btf.size_of("oom_control", "chosen") == POINTER
    assert btf.size_of("oom_control", "constraint") == 4
    assert btf.enum_value("oom_constraint", "CONSTRAINT_MEMCG") > 0


def test_missing_and_bitfield(btf: Btf) -> None:
    assert not btf.has_member("task_struct", "no_such_member")
    with pytest.raises(BtfError, match=r"task_struct.*no_such_member"):
        btf.offset_of("task_struct", "no_such_member")
    with pytest.raises(BtfError, match="no struct no_such_struct"):
        btf.sizeof_struct("no_such_struct")
    with pytest.raises(BtfError, match=r"task_struct.*signal\.oom_score_adj"):
        btf.offset_of("task_struct", "signal.oom_score_adj")  # a pointer, not embedded
    assert btf.has_member("task_struct", "sched_reset_on_fork")
    with pytest.raises(BtfError, match="bitfield"):
        btf.offset_of("task_struct", "sched_reset_on_fork")


def test_functions(btf: Btf) -> None:
    assert btf.has_function("out_of_memory")
    assert not btf.has_function("no_such_function_in_any_kernel")


def test_load_and_lookups_are_quick() -> None:
    start = time.perf_counter()
    btf = Btf.load()
    for member in ["pid", "tgid", "comm", "real_parent", "group_leader", "cgroups", "signal"]:
        btf.offset_of("task_struct", member)
    btf.enum_value("cgroup_subsys_id", "memory_cgrp_id")
    assert time.perf_counter() - start < 2.0  # about 0.1 s when measured


# --- cross-check against bpftool's own BTF decoder -------------------------

CHECKED_STRUCTS = [
    "task_struct",
    "signal_struct",
    "css_set",
    "cgroup_subsys_state",
    "cgroup",
    "kernfs_node",
    "mem_cgroup",
    "page_counter",
    "oom_control",
]


@dataclass
class Dumped:
    kinds: dict[int, str] = field(default_factory=dict)
    # struct name -> (size, [(member, type id, bit offset, bitfield size)]), per definition
    structs: dict[str, list[tuple[int, list[tuple[str, int, int, int]]]]] = field(
        default_factory=dict
    )
    enums: dict[str, dict[str, int]] = field(default_factory=dict)


TYPE_LINE = re.compile(r"\[(\d+)\] (\w+) '([^']*)'(?: size=(\d+))?")
MEMBER_LINE = re.compile(r"\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?")
ENUM_LINE = re.compile(r"\t'([^']*)' val=(-?\d+)")


@pytest.fixture(scope="module")
def dumped() -> Dumped:
    bpftool = shutil.which("bpftool")
    assert bpftool is not None, "bpftool is missing: sudo scripts/setup --dev installs it"
    out = subprocess.run(
        [bpftool, "btf", "dump", "file", VMLINUX_BTF, "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    d = Dumped()
    members: list[tuple[str, int, int, int]] | None = None
    enum: dict[str, int] | None = None
    for line in out.splitlines():
        if not line.startswith("\t"):
            members = enum = None
            t = TYPE_LINE.match(line)
            assert t, line
            d.kinds[int(t[1])] = t[2]
            if t[2] in ("STRUCT", "UNION") and t[3] in CHECKED_STRUCTS:
                members = []
                d.structs.setdefault(t[3], []).append((int(t[4]), members))
            elif t[2] in ("ENUM", "ENUM64") and t[3] in ("cgroup_subsys_id", "oom_constraint"):
                enum = d.enums.setdefault(t[3], {})
        elif members is not None:
            m = MEMBER_LINE.match(line)
            assert m, line
            members.append((m[1], int(m[2]), int(m[3]), int(m[4] or 0)))
        elif enum is not None and (e := ENUM_LINE.match(line)):
            enum[e[1]] = int(e[2])
    return d


@pytest.mark.parametrize("name", CHECKED_STRUCTS)
def test_offsets_match_bpftool(btf: Btf, dumped: Dumped, name: str) -> None:
    assert len(dumped.structs[name]) == 1, f"{name} has several definitions"
    [(size, members)] = dumped.structs[name]
    assert btf.sizeof_struct(name) == size
    checked = 0
    for member, _, bits_offset, bitfield_size in members:
        if member == "(anon)":
            continue
        if bitfield_size or bits_offset % 8:
            with pytest.raises(BtfError, match="bitfield"):
                btf.offset_of(name, member)
        else:
            assert btf.offset_of(name, member) == bits_offset // 8, f"{name}.{member}"
            checked += 1
    assert checked > 0


def test_comm_and_friends_match_bpftool(btf: Btf, dumped: Dumped) -> None:
    [(_, members)] = dumped.structs["task_struct"]
    by_name = {m[0]: m[2] // 8 for m in members}
    for member in ["comm", "pid", "tgid", "real_parent", "group_leader", "cgroups", "signal"]:
        assert btf.offset_of("task_struct", member) == by_name[member], member


def test_nested_path_matches_bpftool(btf: Btf, dumped: Dumped) -> None:
    [(_, memcg)] = dumped.structs["mem_cgroup"]
    [(_, counter)] = dumped.structs["page_counter"]
    memory = next(m[2] // 8 for m in memcg if m[0] == "memory")
    usage = next(m[2] // 8 for m in counter if m[0] == "usage")
    assert btf.offset_of("mem_cgroup", "memory.usage") == memory + usage


def test_enums_match_bpftool(btf: Btf, dumped: Dumped) -> None:
    for enum_name, values in dumped.enums.items():
        for enumerator, value in values.items():
            assert btf.enum_value(enum_name, enumerator) == value
    [(_, control)] = dumped.structs["oom_control"]
    constraint_type = next(m[1] for m in control if m[0] == "constraint")
    assert dumped.kinds[constraint_type] == "ENUM"
