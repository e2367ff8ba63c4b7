"""Reader for the kernel's raw BTF, to find struct layouts at start-up.

The agent's BPF programs read kernel structs with bpf_probe_read_kernel, so
they need member offsets of the running kernel, which may have no headers.
The kernel describes its own types in BTF (Documentation/bpf/btf.rst) at
/sys/kernel/btf/vmlinux; this module answers the few questions the agent asks
of it (member offsets and sizes, enum values, whether a function exists).

Loading makes one pass over the type section that records where each type
record starts and indexes the few kinds looked up by name; names and members
are decoded only when asked for.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from typing import NamedTuple, TypeVar

__all__ = ["Btf", "BtfError"]

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
_HEADER = "HBBIIIII"  # magic, version, flags, hdr_len, type_off/len, str_off/len

# Kinds, numbered as in the kernel's include/uapi/linux/btf.h.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19

# Every record is three u32 words (name_off, info, size_or_type) followed by
# kind-specific data: a fixed number of words, then vlen entries of a
# kind-specific number of words each.
_LAYOUT = {
    INT: (1, 0),  # encoding word
    ARRAY: (3, 0),  # elem type, index type, nelems
    STRUCT: (0, 3),  # members: name_off, type, offset
    UNION: (0, 3),
    ENUM: (0, 2),  # name_off, 32-bit value
    FUNC_PROTO: (0, 2),  # params: name_off, type
    VAR: (1, 0),  # linkage
    DATASEC: (0, 3),  # type, offset, size
    DECL_TAG: (1, 0),  # component_idx
    ENUM64: (0, 3),  # name_off, low 32 bits, high 32 bits
}
_LAYOUT.update(
    dict.fromkeys((PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG), (0, 0))
)
# Indexed by the 5-bit kind field; -1 marks kinds whose length is unknown.
_FIXED_WORDS = [_LAYOUT.get(kind, (-1, 0))[0] for kind in range(32)]
_WORDS_PER_ENTRY = [_LAYOUT.get(kind, (-1, 0))[1] for kind in range(32)]

# Kinds that only qualify or rename another type (size_or_type is a type id).
_ALIASES = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})
_SIZED = frozenset({INT, STRUCT, UNION, ENUM, ENUM64, FLOAT})
_INDEXED = (INT, STRUCT, UNION, ENUM, ENUM64, FUNC)
# Longer chains than this only occur in corrupt (cyclic) BTF.
_MAX_HOPS = 64

_T = TypeVar("_T")


class BtfError(Exception):
    """The BTF is malformed, or lacks the type or member asked for."""


class _Member(NamedTuple):
    bit_offset: int
    bitfield_bits: int  # 0 unless the member is a bitfield
    size: int


class Btf:
    """Types of one standalone BTF blob, such as vmlinux's.

    Split BTF, as kernel modules have, numbers its types and strings after
    those of vmlinux and is not supported. Build with
    `load` or `from_bytes`. Where a name has several definitions (BTF keeps
    same-named types from different compilation units when they differ),
    answers must agree across the definitions that have them, else BtfError.
    """

    def __init__(self, words: array[int], strings: bytes) -> None:
        self._words = words
        self._strings = strings
        # _starts[type_id] is the index in _words of that type's record;
        # type id 0 is void and has no record.
        self._starts: array[int] = array("I", [0])
        # For each indexed kind: (name offsets, type ids), in type-id order.
        self._names: dict[int, tuple[array[int], array[int]]] = {
            kind: (array("I"), array("I")) for kind in _INDEXED
        }
        self._id_cache: dict[tuple[int, str], tuple[int, ...]] = {}
        self._ptr_size = 0
        self._scan()

    @classmethod
    def load(cls, path: str | os.PathLike[str] = VMLINUX_BTF) -> Btf:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BtfError(f"cannot read BTF from {os.fspath(path)}: {e}") from e
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Btf:
        if len(data) < struct.calcsize("<" + _HEADER):
            raise BtfError("BTF data shorter than its header")
        # The magic is written in the producer's byte order.
        for order in "<>":
            fields = struct.unpack_from(order + _HEADER, data)
            if fields[0] == _MAGIC:
                break
        else:
            raise BtfError(f"bad BTF magic {data[:2].hex()}")
        _, version, _, hdr_len, type_off, type_len, str_off, str_len = fields
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        # Section offsets count from the end of the header, whose length
        # is given so that later versions can extend it.
        type_start, str_start = hdr_len + type_off, hdr_len + str_off
        if type_start + type_len > len(data) or str_start + str_len > len(data):
            raise BtfError("BTF section extends past the end of the data")
        if type_len % 4:
            raise BtfError("BTF type section is not a whole number of words")
        if str_len == 0 or data[str_start] != 0:
            raise BtfError("BTF string section does not start with an empty string")
        words = array("I", data[type_start : type_start + type_len])
        if (order == "<") != (sys.byteorder == "little"):
            words.byteswap()
        return cls(words, data[str_start : str_start + str_len])

    # --- public queries -------------------------------------------------

    def offset_of(self, struct: str, member_path: str) -> int:
        """Byte offset of a dot-separated member path inside struct `struct`."""
        member = self._member(struct, member_path)
        if member.bitfield_bits or member.bit_offset % 8:
            raise BtfError(f"struct {struct}: member {member_path!r} is a bitfield")
        return member.bit_offset // 8

    def size_of(self, struct: str, member_path: str) -> int:
        """Byte size of a member's type (arrays: element size times length)."""
        return self._member(struct, member_path).size

    def sizeof_struct(self, name: str) -> int:
        sizes = {self._words[self._starts[tid] + 2] for tid in self._composite_ids(name)}
        return _single(sizes, f"size of struct {name}")

    def has_member(self, struct: str, member_path: str) -> bool:
        """Whether some definition of struct `struct` has the member path."""
        ids = self._ids(STRUCT, struct) or self._ids(UNION, struct)
        return any(isinstance(self._walk(tid, member_path), _Member) for tid in ids)

    def enum_value(self, enum_name: str, enumerator: str) -> int:
        ids = self._ids(ENUM, enum_name) + self._ids(ENUM64, enum_name)
        if not ids:
            raise BtfError(f"no enum {enum_name} in BTF")
        values = {v for tid in ids for name, v in self._enumerators(tid) if name == enumerator}
        if not values:
            raise BtfError(f"enum {enum_name} has no enumerator {enumerator}")
        return _single(values, f"enum {enum_name} value {enumerator}")

    def enumerator_value(self, name: str) -> int:
        """Value of an enumerator found in any enum."""
        wanted = set(self._string_offsets(name))
        values: set[int] = set()
        for kind in (ENUM, ENUM64):
            for tid in self._names[kind][1]:
                values.update(v for off, v in self._enumerator_offsets(tid) if off in wanted)
        if not values:
            raise BtfError(f"no enumerator {name} in BTF")
        return _single(values, f"enumerator {name}")

    def has_function(self, name: str) -> bool:
        return bool(self._ids(FUNC, name))

    # --- parsing --------------------------------------------------------

    def _scan(self) -> None:
        words, starts, names = self._words, self._starts, self._names
        fixed, per_entry = _FIXED_WORDS, _WORDS_PER_ENTRY
        i, end = 0, len(words)
        while i < end:
            if i + 3 > end:
                raise BtfError("truncated BTF type record")
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            if fixed[kind] < 0:
                raise BtfError(f"unknown BTF kind {kind} for type {len(starts)}")
            indexed = names.get(kind)
            if indexed is not None:
                indexed[0].append(words[i])
                indexed[1].append(len(starts))
            starts.append(i)
            i += 3 + fixed[kind] + per_entry[kind] * (info & 0xFFFF)
        if i != end:
            raise BtfError("truncated BTF type record")

    def _string_offsets(self, name: str) -> list[int]:
        # A name offset may point anywhere a NUL-terminated copy of the name
        # starts, including inside a longer string that ends the same way.
        if not name:
            return []
        needle = name.encode() + b"\0"
        found, pos = [], self._strings.find(needle)
        while pos >= 0:
            found.append(pos)
            pos = self._strings.find(needle, pos + 1)
        return found

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        if offset >= len(self._strings) or end < 0:
            raise BtfError(f"bad BTF string offset {offset}")
        return self._strings[offset:end].decode(errors="replace")

    def _ids(self, kind: int, name: str) -> tuple[int, ...]:
        """Type ids of `kind` named `name`, lowest first."""
        cached = self._id_cache.get((kind, name))
        if cached is not None:
            return cached
        name_offs, ids = self._names[kind]
        found = []
        for off in self._string_offsets(name):
            i = -1
            while True:
                try:
                    i = name_offs.index(off, i + 1)
                except ValueError:
                    break
                found.append(ids[i])
        result = self._id_cache[kind, name] = tuple(sorted(found))
        return result

    def _composite_ids(self, name: str) -> tuple[int, ...]:
        # Forward declarations are not indexed; only full definitions count.
        ids = self._ids(STRUCT, name) or self._ids(UNION, name)
        if not ids:
            raise BtfError(f"no struct {name} in BTF")
        return ids

    def _record(self, tid: int) -> tuple[int, int, int]:
        """(word index of the record, kind, vlen)."""
        if not 0 < tid < len(self._starts):
            raise BtfError(f"type id {tid} out of range")
        i = self._starts[tid]
        info = self._words[i + 1]
        return i, (info >> 24) & 0x1F, info & 0xFFFF

    def _strip(self, tid: int) -> int:
        """Follow typedefs and qualifiers to the underlying type."""
        for _ in range(_MAX_HOPS):
            if tid == 0:
                return 0
            i, kind, _ = self._record(tid)
            if kind not in _ALIASES:
                return tid
            tid = self._words[i + 2]
        raise BtfError(f"type chain too long at type {tid}")

    def _size(self, tid: int) -> int:
        count = 1
        for _ in range(_MAX_HOPS):
            tid = self._strip(tid)
            if tid == 0:
                break
            i, kind, _ = self._record(tid)
            if kind in _SIZED:
                return count * self._words[i + 2]
            if kind == PTR:
                return count * self._pointer_size()
            if kind != ARRAY:
                break
            tid, count = self._words[i + 3], count * self._words[i + 5]
        raise BtfError(f"type {tid} has no size")

    def _pointer_size(self) -> int:
        # BTF does not record pointer size; like libbpf, take it from the
        # size of `long`, which matches a pointer on Linux.
        if not self._ptr_size:
            longs = self._ids(INT, "long int") or self._ids(INT, "long unsigned int")
            self._ptr_size = (
                self._words[self._starts[longs[0]] + 2] if longs else struct.calcsize("P")
            )
        return self._ptr_size

    # --- members and enumerators ----------------------------------------

    def _member(self, struct: str, path: str) -> _Member:
        found, why = [], ""
        for tid in self._composite_ids(struct):
            result = self._walk(tid, path)
            if isinstance(result, _Member):
                found.append(result)
            else:
                why = result
        if not found:
            raise BtfError(f"struct {struct} has no member {path!r}: {why}")
        return _single(set(found), f"struct {struct} member {path!r}")

    def _walk(self, tid: int, path: str) -> _Member | str:
        """Locate `path` in composite type `tid`, or say why it is not there."""
        bit_offset, member_type, bits = 0, tid, 0
        for part in path.split("."):
            outer = self._strip(member_type)
            if outer == 0 or self._record(outer)[1] not in (STRUCT, UNION):
                return f"{part!r} is not inside an embedded struct or union"
            found = self._find(outer, part.encode() + b"\0")
            if found is None:
                return f"no {part!r} in {self._describe(outer)}"
            offset, member_type, bits = found
            bit_offset += offset
        return _Member(bit_offset, bits, self._size(member_type))

    def _find(self, tid: int, needle: bytes) -> tuple[int, int, int] | None:
        """(bit offset, type id, bitfield bits) of a member of `tid`."""
        words, strings = self._words, self._strings
        i, _, vlen = self._record(tid)
        # kind_flag set: each member's offset word holds the bitfield size
        # in its top 8 bits and the bit offset in the low 24.
        kind_flag = words[i + 1] >> 31
        for m in range(i + 3, i + 3 + 3 * vlen, 3):
            name_off, mtype, offset = words[m], words[m + 1], words[m + 2]
            bits = offset >> 24 if kind_flag else 0
            if kind_flag:
                offset &= 0xFFFFFF
            if name_off == 0:
                # An anonymous struct/union: its members belong to `tid`.
                inner = self._strip(mtype)
                if inner and self._record(inner)[1] in (STRUCT, UNION):
                    found = self._find(inner, needle)
                    if found is not None:
                        return offset + found[0], found[1], found[2]
            elif strings.startswith(needle, name_off):
                if not kind_flag:
                    bits = self._int_bitfield_bits(mtype)
                return offset, mtype, bits
        return None

    def _int_bitfield_bits(self, tid: int) -> int:
        # Without kind_flag a bitfield is an INT whose bit count or bit
        # offset (in its encoding word) differs from a whole int's.
        tid = self._strip(tid)
        if tid == 0:
            return 0
        i, kind, _ = self._record(tid)
        if kind != INT:
            return 0
        encoding = self._words[i + 3]
        nr_bits, int_offset = encoding & 0xFF, (encoding >> 16) & 0xFF
        return nr_bits if nr_bits != self._words[i + 2] * 8 or int_offset else 0

    def _describe(self, tid: int) -> str:
        i, kind, _ = self._record(tid)
        name = self._string(self._words[i]) or "(anonymous)"
        return f"{'union' if kind == UNION else 'struct'} {name}"

    def _enumerator_offsets(self, tid: int) -> list[tuple[int, int]]:
        """(name offset, value) of each enumerator of enum `tid`."""
        words = self._words
        i, kind, vlen = self._record(tid)
        # kind_flag marks a signed enum; otherwise values are unsigned.
        signed = bool(words[i + 1] >> 31)
        out = []
        if kind == ENUM:
            for e in range(i + 3, i + 3 + 2 * vlen, 2):
                value = words[e + 1]
                if signed and value >= 1 << 31:
                    value -= 1 << 32
                out.append((words[e], value))
        else:
            for e in range(i + 3, i + 3 + 3 * vlen, 3):
                value = words[e + 1] | words[e + 2] << 32
                if signed and value >= 1 << 63:
                    value -= 1 << 64
                out.append((words[e], value))
        return out

    def _enumerators(self, tid: int) -> list[tuple[str, int]]:
        return [(self._string(off), v) for off, v in self._enumerator_offsets(tid)]


def _single(values: set[_T], what: str) -> _T:
    """The one value that all definitions of a duplicated name agree on."""
    if len(values) > 1:
        raise BtfError(f"{what} is ambiguous: definitions of that name disagree")
    return values.pop()
