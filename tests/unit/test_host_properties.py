"""Property tests: the readers of /proc and cgroupfs never raise on what they read.

The kernel writes these files, but a reader still meets truncated reads, processes that
name themselves anything, cgroup and mount names with any byte in them, and values it has
never seen. Every input gives a result of the documented type, or the reader's "unknown"
(None or empty), and well-formed content reads back as written.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from oomtrace.host import cgroupfs, memcg, meminfo, procfs
from oomtrace.host.cgroupfs import CgroupPaths, Hierarchy, parse_mountinfo
from oomtrace.host.kubepath import KubeCgroup, parse_kube_cgroup

# Derandomized so that CI runs the same examples every time, and no example database is
# written next to the sources.
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)
# Fewer examples where each one writes its files into a fresh directory.
ON_DISK = settings(PROPERTY, max_examples=60)

# Tokens that break naive parsers: NUL, invalid UTF-8, line breaks str.splitlines() knows
# but the kernel does not write, digits int() refuses, numbers past every range, signs.
GARBAGE_TOKENS = (
    b"\0",
    b"\xff\xfe",
    b"\x80",
    b"\n",
    b"\r",
    b"\x0b",
    b"\x1c",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b" ",
    b"\t",
    b":",
    b")",
    b"(",
    b"-",
    b"-1",
    b"+7",
    b"1_000",
    "\u00b2".encode(),
    "\u0663".encode(),
    b"9" * 5000,
    b"18446744073709551616",
    b"-9223372036854775809",
    b"max",
    b" kB",
    b" (deleted)",
)
garbage = st.one_of(st.sampled_from(GARBAGE_TOKENS), st.binary(max_size=16))


@st.composite
def hostile(draw: st.DrawFn, real: st.SearchStrategy[bytes]) -> bytes:
    """Real-looking content as is, truncated, with garbage spliced in or over a span,
    or plain random bytes."""
    how = draw(st.sampled_from(["real", "truncated", "spliced", "overwritten", "random"]))
    if how == "random":
        return draw(st.binary(max_size=512))
    data = draw(real)
    if how == "real":
        return data
    at = draw(st.integers(0, len(data)))
    if how == "truncated":
        return data[:at]
    junk = b"".join(draw(st.lists(garbage, min_size=1, max_size=4)))
    end = at if how == "spliced" else draw(st.integers(at, len(data)))
    return data[:at] + junk + data[end:]


def any_text(*, surrogates: bool = False) -> st.SearchStrategy[str]:
    chars = st.characters(exclude_categories=[] if surrogates else ["Cs"])
    return st.one_of(
        st.text(chars, max_size=80),
        st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape")),
    )


numbers = st.one_of(
    st.integers(0, 2**64),
    st.integers(-(2**63), 2**63),
    st.sampled_from([0, 1, -1, 2**62, 2**63 - 1, 2**64 - 1]),
)
# What may stand where a number should. str.isdigit() is true for the first three, yet
# int() refuses "\u00b2" and that many digits; int() takes the signed, underscored and
# Arabic-Indic ones, none of which the kernel prints.
odd_numbers = st.sampled_from(
    ["\u00b2", "\u0663", "9" * 5000, "", "-1", "+7", "1_000", "0x10", "1e3", "\ufffd"]
)


def number_text(*, odd: bool) -> st.SearchStrategy[str]:
    return st.one_of(numbers.map(str), odd_numbers) if odd else numbers.map(str)


# -- /proc/<pid>: stat, status, cmdline, cgroup, oom_score_adj, statm -----------------

# comm is at most 15 bytes and is printed raw into stat: spaces, ")" and newlines included.
comm_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=5)


@st.composite
def stat_content(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    comm = draw(comm_text)
    ppid, tty_nr, start = draw(numbers), draw(numbers), draw(numbers)
    rest = draw(st.lists(numbers, min_size=48, max_size=48))
    # Fields 4, 7 and 22 (1-based) are ppid, tty_nr and starttime.
    rest[0], rest[3], rest[18] = ppid, tty_nr, start
    state = draw(st.sampled_from("RSDZTtXIP"))
    pid = draw(st.integers(1, 4194304))
    line = f"{pid} ({comm}) {state} " + " ".join(map(str, rest)) + "\n"
    return line.encode(), {"comm": comm, "ppid": ppid, "tty_nr": tty_nr, "start_ticks": start}


@st.composite
def status_content(draw: st.DrawFn, *, odd: bool = False) -> tuple[bytes, dict[str, str]]:
    """/proc/<pid>/status, and the values of Tgid, Uid and the memory keys in it."""
    number = number_text(odd=True) if odd else st.integers(0, 2**32).map(str)
    values = {key: draw(number) for key in (*procfs._MEMORY_KEYS, "Tgid", "Uid")}
    name = draw(comm_text.map(lambda s: s.replace("\n", "\\n")))
    uid, tgid = values["Uid"], values["Tgid"]
    lines = [f"Name:\t{name}", "Umask:\t0022", "State:\tS (sleeping)"]
    lines += [f"Tgid:\t{tgid}", "Ngid:\t0", f"Pid:\t{tgid}", "PPid:\t1"]
    lines += [f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}", "Gid:\t0\t0\t0\t0"]
    lines += [f"{key}:\t{values[key]:>8} kB" for key in procfs._MEMORY_KEYS]
    lines += ["Threads:\t1", "voluntary_ctxt_switches:\t12"]
    return ("\n".join(lines) + "\n").encode(), values


cmdline_content = st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"")), max_size=6)

# A cgroup name may hold any byte but "/" and NUL; /proc/<pid>/cgroup prints it raw.
cgroup_name = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/\0\n"), min_size=1, max_size=8
)
cgroup_path = st.lists(cgroup_name, max_size=4).map(lambda parts: "/" + "/".join(parts))
# Paths as callers pass them, and any string at all: NUL, lone surrogates, "..", no "/".
any_path = st.one_of(
    cgroup_path,
    any_text(surrogates=True).map(lambda s: "/" + s),
    st.lists(st.sampled_from(["..", ".", "", "a", "\0", "b\0", "\ud800", "\udcff"])).map(
        lambda parts: "/" + "/".join(parts)
    ),
    any_text(surrogates=True),
)


@st.composite
def cgroup_content(draw: st.DrawFn) -> tuple[bytes, str, str | None]:
    unified = draw(cgroup_path)
    memory = draw(st.one_of(st.none(), cgroup_path))
    lines = [f"{n}:{c}:{draw(cgroup_path)}" for n, c in ((12, "cpu,cpuacct"), (3, "pids"))]
    if memory is not None:
        lines.append(f"7:memory:{memory}")
    lines.append(f"0::{unified}")
    return ("\n".join(lines) + "\n").encode(), unified, memory


def _content_of(t: tuple[bytes, object]) -> bytes:
    return t[0]


PROC_FILES = {
    "stat": hostile(stat_content().map(_content_of)),
    "status": hostile(status_content(odd=True).map(_content_of)),
    "cmdline": hostile(cmdline_content.map(lambda args: b"".join(a + b"\0" for a in args))),
    "cgroup": hostile(cgroup_content().map(lambda t: t[0])),
    "oom_score_adj": hostile(st.integers(-1000, 1000).map(lambda n: f"{n}\n".encode())),
    "statm": hostile(
        st.lists(number_text(odd=True), min_size=7, max_size=7).map(
            lambda v: (" ".join(v) + "\n").encode()
        )
    ),
}
# Any of a process's files may be missing: it exited, or it is a kernel thread.
proc_files = st.fixed_dictionaries({}, optional=PROC_FILES)


@contextmanager
def fake_proc(files: dict[str, bytes]) -> Iterator[None]:
    """Every pid's /proc directory is one temporary directory holding ``files``."""
    with tempfile.TemporaryDirectory() as directory:
        for name, data in files.items():
            Path(directory, name).write_bytes(data)

        def open_pid(pid: int) -> int | None:
            if pid <= 0:
                return None
            return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

        with mock.patch.object(procfs, "_open_pid", open_pid):
            yield


