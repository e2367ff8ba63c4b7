"""oomtrace.kernel.btf against small BTF blobs built here, in both byte orders."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from oomtrace.kernel.btf import Btf, BtfError

(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT) = range(1, 12)
(FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(12, 20)


@dataclass
class BtfWriter:
    """Builds a BTF blob as laid out in the kernel's Documentation/bpf/btf.rst."""

    order: str = "<"
    strings: bytearray = field(default_factory=lambda: bytearray(b"\0"))
    records: list[tuple[int, int, int, list[int]]] = field(default_factory=list)
    hdr_len: int = 24

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(
        self,
        kind: int,
        name: str | int = "",
        ref: int = 0,
        *extra: int,
        vlen: int = 0,
        kflag: bool = False,
    ) -> int:
        """Append a record: ref is its size_or_type word, extra the words after."""
        name_off = name if isinstance(name, int) else self.name(name)
        info = kflag << 31 | kind << 24 | vlen
        self.records.append((name_off, info, ref, [w & 0xFFFFFFFF for w in extra]))
        return len(self.records)

    def int_(self, name: str, size: int, bits: int = 0, signed: bool = False) -> int:
        encoding = int(signed) << 24 | (bits or size * 8)
        return self.add(INT, name, size, encoding)

    def array(self, elem: int, n: int, index: int = 1) -> int:
        return self.add(ARRAY, "", 0, elem, index, n)

    def struct(
        self,
        name: str | int,
        size: int,
        members: list[tuple[str, int, int]] | list[tuple[str, int, int, int]],
        union: bool = False,
    ) -> int:
        """members: (name, type, bit offset[, bitfield size]); a bitfield size sets kind_flag."""
        kflag = any(len(m) == 4 for m in members)
        words: list[int] = []
        for m in members:
            offset = m[2] | (m[3] << 24 if len(m) == 4 else 0)
            words += [self.name(m[0]), m[1], offset]
        kind = UNION if union else STRUCT
        return self.add(kind, name, size, *words, vlen=len(members), kflag=kflag)

    def enum(self, name: str, values: dict[str, int], signed: bool = False) -> int:
        words = [w for k, v in values.items() for w in (self.name(k), v)]
        return self.add(ENUM, name, 4, *words, vlen=len(values), kflag=signed)

    def enum64(self, name: str, values: dict[str, int], signed: bool = False) -> int:
        words = [w for k, v in values.items() for w in (self.name(k), v, v >> 32)]
        return self.add(ENUM64, name, 8, *words, vlen=len(values), kflag=signed)

    def build(self) -> bytes:
        o = self.order
        types = b"".join(
            struct.pack(f"{o}3I{len(extra)}I", name_off, info, st, *extra)
            for name_off, info, st, extra in self.records
        )
        header = struct.pack(
            f"{o}HBBIIIII", 0xEB9F, 1, 0, self.hdr_len, 0, len(types), len(types), len(self.strings)
        )
        return header.ljust(self.hdr_len, b"\0") + types + bytes(self.strings)


def kernel_like(order: str = "<") -> BtfWriter:
    """A blob shaped like the parts of vmlinux BTF that the agent reads."""
    w = BtfWriter(order)
    long_ = w.int_("long int", 8, signed=True)
    int_ = w.int_("int", 4, signed=True)
    _add_other_kinds(w, long_, int_)
    _add_memcg(w, long_)
    task_ptr = _add_task(w, long_, int_)
    _add_enums(w, task_ptr)
    _add_oddities(w, long_, int_)
    return w


def _add_other_kinds(w: BtfWriter, long_: int, int_: int) -> None:
    """Records of the kinds the reader only skips over."""
    proto = w.add(FUNC_PROTO, "", int_, w.name("a"), int_, w.name("b"), long_, vlen=2)
    w.add(FUNC, "out_of_memory", proto)
    var = w.add(VAR, "some_var", int_, 1)
    w.add(DATASEC, ".data", 8, var, 0, 4, vlen=1)
    w.add(DECL_TAG, "a_tag", proto, -1)
    w.add(FLOAT, "double", 8)
    w.add(RESTRICT, "", int_)
    w.add(FWD, "page_counter")
    w.add(FWD, "fwd_only")
    w.enum64("flags64", {"HUGE": 1 << 40, "TOP": (1 << 64) - 1})
    w.enum64("sflags64", {"MINUS_ONE": -1}, signed=True)


