"""Proof of death from a second source: the netlink proc connector.

The kernel reports every process exit on the proc connector with its wait status
(cn_proc's exit_code) and a CLOCK_MONOTONIC timestamp. oomtrace already sees its
victims exit in the kernel (sched_process_exit); this source still confirms a
death when that record was lost to a full ring buffer. Only the processes the
pipeline is waiting on are passed on, so a busy node's exits cost a set lookup.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from oomtrace import log

PROC_EVENT_EXIT: Final = 0x80000000
POLL_S: Final = 0.2


@dataclass(frozen=True, slots=True)
class ProcExit:
    tgid: int
    exit_code: int  # the wait status, as in sched_process_exit's task->exit_code
    ktime_ns: int


class ExitWatcher:
    def __init__(self, deliver: Callable[[ProcExit], None]) -> None:
        self._deliver = deliver
        self.watched: set[int] = set()
        self._stop = threading.Event()
        self._socket: Any = None
        self._thread = threading.Thread(target=self._run, name="proc-connector", daemon=True)
        self.available = False

    def start(self) -> None:
        try:
            from pyroute2 import ProcEventSocket

            sock = ProcEventSocket()
            sock.bind()
            sock.control(listen=True)
        except Exception as exc:
            log.get().warning(
                "hook_unavailable", hook="netlink:proc_connector", reason=str(exc) or repr(exc)
            )
            return
        self._socket = sock
        self.available = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._socket is not None:
            self._thread.join(timeout=2)
            self._socket.close()

    def _run(self) -> None:
        fd = self._socket.fileno()
        while not self._stop.is_set():
            # Wait with a timeout so that stop() is noticed promptly.
            ready, _, _ = select.select([fd], [], [], POLL_S)
            if not ready:
                continue
            try:
                messages = self._socket.get()
            except Exception:
                continue
            for msg in messages:
                if msg.get("what") != PROC_EVENT_EXIT:
                    continue
                tgid = msg.get("process_tgid")
                # One exit per thread: the group leader's stands for the process.
                if tgid in self.watched and msg.get("process_pid") == tgid:
                    self._deliver(
                        ProcExit(
                            tgid=tgid,
                            exit_code=msg.get("exit_code"),
                            ktime_ns=msg.get("timestamp_ns"),
                        )
                    )