def _optional(value: object, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def check_snapshot(snap: procfs.ProcSnapshot | None) -> None:
    if snap is None:
        return
    assert isinstance(snap.tgid, int)
    assert isinstance(snap.start_ticks, int)
    assert isinstance(snap.comm, str)
    assert snap.cmdline is None or all(isinstance(a, str) for a in snap.cmdline)
    assert snap.uid is None or (isinstance(snap.uid, int) and snap.uid >= 0)
    assert _optional(snap.ppid, int)
    assert len(snap.parents) <= procfs.MAX_PARENTS
    assert all(isinstance(p.pid, int) and isinstance(p.comm, str) for p in snap.parents)
    assert _optional(snap.tty, str)
    assert _optional(snap.oom_score_adj, int)
    assert _optional(snap.memory_cgroup, str)
    assert _optional(snap.unified_cgroup, str)
    assert set(snap.memory_kb) <= set(procfs._MEMORY_KEYS)
    assert all(isinstance(v, int) and v >= 0 for v in snap.memory_kb.values())


@ON_DISK
@given(files=proc_files, with_parents=st.booleans())
def test_proc_readers_take_any_content(files: dict[str, bytes], with_parents: bool) -> None:
    with fake_proc(files):
        check_snapshot(procfs.snapshot(1234, with_parents=with_parents))
        assert _optional(procfs.tgid_of(1234), int)
        assert _optional(procfs.start_ticks(1234), int)
        holders = procfs.top_memory_holders([1, 2, 3], 2)
    assert len(holders) <= 2
    assert all(isinstance(h.comm, str) and h.rss_kb >= 0 for h in holders)


@ON_DISK
@given(status=status_content(odd=True), rss=number_text(odd=True))
def test_proc_readers_take_odd_numbers(status: tuple[bytes, dict[str, str]], rss: str) -> None:
    stat = b"1234 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0\n"
    with fake_proc({"stat": stat, "status": status[0], "statm": f"1 {rss} 1\n".encode()}):
        check_snapshot(procfs.snapshot(1234, with_parents=False))
        assert _optional(procfs.tgid_of(1234), int)
        holders = procfs.top_memory_holders([1234], 1)
    assert all(h.rss_kb >= 0 for h in holders)


@PROPERTY
@given(data=hostile(stat_content().map(_content_of)))
def test_parse_stat_takes_any_bytes(data: bytes) -> None:
    stat = procfs._parse_stat(data)
    if stat is not None:
        assert isinstance(stat.comm, str)
        assert all(isinstance(v, int) for v in (stat.ppid, stat.tty_nr, stat.start_ticks))


@PROPERTY
@given(content=stat_content())
def test_parse_stat_reads_back_what_the_kernel_writes(
    content: tuple[bytes, dict[str, object]],
) -> None:
    data, expected = content
    stat = procfs._parse_stat(data)
    assert stat is not None
    assert {
        "comm": stat.comm,
        "ppid": stat.ppid,
        "tty_nr": stat.tty_nr,
        "start_ticks": stat.start_ticks,
    } == expected


@ON_DISK
@given(content=status_content(), cgroup=cgroup_content(), args=cmdline_content)
def test_snapshot_reads_back_what_the_kernel_writes(
    content: tuple[bytes, dict[str, str]],
    cgroup: tuple[bytes, str, str | None],
    args: list[bytes],
) -> None:
    status, text = content
    values = {key: int(value) for key, value in text.items()}
    cgroup_raw, unified, memory = cgroup
    files = {
        "stat": b"1234 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0\n",
        "status": status,
        "cgroup": cgroup_raw,
        "cmdline": b"".join(a + b"\0" for a in args),
        "oom_score_adj": b"-998\n",
    }
    with fake_proc(files):
        snap = procfs.snapshot(1234, with_parents=False)
        assert procfs.tgid_of(1234) == values["Tgid"]
    assert snap is not None
    assert snap.tgid == values["Tgid"]
    assert snap.uid == values["Uid"]
    assert snap.memory_kb == {key: values[key] for key in procfs._MEMORY_KEYS}
    assert snap.unified_cgroup == unified
    assert snap.memory_cgroup == (memory if memory is not None else unified)
    assert snap.cmdline == [os.fsdecode(a) for a in args]
    assert snap.oom_score_adj == -998
    assert snap.start_ticks == 777


@PROPERTY
@given(name=cgroup_path)
def test_a_cgroup_named_with_line_breaks_stays_one_line(name: str) -> None:
    # Only "\n" ends a line of /proc/<pid>/cgroup; "\r", "\x85" or "\u2028" are name bytes.
    assume(not name.endswith(" (deleted)"))
    assert procfs._cgroups(f"0::{name}\n".encode()) == (name, name)


@PROPERTY
@given(data=st.one_of(hostile(status_content(odd=True).map(_content_of)), st.none()))
def test_status_takes_any_bytes(data: bytes | None) -> None:
    fields = procfs._status(data)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


@PROPERTY
@given(data=st.one_of(hostile(cgroup_content().map(lambda t: t[0])), st.none()))
def test_cgroups_takes_any_bytes(data: bytes | None) -> None:
    memory, unified = procfs._cgroups(data)
    assert _optional(memory, str)
    assert _optional(unified, str)


@PROPERTY
@given(tty_nr=numbers)
def test_tty_name_of_any_number(tty_nr: int) -> None:
    name = procfs.tty_name(tty_nr)
    assert (name is None) == (tty_nr == 0)


@PROPERTY
@given(start_ns=st.integers(0, 2**64))
def test_kernel_start_to_ticks_is_monotonic(start_ns: int) -> None:
    ticks = procfs.kernel_start_to_ticks(start_ns)
    assert 0 <= ticks <= procfs.kernel_start_to_ticks(start_ns + 10**9)


# -- memory cgroups -------------------------------------------------------------------

stat_key = st.one_of(
    st.sampled_from((*memcg._V2_STAT_BYTES, *memcg._V1_STAT_BYTES, "pgfault", "total_rss")),
    st.from_regex(r"[a-z_]{1,16}", fullmatch=True),
)
flat_keyed = st.dictionaries(stat_key, st.integers(0, 2**63), max_size=12)


def _render_flat(values: dict[str, int]) -> bytes:
    return "".join(f"{k} {v}\n" for k, v in values.items()).encode()


single_value = hostile(
    st.one_of(number_text(odd=True), st.just("max")).map(lambda s: f"{s}\n".encode())
)
MEMCG_FILES = {
    "memory.max": single_value,
    "memory.current": single_value,
    "memory.limit_in_bytes": single_value,
    "memory.usage_in_bytes": single_value,
    "memory.failcnt": single_value,
    "memory.stat": hostile(flat_keyed.map(_render_flat)),
    "memory.events": hostile(flat_keyed.map(_render_flat)),
    "memory.oom_control": hostile(flat_keyed.map(_render_flat)),
    "cgroup.procs": hostile(
        st.lists(st.integers(1, 4194304), max_size=6).map(
            lambda pids: "".join(f"{p}\n" for p in pids).encode()
        )
    ),
}
memcg_files = st.fixed_dictionaries({}, optional=MEMCG_FILES)


def check_memcg(data: dict[str, object] | None, path: str) -> None:
    if data is None:
        return
    assert data["path"] == path
    limit = data["limit_bytes"]
    assert limit is None or (isinstance(limit, int) and 0 <= limit < 2**62)
    assert _optional(data["usage_bytes"], int)
    working_set = data["working_set_bytes"]
    assert working_set is None or (isinstance(working_set, int) and working_set >= 0)
    for key in ("stat", "events"):
        values = data[key]
        assert values is None or isinstance(values, dict)
        if isinstance(values, dict):
            assert all(isinstance(k, str) and isinstance(v, int) for k, v in values.items())


@ON_DISK
@given(files=memcg_files, version=st.sampled_from([1, 2]))
def test_memcg_readers_take_any_content(files: dict[str, bytes], version: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        mount = Path(directory)
        (mount / "a").mkdir()
        for name, data in files.items():
            (mount / "a" / name).write_bytes(data)
            (mount / name).write_bytes(data)
        hierarchy = Hierarchy(mount=mount, hierarchy_id=0 if version == 2 else 4, version=version)
        for path in ("/", "/a", "/a/gone"):
            check_memcg(memcg.read_memcg(hierarchy, path), path)
        pids = memcg.subtree_pids(hierarchy, "/")
    assert all(isinstance(p, int) and where in ("/", "/a") for p, where in pids.items())


@ON_DISK
@given(path=any_path, version=st.sampled_from([1, 2]))
def test_memcg_readers_take_any_path(path: str, version: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        hierarchy = Hierarchy(mount=Path(directory), hierarchy_id=0, version=version)
        check_memcg(memcg.read_memcg(hierarchy, path), path)
        assert isinstance(memcg.subtree_pids(hierarchy, path), dict)


@PROPERTY
@given(values=flat_keyed)
def test_flat_keyed_reads_back_what_the_kernel_writes(values: dict[str, int]) -> None:
    assert memcg._flat_keyed(_render_flat(values).decode()) == values


@PROPERTY
@given(data=hostile(flat_keyed.map(_render_flat)))
def test_flat_keyed_and_numbers_take_any_text(data: bytes) -> None:
    text = data.decode("ascii", "replace")
    values = memcg._flat_keyed(text)
    assert values is not None
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in values.items())
    assert _optional(memcg._int(text), int)
    limit = memcg._limit(text)
    assert limit is None or 0 <= limit < 2**62
    assert set(memcg._v1_stat(values)) <= set(memcg._V1_STAT_BYTES.values())


@PROPERTY
@given(value=numbers)
def test_limit_reads_back_finite_limits(value: int) -> None:
    expected = value if 0 <= value < 2**62 else None
    assert memcg._limit(f"{value}\n") == expected


@PROPERTY
@given(a=any_text(), b=any_text())
def test_common_ancestor_is_an_ancestor_of_both(a: str, b: str) -> None:
    common = memcg.common_ancestor(a, b)
    assert common == memcg.common_ancestor(b, a)
    assert common in memcg.ancestry(a)
    assert common in memcg.ancestry(b)
    assert memcg.ancestry(a)[-1] == "/"


# -- mountinfo and cgroup hierarchies ----------------------------------------------------


def _kernel_escape(field: str) -> str:
    # show_mountinfo() escapes exactly these four characters as \ooo.
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in field)


mount_point = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=20
).map(lambda s: "/" + s)


