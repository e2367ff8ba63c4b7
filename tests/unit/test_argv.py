"""Command lines kept at exec (records.decode_argv, kernel.commands.entry) and the
victim's age in words."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomtrace.classify import Facts, Party, Rules, classify
from oomtrace.kernel import commands
from oomtrace.kernel.records import (
    ARGV_EXEC,
    ARGV_LEN,
    ARGV_NONE,
    ARGV_PROC,
    Argv,
    RawArgv,
    decode_argv,
)
from oomtrace.schema import duration


def _raw(argv: bytes) -> bytes:
    return argv[:ARGV_LEN].ljust(ARGV_LEN, b"\0")


def test_an_argv_as_exec_left_it() -> None:
    kept = b"sleep\x00500\x00"
    assert decode_argv(len(kept), ARGV_EXEC, _raw(kept)) == Argv(("sleep", "500"), "exec", False)


def test_no_entry_is_no_argv() -> None:
    assert decode_argv(0, ARGV_NONE, _raw(b"")) is None
    # A source this agent does not know is not trusted either.
    assert decode_argv(6, 7, _raw(b"sleep\x00")) is None


def test_empty_arguments_survive() -> None:
    kept = b"printf\x00\x00x\x00"
    assert decode_argv(len(kept), ARGV_EXEC, _raw(kept)).args == ("printf", "", "x")  # type: ignore[union-attr]


def test_a_cut_argv_says_so_and_keeps_the_head() -> None:
    argv = b"\x00".join([b"java", b"-jar", b"app.jar", *[b"-Dx%03d=y" % n for n in range(40)]])
    got = decode_argv(len(argv) + 1, ARGV_EXEC, _raw(argv))
    assert got is not None and got.truncated
    assert got.args[:3] == ("java", "-jar", "app.jar")
    assert "\0".join(got.args).encode() == argv[:ARGV_LEN]


def test_exactly_full_is_not_cut() -> None:
    argv = b"a" * (ARGV_LEN - 1) + b"\x00"
    got = decode_argv(ARGV_LEN, ARGV_EXEC, _raw(argv))
    assert got is not None and not got.truncated and got.args == ("a" * (ARGV_LEN - 1),)


def test_bytes_beyond_size_are_never_read() -> None:
    # What follows argv on the stack is the environment; the kernel never reads
    # past arg_end, and neither does the decoder past `size`.
    raw = _raw(b"sleep\x00500\x00SECRET=1\x00")
    assert decode_argv(10, ARGV_EXEC, raw).args == ("sleep", "500")  # type: ignore[union-attr]


def test_not_utf8_stays_exact() -> None:
    kept = b"\xff\x1b[2J\x00"
    got = decode_argv(len(kept), ARGV_EXEC, _raw(kept))
    assert got is not None and got.args[0].encode("utf-8", "surrogateescape") == b"\xff\x1b[2J"


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=ARGV_LEN, max_size=ARGV_LEN),
)
def test_any_bytes_decode(size: int, source: int, raw: bytes) -> None:
    got = decode_argv(size, source, raw)
    if got is not None:
        assert len("\0".join(got.args).encode("utf-8", "surrogateescape")) <= ARGV_LEN
        assert got.truncated == (size > ARGV_LEN)


def test_a_seeded_entry_is_the_kernels_struct() -> None:
    cmdline = b"postgres\x00-D\x00/var/lib/postgresql\x00"
    value = commands.entry(cmdline)
    assert len(value) == ctypes.sizeof(RawArgv)
    raw = RawArgv.from_buffer_copy(value)
    assert (raw.size, raw.source) == (len(cmdline), ARGV_PROC)
    assert decode_argv(raw.size, raw.source, bytes(raw.args)) == Argv(
        ("postgres", "-D", "/var/lib/postgresql"), "proc", False
    )
    long = b"x" * 1000 + b"\x00"
    raw = RawArgv.from_buffer_copy(commands.entry(long))
    assert raw.size == len(long) and bytes(raw.args) == b"x" * ARGV_LEN


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0.05, "0.05 s"),
        (1.234, "1.2 s"),
        (42.9, "42 s"),
        (725, "12 min 5 s"),
        (4 * 3600 + 12 * 60 + 7, "4 h 12 min"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
    ],
)
def test_age_in_words(seconds: float, words: str) -> None:
    assert duration(seconds) == words


def test_the_explanation_says_how_long_the_victim_lived() -> None:
    victim = Party(pid=10, comm="java", cgroup="/kubepods/pod1/abc")
    leak = Facts(kind="oom_kill", victim=victim, memcg="/kubepods/pod1/abc", victim_age_s=15132.5)
    assert "killed by the kernel OOM killer 4 h 12 min after it started:" in (
        classify(leak, Rules()).explanation
    )
    sender = Party(pid=20, comm="kill", uid=0)
    at_once = Facts(kind="signal", victim=victim, sender=sender, signal="SIGKILL", victim_age_s=1.2)
    assert (
        "was sent SIGKILL 1.2 s after it started by kill" in classify(at_once, Rules()).explanation
    )
    unknown = at_once._replace(victim_age_s=None)
    assert "after it started" not in classify(unknown, Rules()).explanation
