"""sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET.

Under ``Type=notify`` systemd waits for READY=1 before it calls the unit
active, shows STATUS= in `systemctl status`, and with ``WatchdogSec=`` restarts
the service when WATCHDOG=1 stops arriving. Outside systemd every call is a
no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from oomtrace import log
from oomtrace.display import printable

# What `systemctl status` shows of it on one line.
STATUS_LIMIT = 1024


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace: a leading NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)
        self._next_ping = 0.0
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *assignments: str) -> bool:
        if not self.address:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.get().warning("sd_notify_failed", socket=self.address, error=exc.strerror)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={printable(status, STATUS_LIMIT)}")

    def status(self, text: str) -> None:
        # systemctl status prints it to the operator's terminal: one safe line.
        self.send(f"STATUS={printable(text, STATUS_LIMIT)}")

    def reloading(self) -> None:
        # MONOTONIC_USEC tells systemd (v253+) which reload this is; older ones ignore it.
        self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def keepalive(self, now: float) -> bool:
        """WATCHDOG=1 at half the watchdog interval; call it from the event loop,
        so that a stuck loop stops the pings."""
        if self.watchdog_interval is None or now < self._next_ping:
            return False
        self._next_ping = now + self.watchdog_interval / 2
        return self.send("WATCHDOG=1")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    try:
        interval = int(usec) / 1e6
        # The watchdog is meant for the service's main process only.
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return interval if interval > 0 else None