@st.composite
def mountinfo_line(draw: st.DrawFn) -> tuple[str, str, str, str, tuple[str, ...]]:
    mount, root = draw(mount_point), draw(mount_point)
    fstype = draw(st.sampled_from(["cgroup", "cgroup2", "ext4", "tmpfs", "proc"]))
    options = draw(st.lists(st.sampled_from(["rw", "memory", "nsdelegate", "cpu"]), min_size=1))
    optional = draw(st.lists(st.sampled_from(["shared:5", "master:1", "unbindable"])))
    source = draw(mount_point)
    line = " ".join(
        [
            "36",
            "25",
            "0:31",
            _kernel_escape(root),
            _kernel_escape(mount),
            "rw,nosuid,nodev",
            *optional,
            "-",
            fstype,
            _kernel_escape(source),
            ",".join(options),
        ]
    )
    return line, mount, root, fstype, tuple(options)


@PROPERTY
@given(lines=st.lists(mountinfo_line(), max_size=5))
def test_parse_mountinfo_reads_back_what_the_kernel_writes(
    lines: list[tuple[str, str, str, str, tuple[str, ...]]],
) -> None:
    mounts = parse_mountinfo("".join(line[0] + "\n" for line in lines))
    expected = [
        (Path(mount), root, fstype, options)
        for _, mount, root, fstype, options in lines
        if fstype in ("cgroup", "cgroup2")
    ]
    assert [(m.mount, m.root, m.fstype, m.super_options) for m in mounts] == expected


