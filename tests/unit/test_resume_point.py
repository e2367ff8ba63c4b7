"""Where a restarted agent reads on: the commit stays before the records of a kill
not yet written out, and a kill is marked reported only once out of every sink."""

from __future__ import annotations

from collections.abc import Callable

from oomtrace.resume import RING_ORDER_SLACK_NS, ResumePoint

MS = 1_000_000


class Kernel:
    def __init__(self) -> None:
        self.commits: list[int] = []
        self.reported: list[tuple[int, int]] = []

    def commit(self, position: int, lost_reported: dict[int, int]) -> None:
        self.commits.append(position)

    def mark_reported(self, kills: list[tuple[int, int]]) -> None:
        self.reported.extend(kills)


class WatchedSink:
    def __init__(self) -> None:
        self.out: Callable[[int], None] | None = None

    def watch_out(self, on_out: Callable[[int], None]) -> None:
        self.out = on_out


def read_records(point: ResumePoint, times_ms: list[int], size: int = 100) -> None:
    for i, t in enumerate(times_ms):
        point.read(t * MS, (i + 1) * size)


def test_nothing_pending_commits_past_the_last_record() -> None:
    kernel = Kernel()
    point = ResumePoint(kernel, 0, 1 << 20, [])
    read_records(point, [100, 200, 300])
    point.commit(None, False, {})
    assert kernel.commits == [300]
    point.commit(None, False, {})
    assert kernel.commits == [300], "an unchanged position is not written again"


def test_a_pending_kill_holds_the_commit_before_its_records() -> None:
    kernel = Kernel()
    point = ResumePoint(kernel, 0, 1 << 20, [])
    read_records(point, [100, 200, 300, 400])
    # The kill of 300 ms waits for its exit: its record starts at 200, and the
    # one before it is within the slack of the ring's order.
    assert RING_ORDER_SLACK_NS < 100 * MS
    point.commit(300 * MS, False, {})
    assert kernel.commits == [200]


def test_a_held_stop_keeps_everything_since_the_last_commit() -> None:
    kernel = Kernel()
    point = ResumePoint(kernel, 50, 1 << 20, [])
    read_records(point, [100, 200])
    point.commit(None, True, {})
    assert kernel.commits == []  # still at the start position, 50


def test_the_lag_is_bounded_by_a_quarter_of_the_ring() -> None:
    kernel = Kernel()
    point = ResumePoint(kernel, 0, 1000, [])
    read_records(point, list(range(1, 11)))  # ten records of 100 bytes
    point.commit(1 * MS, False, {})
    assert kernel.commits == [800]  # 200 bytes behind the read end, at most 250


def test_kills_are_reported_once_out_of_the_sinks() -> None:
    kernel = Kernel()
    sink = WatchedSink()
    point = ResumePoint(kernel, 0, 1 << 20, [sink])
    point.emitted((1, 10))
    point.emitted(None)  # a lost or gap event
    point.emitted((2, 20))
    assert kernel.reported == []
    assert sink.out is not None
    sink.out(2)
    assert kernel.reported == [(1, 10)]
    sink.out(5)
    assert kernel.reported == [(1, 10), (2, 20)]


def test_without_a_watched_sink_a_kill_is_reported_when_emitted() -> None:
    kernel = Kernel()
    point = ResumePoint(kernel, 0, 1 << 20, [object()])
    point.emitted((1, 10))
    assert kernel.reported == [(1, 10)]