def _add_memcg(w: BtfWriter, long_: int) -> None:
    # typedef struct { s64 counter; } atomic64_t; typedef atomic64_t atomic_long_t;
    s64 = w.add(TYPEDEF, "s64", long_)
    atomic64 = w.struct("", 8, [("counter", s64, 0)])
    atomic_long = w.add(TYPEDEF, "atomic_long_t", w.add(TYPEDEF, "atomic64_t", atomic64))
    page_counter = w.struct(
        "page_counter", 24, [("usage", atomic_long, 0), ("max", long_, 64), ("min", long_, 128)]
    )
    css = w.struct("cgroup_subsys_state", 16, [("cgroup", w.add(PTR, "", 0), 0)])
    swap = w.struct("", 24, [("swap", page_counter, 0), ("memsw", page_counter, 0)], union=True)
    w.struct("mem_cgroup", 64, [("css", css, 0), ("memory", page_counter, 128), ("", swap, 320)])


def _add_task(w: BtfWriter, long_: int, int_: int) -> int:
    """struct task_struct, with kind_flag bitfields; returns its pointer type."""
    uint = w.int_("unsigned int", 4)
    # const volatile short, via a typedef; the pointer to it via a type tag
    short = w.int_("short int", 2, signed=True)
    cv_short = w.add(TYPEDEF, "cv_short", w.add(CONST, "", w.add(VOLATILE, "", short)))
    signal = w.struct(
        "signal_struct", 8, [("nr_threads", int_, 0), ("oom_score_adj", cv_short, 32)]
    )
    signal_ptr = w.add(PTR, "", w.add(TYPE_TAG, "rcu", signal))
    # The anonymous union's anonymous struct holds pid and tgid.
    ids = w.struct("", 8, [("pid", int_, 0), ("tgid", int_, 32)])
    ids_union = w.struct("", 8, [("", ids, 0), ("both", long_, 0)], union=True)
    state = w.add(VOLATILE, "", uint)
    comm = w.array(w.add(CONST, "", w.int_("char", 1, signed=True)), 16)
    grid = w.array(w.array(int_, 4), 3)
    task_ptr = w.add(PTR, "", len(w.records) + 2)  # the struct comes next
    task = w.struct(
        "task_struct",
        128,
        [
            ("__state", state, 0, 0),
            ("", ids_union, 64, 0),
            ("comm", comm, 128, 0),
            ("real_parent", task_ptr, 256, 0),
            ("signal", signal_ptr, 320, 0),
            ("sched_reset_on_fork", uint, 384, 1),
            ("sched_migrated", uint, 385, 2),
            ("grid", grid, 416, 0),
        ],
    )
    assert task == task_ptr + 1
    # Old-style bitfields: no kind_flag, the INT's own bit count says so.
    w.struct("legacy", 8, [("flags", w.int_("unsigned int", 4, bits=3), 0), ("whole", uint, 32)])
    return task_ptr


def _add_enums(w: BtfWriter, task_ptr: int) -> None:
    enum_id = w.enum("cgroup_subsys_id", {"cpuset_cgrp_id": 0, "memory_cgrp_id": 4})
    w.enum("oom_constraint", {"CONSTRAINT_NONE": 0, "CONSTRAINT_MEMCG": 3})
    w.enum("signed_enum", {"NEG": -2}, signed=True)
    w.enum("unsigned_enum", {"BIG": 0xFFFFFFFE})
    w.enum("same_again", {"memory_cgrp_id": 4})
    w.enum("clash_a", {"CLASH": 1})
    w.enum("clash_b", {"CLASH": 2})
    w.struct("oom_control", 16, [("memcg", task_ptr, 0), ("constraint", enum_id, 64)])


def _add_oddities(w: BtfWriter, long_: int, int_: int) -> None:
    # Two definitions of one name, as BTF keeps for types that differ.
    w.struct("dup", 8, [("a", int_, 0), ("b", int_, 32)])
    w.struct("dup", 16, [("a", int_, 0), ("c", long_, 64)])
    w.struct("clash", 8, [("x", int_, 0)])
    w.struct("clash", 8, [("x", int_, 32)])
    w.struct("only_union", 4, [("u", int_, 0)], union=True)
    # A name offset into the tail of a longer string is still that name.
    tail = w.name("xx_tail_named") + len("xx_")
    w.struct(tail, 4, [("t", int_, 0)])