mountinfo_bytes = hostile(
    st.lists(mountinfo_line(), max_size=4).map(
        lambda lines: "".join(line[0] + "\n" for line in lines).encode()
    )
)


@PROPERTY
@given(data=mountinfo_bytes)
def test_parse_mountinfo_takes_any_text(data: bytes) -> None:
    for mount in parse_mountinfo(data.decode("utf-8", "surrogateescape")):
        assert mount.fstype in ("cgroup", "cgroup2")
        assert isinstance(mount.mount, Path)
        assert isinstance(mount.root, str)
        assert all(isinstance(o, str) for o in mount.super_options)


proc_cgroups_bytes = hostile(
    st.lists(
        st.tuples(st.sampled_from(["cpu", "memory", "pids", "misc"]), number_text(odd=True)),
        max_size=5,
    ).map(
        lambda rows: (
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
            + "".join(f"{name}\t{h}\t1\t1\n" for name, h in rows)
        ).encode()
    )
)


@ON_DISK
@given(mountinfo=mountinfo_bytes, proc_cgroups=proc_cgroups_bytes, path=any_path)
def test_cgroup_paths_take_any_mountinfo(mountinfo: bytes, proc_cgroups: bytes, path: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "mountinfo").write_bytes(mountinfo)
        Path(directory, "cgroups").write_bytes(proc_cgroups)
        # Constructing reads both files and walks nothing.
        paths = CgroupPaths(Path(directory, "mountinfo"), Path(directory, "cgroups"))
    for hierarchy in (paths.memory, paths.unified):
        assert hierarchy is None or isinstance(hierarchy.hierarchy_id, int)
    assert _optional(paths.memcg_dir(path), Path)


