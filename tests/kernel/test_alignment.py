"""The userspace mirrors in oomtrace.kernel.records against the kernel side's structs.

As Tetragon checks its Go mirrors: the BPF text the real loader assembles for this
kernel (same #defines, same stub kernel tree when there are no headers) is
compiled by bcc with one array map per record struct, and the ctypes class bcc
builds from clang's view of each struct must match the mirror field for field.
The header's #define constants must equal the ones records.py uses.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from typing import Any

import pytest

from oomtrace.kernel import features, probes, records

pytestmark = pytest.mark.kernel

# Records, and the map values the agent writes.
ALL_MIRRORS = {**records.MIRRORS, **records.MAP_MIRRORS}
STRUCTS = sorted(ALL_MIRRORS)


def _layout_text(plan: probes.Plan) -> str:
    maps = "\n".join(f"BPF_ARRAY(layout_{name}, struct {name}, 1);" for name in STRUCTS)
    return f"{probes.assemble(plan)}\n{maps}\n"


@pytest.fixture(scope="module")
def bpf() -> Iterator[Any]:
    from bcc import BPF

    tracefs = features.find_tracefs(mount=True)
    plan = probes.plan(features.probe_kernel(tracefs))
    # The real programs are part of the text: they need at least one program to
    # load anyway, and what is checked is then exactly what the agent compiles.
    assert plan.programs
    with pytest.MonkeyPatch.context() as mp:
        if plan.kernel_source is not None:
            mp.setenv("BCC_KERNEL_SOURCE", str(plan.kernel_source))
        b = BPF(text=_layout_text(plan).encode())
        try:
            yield b
        finally:
            b.cleanup()


def _layout(cls: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [(name, getattr(cls, name).offset, getattr(cls, name).size) for name, *_ in cls._fields_]


@pytest.mark.parametrize("name", STRUCTS)
def test_mirror_matches_the_kernel_struct(bpf: Any, name: str) -> None:
    kernel = bpf[f"layout_{name}".encode()].Leaf
    mirror = ALL_MIRRORS[name]
    # Names in order first: a padding field bcc inserted would show up here.
    assert [f[0] for f in kernel._fields_] == [f[0] for f in mirror._fields_]
    assert _layout(kernel) == _layout(mirror)
    assert ctypes.sizeof(kernel) == ctypes.sizeof(mirror)


@pytest.mark.parametrize("name", STRUCTS)
def test_field_types_have_the_kernels_width_and_signedness(bpf: Any, name: str) -> None:
    kernel = bpf[f"layout_{name}".encode()].Leaf
    mirror = ALL_MIRRORS[name]
    probe = kernel()
    mine = mirror()
    for field, *_ in mirror._fields_:
        value = getattr(mine, field)
        if isinstance(value, int):
            # -1 reads back as -1 from a signed field and 2**n - 1 from an
            # unsigned one, on both sides.
            setattr(probe, field, -1)
            setattr(mine, field, -1)
            assert getattr(probe, field) == getattr(mine, field), field


def test_every_record_kind_has_a_mirror() -> None:
    assert len(records.MIRRORS) == len(records.KIND_NAMES)
    header = probes.bpf_dir().joinpath("oomtrace.h").read_text()
    assert set(re.findall(r"^struct (oomtrace_\w+_rec) \{", header, re.M)) == set(records.MIRRORS)


DEFINE = re.compile(r"^#define\s+OOMTRACE_(\w+)\s+(\d+)\b", re.M)
PREFIXES = (
    "REC_",
    "COMM_LEN",
    "CGROUP_PATH_LEN",
    "MEMCG_LEVELS",
    "TASK_",
    "SIGNAL_",
    "MARK_VICTIM_",
    "INFO_",
    "ARGV_",
    "LAYOUT_VERSION",
)


def _header_constants() -> dict[str, int]:
    header = probes.bpf_dir().joinpath("oomtrace.h").read_text()
    return {name: int(value) for name, value in DEFINE.findall(header)}


def test_header_constants_equal_the_decoders() -> None:
    defined = _header_constants()
    for expected in (
        *(kind.constant for kind in records.RECORD_KINDS),
        "REC_KINDS",
        "COMM_LEN",
        "CGROUP_PATH_LEN",
        "MEMCG_LEVELS",
        "TASK_NO_OFFSETS",
        "TASK_READ_FAILED",
        "TASK_MEMCG_OOM_GROUP",
        "SIGNAL_TRACED",
        "SIGNAL_STOP",
        "MARK_VICTIM_PID_ONLY",
        "MARK_VICTIM_FULL",
        "ARGV_LEN",
        "ARGV_NONE",
        "ARGV_EXEC",
        "ARGV_PROC",
        "LAYOUT_VERSION",
    ):
        assert expected in defined, expected
    for name, value in defined.items():
        assert name.startswith(PREFIXES), f"OOMTRACE_{name} has no counterpart rule"
        assert getattr(records, name) == value, f"OOMTRACE_{name}"


def test_decoder_constants_are_all_in_the_header() -> None:
    defined = _header_constants()
    mine = {
        name
        for name in vars(records)
        if name.startswith(PREFIXES) and isinstance(getattr(records, name), int)
    }
    assert mine == set(defined)
    assert set(records.KIND_NAMES) == {v for k, v in defined.items() if k.startswith("REC_")} - {
        defined["REC_KINDS"]
    }
    assert max(records.KIND_NAMES) < records.REC_KINDS
