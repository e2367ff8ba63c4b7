"""Runs the real agent (`python -m oomtrace`) as a subprocess and reads its events."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

READY_TIMEOUT = float(os.environ.get("OOMTRACE_TEST_READY_TIMEOUT", "120"))


class AgentProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [
            sys.executable,
            "-m",
            "oomtrace",
            "--follow",
            "--format",
            "json",
            "--log-format",
            "json",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.events: list[Event] = []
        self.logs: list[Event] = []
        self._buffers = {"out": b"", "err": b""}
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            os.set_blocking(stream.fileno(), False)
            self._sel.register(stream, selectors.EVENT_READ, name)
        self.returncode: int | None = None

    # -- reading ---------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            name = key.data
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                self._sel.unregister(key.fileobj)
                continue
            buf = self._buffers[name] + chunk
            *lines, self._buffers[name] = buf.split(b"\n")
            target = self.events if name == "out" else self.logs
            for line in lines:
                if not line.strip():
                    continue
                try:
                    target.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    # bcc and clang may print plain warnings on stderr.
                    if name == "out":
                        raise
                    target.append({"event": "raw", "line": line.decode(errors="replace")})

    def wait_log(self, event: str, timeout: float = READY_TIMEOUT) -> Event:
        return self._wait(
            lambda: next((e for e in self.logs if e.get("event") == event), None),
            timeout,
            f"log {event!r}",
        )

    def wait_ready(self) -> Event:
        return self.wait_log("ready")

    def wait_for(self, predicate: Predicate, timeout: float = 15.0, what: str = "event") -> Event:
        return self._wait(
            lambda: next((e for e in self.events if predicate(e)), None), timeout, what
        )

    def collect(self, seconds: float) -> list[Event]:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._pump(min(left, 0.1))
        return list(self.events)

    def _wait(self, find: Callable[[], Event | None], timeout: float, what: str) -> Event:
        end = time.monotonic() + timeout
        while True:
            found = find()
            if found is not None:
                return found
            if self.proc.poll() is not None:
                self._pump(0)
                found = find()
                if found is not None:
                    return found
                raise AssertionError(
                    f"agent exited ({self.proc.returncode}) before {what}: {self.logs[-5:]}"
                )
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {what} within {timeout} s; "
                    f"events: {self.events[-5:]}, logs: {self.logs[-5:]}"
                )
            self._pump(min(left, 0.1))

    # -- stopping --------------------------------------------------------------

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self._pump(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._pump(0)
        while self._sel.get_map():
            self._pump(0.1)
        self.returncode = self.proc.returncode
        return self.returncode

    def stats(self) -> Event:
        return next(e for e in reversed(self.logs) if e.get("event") == "stopped")


def victim_pid(pid: int) -> Predicate:
    return lambda e: (e.get("victim") or {}).get("pid") == pid


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