@PROPERTY
@given(text=proc_cgroups_bytes.map(lambda b: b.decode("utf-8", "replace")))
def test_proc_cgroups_takes_any_text(text: str) -> None:
    ids = cgroupfs._parse_proc_cgroups(text)
    assert all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in ids.items())


@PROPERTY
@given(root=st.one_of(st.just("/"), cgroup_path, any_path), path=any_path)
@example(root="/", path="/a\0b")
@example(root="/", path="/a/\ud800")
def test_dir_of_stays_under_the_mount(root: str, path: str) -> None:
    mount = Path("/m")
    directory = Hierarchy(mount=mount, hierarchy_id=0, version=2, root=root).dir_of(path)
    if directory is not None:
        assert directory == mount or mount in directory.parents
        assert ".." not in directory.parts
        # Every os call on it raises OSError at worst, never ValueError.
        os.fsencode(directory)
        assert "\0" not in str(directory)


# -- Kubernetes facts from a cgroup path ------------------------------------------------

ROLES = {"container", "conmon", "pod", "qos", "kubepods"}
QOS_CLASSES = {"", "Guaranteed", "Burstable", "BestEffort"}
_DASHED_UID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}"
)
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def check_kube(kube: KubeCgroup | None) -> None:
    if kube is None:
        return
    assert kube.driver in ("cgroupfs", "systemd")
    assert kube.role in ROLES
    assert kube.qos_class in QOS_CLASSES
    assert (kube.qos_class == "") == (kube.role == "kubepods")
    assert (kube.pod_uid is not None) == (kube.role in ("pod", "container", "conmon"))
    assert kube.pod_uid is None or _DASHED_UID.fullmatch(kube.pod_uid)
    assert (kube.container_id is not None) == (kube.role == "container")
    assert kube.container_id is None or _CONTAINER_ID.fullmatch(kube.container_id)
    assert kube.runtime in (None, "containerd", "cri-o", "docker")
    assert kube.role != "conmon" or kube.runtime == "cri-o"


