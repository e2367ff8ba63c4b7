"""What one agent leaves for the next: when it last traced.

The pinned kernel side (kernel/pins.py) carries a restart's records over. What
it cannot carry is its own absence: after a reboot, or once the pins were
removed, nothing in the kernel says that tracing ever happened. So the agent
keeps a small file (the unit's StateDirectory, /var/lib/oomtrace) with the
last time it traced, rewritten every few seconds and at exit, and an agent
that starts without pins reports the time since then as a `gap`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

DEFAULT_DIR: Final = Path("/var/lib/oomtrace")
FILE_NAME: Final = "state.json"
LOCK_NAME: Final = "agent.lock"
# Written this often while tracing: a crash loses at most this much of the
# record of when tracing stopped (the gap then starts a little early).
WRITE_EVERY_S: Final = 5.0
BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class State:
    last_traced_ns: int  # CLOCK_REALTIME, ns
    boot_id: str
    # The pins were removed on purpose (oomtrace --stop-tracing).
    stopped: bool = False
    pinned: bool = False


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class StateFile:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self.lock_path = directory / LOCK_NAME
        self._next_write = 0.0
        self.error: str | None = None
        self._lock_fd: int | None = None

    def lock(self) -> bool:
        """Takes the agent's lock for as long as the process lives: one agent at a
        time owns the pins. True also when the directory cannot hold a lock (no
        other agent can have it either)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def read(self) -> State | None:
        try:
            data = json.loads(self.path.read_text())
            return State(
                last_traced_ns=int(data["last_traced_ns"]),
                boot_id=str(data.get("boot_id", "")),
                stopped=bool(data.get("stopped", False)),
                pinned=bool(data.get("pinned", False)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, state: State) -> None:
        """Atomically (a rename), so a crash mid-write leaves the previous one."""
        tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            tmp.write_text(json.dumps(asdict(state)) + "\n")
            tmp.replace(self.path)
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            with contextlib.suppress(OSError):
                tmp.unlink()
        else:
            self.error = None

    def traced(self, *, pinned: bool, force: bool = False) -> None:
        """Notes that the agent is tracing now; cheap unless WRITE_EVERY_S passed."""
        now = time.monotonic()
        if not force and now < self._next_write:
            return
        self._next_write = now + WRITE_EVERY_S
        self.write(State(time.time_ns(), boot_id(), stopped=False, pinned=pinned))

    def stopped(self) -> None:
        """The pins were removed: tracing ends now, on purpose."""
        self.write(State(time.time_ns(), boot_id(), stopped=True, pinned=False))


def gap_reason(previous: State, *, resumed: bool) -> str | None:
    """Why nothing was traced since ``previous``, or None when the kernel side
    carried on (resumed pins of the same boot)."""
    if resumed:
        return None
    if previous.boot_id and previous.boot_id != boot_id():
        return "reboot"
    if previous.stopped:
        return "stopped"
    if previous.pinned:
        return "pins_removed"
    return "not_pinned"