@pytest.fixture(params=["<", ">"], ids=["little-endian", "big-endian"])
def btf(request: pytest.FixtureRequest) -> Btf:
    return Btf.from_bytes(kernel_like(request.param).build())


def test_members_through_embedded_and_typedefed_structs(btf: Btf) -> None:
    assert btf.offset_of("mem_cgroup", "memory") == 16
    assert btf.offset_of("mem_cgroup", "memory.usage.counter") == 16
    assert btf.offset_of("mem_cgroup", "memory.max") == 24
    assert btf.size_of("mem_cgroup", "memory.usage.counter") == 8
    assert btf.size_of("mem_cgroup", "memory") == 24
    assert btf.offset_of("cgroup_subsys_state", "cgroup") == 0


def test_members_of_anonymous_structs_and_unions(btf: Btf) -> None:
    assert btf.offset_of("mem_cgroup", "swap") == 40
    assert btf.offset_of("mem_cgroup", "memsw.min") == 56
    assert btf.offset_of("task_struct", "pid") == 8
    assert btf.offset_of("task_struct", "tgid") == 12
    assert btf.offset_of("task_struct", "both") == 8


def test_sizes_through_typedefs_modifiers_and_arrays(btf: Btf) -> None:
    assert btf.size_of("signal_struct", "oom_score_adj") == 2
    assert btf.offset_of("signal_struct", "oom_score_adj") == 4
    assert btf.size_of("task_struct", "__state") == 4
    assert btf.size_of("task_struct", "comm") == 16
    assert btf.offset_of("task_struct", "comm") == 16
    assert btf.size_of("task_struct", "grid") == 48
    assert btf.offset_of("task_struct", "grid") == 52
    assert btf.size_of("task_struct", "real_parent") == 8  # pointer: sizeof(long)
    assert btf.size_of("task_struct", "signal") == 8  # through a type tag
    assert btf.size_of("oom_control", "constraint") == 4
    assert btf.sizeof_struct("task_struct") == 128
    assert btf.sizeof_struct("page_counter") == 24  # the definition, not the FWD
    assert btf.sizeof_struct("only_union") == 4


def test_pointer_size_follows_long() -> None:
    w = BtfWriter()
    long_ = w.int_("long int", 4, signed=True)
    w.struct("s", 4, [("p", w.add(PTR, "", long_), 0)])
    assert Btf.from_bytes(w.build()).size_of("s", "p") == 4


@pytest.mark.parametrize(
    ("struct_name", "member"),
    [
        ("task_struct", "sched_reset_on_fork"),
        ("task_struct", "sched_migrated"),
        ("legacy", "flags"),
    ],
)
def test_bitfield_offset_is_an_error(btf: Btf, struct_name: str, member: str) -> None:
    with pytest.raises(BtfError, match=rf"{struct_name}.*{member}.*bitfield"):
        btf.offset_of(struct_name, member)
    assert btf.has_member(struct_name, member)


def test_whole_int_next_to_bitfields_is_fine(btf: Btf) -> None:
    assert btf.offset_of("legacy", "whole") == 4


@pytest.mark.parametrize(
    ("struct_name", "path", "message"),
    [
        ("nope", "x", "no struct nope"),
        ("fwd_only", "x", "no struct fwd_only"),
        ("task_struct", "nope", r"task_struct.*'nope'"),
        ("mem_cgroup", "memory.nope", r"mem_cgroup.*'memory\.nope'.*page_counter"),
        ("task_struct", "real_parent.pid", r"task_struct.*real_parent\.pid"),
        ("task_struct", "comm.x", r"task_struct.*comm\.x"),
        ("task_struct", "", "task_struct"),
    ],
)
def test_missing_names_are_errors(btf: Btf, struct_name: str, path: str, message: str) -> None:
    with pytest.raises(BtfError, match=message):
        btf.offset_of(struct_name, path)
    with pytest.raises(BtfError, match=message):
        btf.size_of(struct_name, path)
    assert not btf.has_member(struct_name, path)


def test_has_member(btf: Btf) -> None:
    assert btf.has_member("task_struct", "pid")
    assert btf.has_member("mem_cgroup", "memory.usage.counter")
    assert not btf.has_member("mem_cgroup", "memory.usage.counter.x")


