"""A sink that never blocks the pipeline: a bounded queue and a writer thread.

``emit`` (pipeline thread) encodes the event and appends it to the queue; when
the queue is full it drops the oldest or the newest event, counted by event
type. Nothing in ``emit`` waits for the consumer.

The writer thread connects (with capped exponential backoff), writes, and
confirms. A transport that can tell how many written bytes its reader has not
consumed yet (a unix socket; TCP to a shipper on this host) keeps events
*unconfirmed* until the reader took them. When the connection breaks -- the
shipper restarted -- the unconfirmed events go back to the head of the queue and
are written again after the reconnect, so a restart loses nothing; an event the
shipper had in fact read just before it went away arrives twice (counted as
``resent``). For files and stdout a written event is delivered.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from oomtrace import log
from oomtrace.schema import Event
from oomtrace.sinks.backoff import Backoff

# How often the writer looks again at what the reader consumed while some
# events are unconfirmed, and at the connection while idle.
CONFIRM_S: Final = 0.05
IDLE_S: Final = 1.0
# One write carries at most this much, so a backlog drains in large writes.
BATCH_ITEMS: Final = 256
BATCH_BYTES: Final = 1 << 20
# While a consumer stays unreachable, say so again this often.
UNREACHABLE_LOG_S: Final = 60.0
CLOSE_TIMEOUT_S: Final = 2.0
# What Transport.check returns when the reader closed its end. What was written
# after it closed is lost whatever it had read before, so a close confirms
# nothing: the unconfirmed events are sent again (counted as resent).
CLOSED: Final = "the consumer closed the connection"


class Transport(Protocol):
    """Where a queued sink's bytes go. Methods other than ``abort`` run only in
    the sink's writer thread; they raise OSError when the consumer is unusable."""

    name: str
    reopens: bool  # SIGHUP reopens it (files)

    def connect(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def unread(self) -> int | None:
        """Bytes written on this connection that the reader has not consumed
        (an upper bound), or None when that cannot be known."""
        ...

    def check(self) -> str | None:
        """Why the connection can no longer be used (the peer closed, the file
        was moved away), or None."""
        ...

    def disconnect(self) -> None: ...

    def abort(self) -> None:
        """Unblock a write stuck in the kernel (called from another thread at exit)."""
        ...


class Item(NamedTuple):
    data: bytes
    kind: str  # the event's type, for drop counts
    again: bool  # written before, on a connection that broke


class QueuedSink:
    def __init__(
        self,
        transport: Transport,
        encode: Callable[[Event], bytes],
        *,
        capacity: int,
        overflow: str = "drop_oldest",
        backoff: Backoff | None = None,
        connected: bool = False,
    ) -> None:
        """``connected``: the transport was connected by the caller (a file
        opened at start-up, so that an unwritable one stops oomtrace at once)."""
        self.name = transport.name
        self.transport = transport
        self._encode = encode
        self._log = log.get().bind(sink=self.name)
        self._cond = threading.Condition()
        # Shared with emit(), under _cond.
        self._pending: deque[Item] = deque()
        self._capacity = capacity
        self._drop_newest = overflow == "drop_newest"
        self._closing = False
        self._deadline = float("inf")
        self._reopen = False
        self._new_drops: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()
        self._unconfirmed_count = 0
        self._connected = connected
        if connected:
            self._totals["connects"] = 1
        # The writer thread's own.
        self._unconfirmed: deque[tuple[int, Item]] = deque()
        self._written = 0
        self._backoff = backoff or Backoff()
        self._next_attempt = 0.0
        self._down_since: float | None = None
        self._last_complaint = float("-inf")
        self._healthy = True  # a write succeeded since the last complaint
        # Events that left the queue for good (written, or dropped), and who to
        # tell: a restarted agent must not report again what was written out,
        # nor skip what was not (kernel/pins.py).
        self.out_count = 0
        self.on_out: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink {self.name}", daemon=True)
        self._thread.start()

    # -- pipeline thread ---------------------------------------------------------

    def emit(self, event: Event) -> None:
        item = Item(self._encode(event), str(event.get("type", "unknown")), False)
        with self._cond:
            self._pending.append(item)
            self._trim()
            self._cond.notify()

    def configure(self, *, capacity: int, overflow: str) -> None:
        with self._cond:
            self._capacity = capacity
            self._drop_newest = overflow == "drop_newest"
            self._trim()

    def reopen(self) -> None:
        if self.transport.reopens:
            with self._cond:
                self._reopen = True
                self._cond.notify()

    def take_drops(self) -> dict[str, dict[str, int]]:
        with self._cond:
            drops, self._new_drops = self._new_drops, Counter()
        return {self.name: dict(drops)} if drops else {}

    def stats(self) -> dict[str, dict[str, int]]:
        with self._cond:
            t = self._totals
            return {
                self.name: {
                    "connected": int(self._connected),
                    "queued": len(self._pending),
                    "unconfirmed": self._unconfirmed_count,
                    "written": t["written"],
                    "delivered": t["delivered"],
                    "resent": t["resent"],
                    "dropped": t["dropped"],
                    "connects": t["connects"],
                }
            }

    def request_close(self, deadline: float) -> None:
        """Stop when everything is written and confirmed, or at ``deadline``."""
        with self._cond:
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Writes what is queued for up to ``timeout`` seconds; what is left is
        counted as dropped."""
        deadline = time.monotonic() + timeout
        self.request_close(deadline)
        self.wait_closed(deadline)

    def wait_closed(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        if self._thread.is_alive():
            self.transport.abort()
            self._thread.join(0.5)
        with self._cond:
            while self._pending:
                self._count_drop(self._pending.popleft().kind)

    # -- writer thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._finished():
                self._step()
        except Exception:
            self._log.exception("sink_failed")
        finally:
            if self._connected:
                self.transport.disconnect()
                self._set_connected(False)

    def _finished(self) -> bool:
        with self._cond:
            if not self._closing:
                return False
            drained = not self._pending and not self._unconfirmed
            return drained or time.monotonic() >= self._deadline

    def _step(self) -> None:
        with self._cond:
            reopen, self._reopen = self._reopen, False
        if reopen and self._connected:
            self._disconnect("reopened", level="info")
        if not self._connected:
            if time.monotonic() < self._next_attempt:
                self._wait(self._next_attempt)
                return
            if not self._connect():
                return
        reason = self.transport.check()
        if reason is not None:
            self._disconnect(reason, level="info" if reason == "rotated" else "warning")
            return
        self._confirm()
        batch = self._take()
        if batch:
            self._write(batch)
        else:
            self._wait(time.monotonic() + (CONFIRM_S if self._unconfirmed else IDLE_S))

    def _wait(self, until: float) -> None:
        with self._cond:
            left = min(until, self._deadline) - time.monotonic()
            if left <= 0 or self._reopen:
                return
            if self._connected and self._pending:
                return
            self._cond.wait(left)

    def _connect(self) -> bool:
        now = time.monotonic()
        try:
            self.transport.connect()
        except OSError as exc:
            self._next_attempt = now + self._backoff.next()
            if self._down_since is None:
                self._down_since = now
            self._complain(
                "sink_unreachable",
                error=exc.strerror or str(exc),
                attempts=self._backoff.attempts,
            )
            return False
        self._written = 0
        self._set_connected(True)
        with self._cond:
            self._totals["connects"] += 1
        if self._down_since is not None:
            self._log.info(
                "sink_connected",
                attempts=self._backoff.attempts + 1,
                down_s=round(now - self._down_since, 3),
            )
            self._down_since = None
        return True

    def _disconnect(self, reason: str, *, level: str = "warning") -> None:
        self.transport.disconnect()
        self._set_connected(False)
        requeued = [item._replace(again=True) for _, item in self._unconfirmed]
        self._unconfirmed.clear()
        with self._cond:
            self._pending.extendleft(reversed(requeued))
            self._unconfirmed_count = 0
            self._trim()
        if level == "info":
            # A moved file or a SIGHUP: open the new one at once.
            self._next_attempt = 0.0
            self._log.info("sink_reopened", reason=reason)
            return
        now = time.monotonic()
        # The backoff is only reset by a successful write, so a consumer that
        # accepts connections and then fails every write is not hammered.
        self._next_attempt = now + self._backoff.next()
        self._down_since = now
        self._complain("sink_disconnected", reason=reason, resending=len(requeued))

    def _complain(self, event: str, **fields: object) -> None:
        """A warning per outage, then one a minute while it lasts."""
        now = time.monotonic()
        if self._healthy or now - self._last_complaint >= UNREACHABLE_LOG_S:
            self._last_complaint = now
            self._healthy = False
            self._log.warning(event, **fields)

    def _take(self) -> list[Item]:
        batch: list[Item] = []
        size = 0
        with self._cond:
            while self._pending and len(batch) < BATCH_ITEMS and size < BATCH_BYTES:
                item = self._pending.popleft()
                batch.append(item)
                size += len(item.data)
        return batch

    def _write(self, batch: list[Item]) -> None:
        end = self._written
        for item in batch:
            end += len(item.data)
            self._unconfirmed.append((end, item))
        with self._cond:
            self._totals["written"] += len(batch)
            self._totals["resent"] += sum(item.again for item in batch)
            self._unconfirmed_count = len(self._unconfirmed)
        try:
            self.transport.write(b"".join(item.data for item in batch))
        except OSError as exc:
            # How much went out is unknown: all of it stays unconfirmed.
            self._disconnect(exc.strerror or str(exc))
            return
        self._written = end
        self._healthy = True
        self._backoff.reset()
        self._out(len(batch))
        self._confirm()

    def _confirm(self) -> None:
        if not self._unconfirmed:
            return
        try:
            unread = self.transport.unread()
        except OSError:
            return  # check() will find the broken connection
        consumed = self._written if unread is None else self._written - unread
        done = 0
        while self._unconfirmed and self._unconfirmed[0][0] <= consumed:
            self._unconfirmed.popleft()
            done += 1
        if done:
            with self._cond:
                self._totals["delivered"] += done
                self._unconfirmed_count = len(self._unconfirmed)

    # -- helpers (under _cond) ---------------------------------------------------

    def _trim(self) -> None:
        while len(self._pending) > self._capacity:
            dropped = self._pending.pop() if self._drop_newest else self._pending.popleft()
            self._count_drop(dropped.kind)

    def _count_drop(self, kind: str) -> None:
        self._new_drops[kind] += 1
        self._totals["dropped"] += 1
        self._out(1)

    def _out(self, n: int) -> None:
        self.out_count += n
        if self.on_out is not None:
            self.on_out()

    def _set_connected(self, value: bool) -> None:
        with self._cond:
            self._connected = value
