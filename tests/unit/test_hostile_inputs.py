"""Inputs hostile by size or shape, each against its documented bound
(docs/events.md, "Names"): a command line of 128 KiB or of 10 000 arguments, a
configuration file of any bytes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomtrace import configfile
from oomtrace.config import ConfigError
from oomtrace.display import DEFAULT_LIMIT, is_printable
from oomtrace.host import procfs
from oomtrace.text import render
from tests.support.wait import wait_until

SLEEP = "import time; time.sleep(300)"
PROPERTY = settings(max_examples=200, derandomize=True, database=None, deadline=None)


@pytest.fixture(params=["128KiB", "10000args"])
def long_argv(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    # One argument may hold at most 128 KiB (MAX_ARG_STRLEN): four of 32 KiB.
    args = ["x" * (32 << 10)] * 4 if request.param == "128KiB" else ["\x1b"] * 10_000
    proc = subprocess.Popen([sys.executable, "-c", SLEEP, *args])
    try:
        wait_until(lambda: SLEEP.encode() in Path(f"/proc/{proc.pid}/cmdline").read_bytes())
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_huge_command_line_is_read_to_its_bound(long_argv: subprocess.Popen[bytes]) -> None:
    snap = procfs.snapshot(long_argv.pid)
    assert snap is not None and snap.cmdline is not None
    assert snap.cmdline[:3] == [sys.executable, "-c", SLEEP]
    read = sum(len(a) + 1 for a in snap.cmdline)
    assert read <= procfs.CMDLINE_MAX + 1
    assert len(snap.cmdline) <= procfs.CMDLINE_MAX // 2 + 1
    # Shown to a person: one printable line, cut with a marker.
    event = {
        "type": "signal",
        "time": "t",
        "signal": {"name": "SIGKILL", "code": "SI_USER"},
        "victim": {"pid": long_argv.pid, "comm": "sleep"},
        "sender": {"pid": 1, "comm": "kill", "cmdline": snap.cmdline, "parents": []},
    }
    lines = render(event).split("\n")
    [cmdline] = [line for line in lines if "cmdline" in line]
    assert is_printable(cmdline)
    # 512 characters of the value are kept, each shown as at most 6 ("\\u202e").
    assert len(cmdline) <= 6 * DEFAULT_LIMIT + 64 and "…[+" in cmdline


@PROPERTY
@given(st.binary(max_size=4096))
def test_any_configuration_file_is_settings_or_one_clear_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "oomtrace.toml"
        path.write_bytes(data)
        try:
            values = configfile.read_file(path)
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: ")
            assert "\n" not in message
        else:
            assert set(values) <= set(configfile.KEYS)
