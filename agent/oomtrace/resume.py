"""Where a restarted agent reads on, kept by the agent that reads now.

With the kernel side pinned (kernel/pins.py) the next agent resumes the same
ring buffer. Two things tell it where to start and what not to say twice:
  - the commit, a ring buffer position stored in the pinned `resume` map:
    before the records of the oldest kill not yet written out, so that a crash
    loses none of those kills' records;
  - the `reported` map, marked with each kill once every sink has it out, so
    that the records the next agent reads again do not report a kill twice.
The pipeline tells this room what it reads and emits; nothing here decides an
event's content.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Final, Protocol

# Records are written to the ring buffer in the order they are reserved, but
# each takes its time (bpf_ktime_get_ns) just after, on its own CPU: the order
# of times may differ from the ring's by this much.
RING_ORDER_SLACK_NS: Final = 10_000_000
# The committed position lags the read one by the records of unfinished kills;
# never by more than this share of the ring, which a producer could not use
# meanwhile (a kill whose exit never comes must not shrink the ring).
COMMIT_LAG_SHARE: Final = 4

KillKey = tuple[int, int]  # (ktime_ns, victim_tid): what the `reported` map is keyed by


class PinnedSide(Protocol):
    def commit(self, position: int, lost_reported: dict[int, int]) -> None: ...
    def mark_reported(self, kills: list[KillKey]) -> None: ...


class ResumePoint:
    def __init__(self, kernel: PinnedSide, start: int, ring_size: int, sinks: Iterable[object]):
        self._kernel = kernel
        self._ring_size = ring_size
        # Since the last commit: (ktime, start position) of each record read,
        # and the end of the last one.
        self._positions: deque[tuple[int, int]] = deque()
        self._last_end = self._committed = start
        # Kills emitted and not yet out of every sink's queue, in emit order
        # (None for other events): only once out are they marked reported, and
        # until then a restarted agent reads their records again. Sink writer
        # threads report what is out, hence the lock.
        self._undelivered: deque[KillKey | None] = deque()
        self._lock = threading.Lock()
        watched = [s for s in sinks if hasattr(s, "watch_out")]
        self._watching = bool(watched)
        for sink in watched:
            sink.watch_out(self._on_out)

    def read(self, ktime_ns: int, end: int) -> None:
        """A record read, which ends at ring position ``end``."""
        self._positions.append((ktime_ns, self._last_end))
        self._last_end = end

    def emitted(self, kill: KillKey | None) -> None:
        """An event handed to the sinks (``kill`` when it reports one)."""
        if self._watching:
            with self._lock:
                self._undelivered.append(kill)
        elif kill is not None:
            self._kernel.mark_reported([kill])

    def _on_out(self, n: int) -> None:
        """A sink writer's word that the next ``n`` events are out of every sink:
        their kills are marked reported at once, so that a crash after this
        reports none of them twice (and one before it, none of them never)."""
        with self._lock:
            out = [self._undelivered.popleft() for _ in range(min(n, len(self._undelivered)))]
            self._kernel.mark_reported([key for key in out if key is not None])

    def _oldest_undelivered(self) -> int | None:
        with self._lock:
            return next((k[0] for k in self._undelivered if k is not None), None)

    def commit(self, oldest_pending: int | None, holding: bool, lost: dict[int, int]) -> None:
        """Stores where a restarted agent starts reading: before the records of
        the oldest kill not yet written out (and of any the stop step holds,
        ``holding``), else after the last record processed. Kills written out
        past that point are in the `reported` map, so none is reported twice."""
        undelivered = self._oldest_undelivered()
        times = [t for t in (oldest_pending, undelivered) if t is not None]
        positions = self._positions
        if holding:
            target = positions[0][1] if positions else self._last_end
        elif not times:
            positions.clear()
            target = self._last_end
        else:
            threshold = min(times) - RING_ORDER_SLACK_NS
            while positions and positions[0][0] < threshold:
                positions.popleft()
            target = positions[0][1] if positions else self._last_end
        limit = self._ring_size // COMMIT_LAG_SHARE
        while limit and positions and self._last_end - target > limit:
            positions.popleft()
            target = positions[0][1] if positions else self._last_end
        if target != self._committed:
            self._committed = target
            self._kernel.commit(target, {k: v for k, v in lost.items() if k >= 0})