hex_digits = "0123456789abcdef"
pod_uid = st.one_of(
    st.uuids().map(str), st.text(st.sampled_from(hex_digits), min_size=32, max_size=32)
)
container_id = st.text(st.sampled_from(hex_digits), min_size=64, max_size=64)


@st.composite
def kube_path(draw: st.DrawFn) -> tuple[str, KubeCgroup]:
    driver = draw(st.sampled_from(["cgroupfs", "systemd"]))
    qos = draw(st.sampled_from(["", "burstable", "besteffort"]))
    uid, cid = draw(pod_uid), draw(container_id)
    runtime = draw(st.sampled_from(["", "crio", "docker", "cri-containerd", "conmon"]))
    above = draw(st.lists(cgroup_name.filter(lambda p: "kubepods" not in p), max_size=2))
    below = draw(st.lists(cgroup_name, max_size=2))
    qos_class = {"": "Guaranteed", "burstable": "Burstable", "besteffort": "BestEffort"}[qos]
    if driver == "cgroupfs":
        runtime = "" if runtime == "cri-containerd" else runtime
        parts = ["kubepods", *([qos] if qos else []), f"pod{uid}"]
        parts.append(
            f"crio-conmon-{cid}" if runtime == "conmon" else f"{runtime}-{cid}" if runtime else cid
        )
    else:
        runtime = runtime or "cri-containerd"
        slice_prefix = f"kubepods-{qos}" if qos else "kubepods"
        parts = ["kubepods.slice", *([f"{slice_prefix}.slice"] if qos else [])]
        parts.append(f"{slice_prefix}-pod{uid.replace('-', '_')}.slice")
        name = "crio-conmon" if runtime == "conmon" else runtime
        parts.append(f"{name}-{cid}.scope")
    names = {"crio": "cri-o", "docker": "docker", "cri-containerd": "containerd", "conmon": "cri-o"}
    expected = KubeCgroup(
        driver=driver,
        qos_class=qos_class,
        pod_uid=uid,
        container_id=None if runtime == "conmon" else cid,
        runtime=names.get(runtime),
        role="conmon" if runtime == "conmon" else "container",
    )
    return "/" + "/".join([*above, *parts, *below]), expected


