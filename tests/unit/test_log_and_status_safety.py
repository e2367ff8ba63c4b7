"""Diagnostic logs and the systemd status line quote names from processes and
cgroups: on a console they are printable, in JSON they are JSON, and the status
line a `systemctl status` prints is one safe line."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import orjson
import pytest

from oomtrace import log
from oomtrace.display import is_printable
from oomtrace.notify import Notifier

HOSTILE = os.fsdecode(b"\x1b[2J\x1b]0;t\x07\r\nfake\xff")


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield None
    log.configure("info", "json")


def test_console_log_is_printable(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("info", "console")
    log.get().warning("pipeline_error", comm=HOSTILE, chain=[HOSTILE], where={"cgroup": HOSTILE})
    line = capsys.readouterr().err.rstrip("\n")
    assert "\n" not in line
    assert is_printable(line)
    assert "\\x1b[2J" in line


def test_json_log_carries_names_that_are_not_utf8(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    log.configure("info", "json")
    log.get().warning("pipeline_error", comm=HOSTILE, chain=[HOSTILE])
    entry = orjson.loads(capsysbinary.readouterr().err)
    assert entry["comm"] == "\x1b[2J\x1b]0;t\x07\r\nfake\\xff"
    assert entry["chain"] == [entry["comm"]]


def test_status_line_is_one_printable_line(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.status(f"sinks: {HOSTILE}")
        message = server.recv(4096).decode()
    assert message.startswith("STATUS=sinks: ")
    assert "\n" not in message and is_printable(message)