def test_enums(btf: Btf) -> None:
    assert btf.enum_value("cgroup_subsys_id", "memory_cgrp_id") == 4
    assert btf.enum_value("cgroup_subsys_id", "cpuset_cgrp_id") == 0
    assert btf.enum_value("signed_enum", "NEG") == -2
    assert btf.enum_value("unsigned_enum", "BIG") == 0xFFFFFFFE
    assert btf.enum_value("flags64", "HUGE") == 1 << 40
    assert btf.enum_value("flags64", "TOP") == (1 << 64) - 1
    assert btf.enum_value("sflags64", "MINUS_ONE") == -1
    assert btf.enumerator_value("memory_cgrp_id") == 4  # two enums, same value
    assert btf.enumerator_value("CONSTRAINT_MEMCG") == 3
    assert btf.enumerator_value("HUGE") == 1 << 40


def test_enum_errors(btf: Btf) -> None:
    with pytest.raises(BtfError, match="no enum nope"):
        btf.enum_value("nope", "memory_cgrp_id")
    with pytest.raises(BtfError, match=r"cgroup_subsys_id.*pids_cgrp_id"):
        btf.enum_value("cgroup_subsys_id", "pids_cgrp_id")
    with pytest.raises(BtfError, match="pids_cgrp_id"):
        btf.enumerator_value("pids_cgrp_id")
    with pytest.raises(BtfError, match=r"CLASH.*ambiguous"):
        btf.enumerator_value("CLASH")


def test_functions(btf: Btf) -> None:
    assert btf.has_function("out_of_memory")
    assert not btf.has_function("some_var")  # a VAR, not a FUNC
    assert not btf.has_function("out_of")
    assert not btf.has_function("")


def test_same_named_definitions(btf: Btf) -> None:
    assert btf.offset_of("dup", "a") == 0
    assert btf.offset_of("dup", "b") == 4
    assert btf.offset_of("dup", "c") == 8
    with pytest.raises(BtfError, match=r"dup.*ambiguous"):
        btf.sizeof_struct("dup")
    with pytest.raises(BtfError, match=r"clash.*ambiguous"):
        btf.offset_of("clash", "x")
    assert btf.sizeof_struct("clash") == 8


def test_name_in_the_tail_of_a_longer_string(btf: Btf) -> None:
    assert btf.offset_of("tail_named", "t") == 0
    with pytest.raises(BtfError, match="no struct named"):
        btf.sizeof_struct("named")


def test_longer_header_and_load_from_file(tmp_path: Path) -> None:
    w = kernel_like()
    w.hdr_len = 32  # a later header version may append fields
    path = tmp_path / "btf"
    path.write_bytes(w.build())
    assert Btf.load(path).offset_of("task_struct", "tgid") == 12


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="cannot read BTF"):
        Btf.load(tmp_path / "missing")


def test_malformed_data() -> None:
    good = kernel_like().build()
    with pytest.raises(BtfError, match="magic"):
        Btf.from_bytes(b"\x00\x00" + good[2:])
    with pytest.raises(BtfError, match="header"):
        Btf.from_bytes(good[:10])
    with pytest.raises(BtfError, match="version"):
        Btf.from_bytes(good[:2] + b"\x02" + good[3:])
    with pytest.raises(BtfError, match="past the end"):
        Btf.from_bytes(good[:-1])

    w = BtfWriter()
    w.add(INT, "int", 4)  # missing its encoding word
    w.add(PTR, "", 1)
    with pytest.raises(BtfError, match="truncated"):
        Btf.from_bytes(w.build())

    w = BtfWriter()
    w.add(25, "future")
    with pytest.raises(BtfError, match="unknown BTF kind 25"):
        Btf.from_bytes(w.build())


def test_bad_type_references() -> None:
    w = BtfWriter()
    w.struct("dangling", 4, [("m", 99, 0)])
    loop = len(w.records) + 1
    w.add(TYPEDEF, "a", loop + 1)
    w.add(TYPEDEF, "b", loop)
    w.struct("looped", 4, [("m", loop, 0)])
    btf = Btf.from_bytes(w.build())
    with pytest.raises(BtfError, match="out of range"):
        btf.size_of("dangling", "m")
    with pytest.raises(BtfError, match="too long"):
        btf.size_of("looped", "m")