@PROPERTY
@given(content=kube_path())
def test_parse_kube_cgroup_reads_back_what_the_kubelet_writes(
    content: tuple[str, KubeCgroup],
) -> None:
    path, expected = content
    assert parse_kube_cgroup(path) == expected
    # A whole /proc/<pid>/cgroup line, as some callers pass it.
    assert parse_kube_cgroup(f"0::{path}\n") == expected


@PROPERTY
@given(
    path=st.one_of(
        any_path,
        kube_path().map(lambda t: t[0]),
        hostile(kube_path().map(lambda t: t[0].encode())).map(
            lambda b: b.decode("utf-8", "surrogateescape")
        ),
    )
)
def test_parse_kube_cgroup_takes_any_text(path: str) -> None:
    check_kube(parse_kube_cgroup(path))


@PROPERTY
@given(text=st.text())
def test_meminfo_takes_any_text(text: str) -> None:
    pages = meminfo.parse_node_pages(text)
    assert pages is None or (isinstance(pages, int) and pages >= 0)


def test_meminfo_reads_ram_and_swap() -> None:
    text = "MemTotal:       24576000 kB\nMemFree: 1 kB\nSwapTotal:      1024 kB\n"
    assert meminfo.parse_node_pages(text) == (24576000 + 1024) * 1024 // procfs.PAGE_SIZE
    assert meminfo.parse_node_pages("MemTotal: \u00b2 kB\nSwapTotal: 0 kB\n") is None
    assert meminfo.parse_node_pages("MemTotal: 1 kB\n") is None
