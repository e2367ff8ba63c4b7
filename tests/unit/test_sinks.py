"""Sinks: bounded queues that never block the pipeline, drops counted by event type,
reconnects with backoff, files reopened when rotated, unread socket data resent."""

from __future__ import annotations

import os
import random
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from oomtrace.config import Endpoint, Settings
from oomtrace.sinks.backoff import Backoff
from oomtrace.sinks.fanout import SinkSet, specs
from oomtrace.sinks.file import FileTransport
from oomtrace.sinks.queued import QueuedSink
from oomtrace.sinks.sockets import UnixTransport
from oomtrace.sinks.stream import json_line
from tests.support.wait import wait_until

Event = dict[str, Any]


def event(n: int, kind: str = "signal") -> Event:
    return {"type": kind, "n": n}


def numbers(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [orjson.loads(line)["n"] for line in path.read_bytes().splitlines()]


class Stalled:
    """A consumer that takes nothing until released."""

    name = "stalled"
    reopens = False

    def __init__(self) -> None:
        self.release = threading.Event()
        self.data = bytearray()
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1

    def write(self, data: bytes) -> None:
        self.release.wait(10)
        self.data += data

    def unread(self) -> int | None:
        return 0

    def check(self) -> str | None:
        return None

    def disconnect(self) -> None:
        pass

    def abort(self) -> None:
        self.release.set()


class Refusing(Stalled):
    """A consumer that is not there: every connect fails."""

    def connect(self) -> None:
        self.connects += 1
        raise ConnectionRefusedError(111, "Connection refused")


def test_a_stalled_consumer_never_blocks_emit_and_drops_are_counted() -> None:
    consumer = Stalled()
    sink = QueuedSink(consumer, json_line, capacity=100, overflow="drop_oldest")
    try:
        started = time.monotonic()
        for n in range(10_000):
            sink.emit(event(n, "oom_kill" if n % 10 == 0 else "signal"))
        assert time.monotonic() - started < 2.0
        stats = sink.stats()["stalled"]
        # The writer holds at most one batch; the queue keeps its capacity.
        assert stats["queued"] == 100
        assert stats["dropped"] + stats["queued"] + stats["written"] == 10_000
        drops = sink.take_drops()["stalled"]
        assert sum(drops.values()) == stats["dropped"]
        assert set(drops) == {"oom_kill", "signal"}
        assert sink.take_drops() == {}  # reported once
    finally:
        consumer.release.set()
        sink.close(timeout=5)
    kept = [orjson.loads(line)["n"] for line in bytes(consumer.data).splitlines()]
    # drop_oldest: the newest 100 survive, after what was already being written.
    assert kept[-100:] == list(range(9_900, 10_000))
    assert sink.stats()["stalled"]["dropped"] == 10_000 - len(kept)


def test_drop_newest_keeps_the_oldest() -> None:
    consumer = Refusing()
    sink = QueuedSink(
        consumer, json_line, capacity=10, overflow="drop_newest", backoff=Backoff(0.01, 0.02)
    )
    for n in range(50):
        sink.emit(event(n))
    assert sink.take_drops() == {"stalled": {"signal": 40}}
    sink.close(timeout=0.1)
    # What was still queued at exit is dropped too, and counted.
    assert sink.stats()["stalled"]["dropped"] == 50


def test_reconnects_with_backoff_until_the_consumer_is_there() -> None:
    consumer = Refusing()
    sink = QueuedSink(consumer, json_line, capacity=10, backoff=Backoff(0.01, 0.05))
    try:
        assert wait_until(lambda: consumer.connects >= 5)
        assert sink.stats()["stalled"]["connected"] == 0
    finally:
        sink.close(timeout=0)


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(0.1, 5.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(10)]
    nominal = [min(0.1 * 2**i, 5.0) for i in range(10)]
    for delay, expected in zip(delays, nominal, strict=True):
        assert expected * 0.8 <= delay <= min(expected * 1.2, 5.0)
    assert backoff.attempts == 10
    backoff.reset()
    assert 0.08 <= backoff.next() <= 0.12


# -- files ------------------------------------------------------------------------------


def file_sink(path: Path, capacity: int = 10_000) -> QueuedSink:
    transport = FileTransport(path)
    transport.connect()
    return QueuedSink(transport, json_line, capacity=capacity, connected=True)


def test_file_is_created_0640_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    old = os.umask(0)
    try:
        sink = file_sink(path)
    finally:
        os.umask(old)
    sink.emit(event(1))
    sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert numbers(path) == [1]


def test_file_moved_away_is_followed_by_a_new_one_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = file_sink(path)
    try:
        for n in range(500):
            sink.emit(event(n))
            if n == 250:
                # logrotate without copytruncate: rename, no signal. The writer
                # notices by itself that the path names another file.
                path.rename(tmp_path / "events.jsonl.1")
        assert wait_until(
            lambda: len(numbers(path)) + len(numbers(tmp_path / "events.jsonl.1")) == 500
        )
    finally:
        sink.close()
    old, new = numbers(tmp_path / "events.jsonl.1"), numbers(path)
    assert old + new == list(range(500))
    assert new  # the new file got the events after the move
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_reopen_on_request(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = file_sink(path)
    try:
        sink.emit(event(1))
        assert wait_until(lambda: numbers(path) == [1])
        inode = path.stat().st_ino
        sink.reopen()
        sink.emit(event(2))
        assert wait_until(lambda: numbers(path) == [1, 2])
        assert path.stat().st_ino == inode  # the same file, appended to
        assert wait_until(lambda: sink.stats()[f"file:{path}"]["connects"] == 2)
    finally:
        sink.close()


# -- unix stream sockets ------------------------------------------------------------------


class Shipper:
    """A unix stream socket server that reads lines into a list, and can go away
    with bytes unread (as a shipper that is killed does)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.paused = threading.Event()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen()
        server.settimeout(0.05)
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._server is not None
        conn: socket.socket | None = None
        buf = b""
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn, _ = self._server.accept()
                except TimeoutError:
                    continue
                conn.settimeout(0.05)
            if self.paused.is_set():
                time.sleep(0.01)
                continue
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                conn.close()
                conn = None
                continue
            *lines, buf = (buf + chunk).split(b"\n")
            with self._lock:
                self.lines.extend(lines)
        if conn is not None:
            conn.close()  # with bytes unread when paused: the writer sees a reset

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._server is not None:
            self._server.close()
            self._server = None
        self.path.unlink(missing_ok=True)

    def numbers(self) -> list[int]:
        with self._lock:
            return [orjson.loads(line)["n"] for line in self.lines]


@pytest.fixture
def shipper(tmp_path: Path) -> Iterator[Shipper]:
    server = Shipper(tmp_path / "in.sock")
    try:
        yield server
    finally:
        server.stop()


def test_socket_sink_waits_for_the_shipper(shipper: Shipper) -> None:
    sink = QueuedSink(
        UnixTransport(shipper.path), json_line, capacity=100, backoff=Backoff(0.01, 0.05)
    )
    try:
        for n in range(10):
            sink.emit(event(n))
        time.sleep(0.2)
        shipper.start()  # later than the agent
        assert wait_until(lambda: shipper.numbers() == list(range(10)))
        assert wait_until(lambda: sink.stats()[sink.name]["delivered"] == 10)
    finally:
        sink.close()


def test_what_a_restarted_shipper_had_not_read_is_sent_again(shipper: Shipper) -> None:
    shipper.start()
    sink = QueuedSink(
        UnixTransport(shipper.path), json_line, capacity=10_000, backoff=Backoff(0.01, 0.05)
    )
    try:
        for n in range(100):
            sink.emit(event(n))
        assert wait_until(lambda: shipper.numbers() == list(range(100)))
        # The shipper stops reading, then goes away with events in its socket.
        shipper.paused.set()
        time.sleep(0.2)  # a read already under way ends
        for n in range(100, 300):
            sink.emit(event(n))
        assert wait_until(lambda: sink.stats()[sink.name]["unconfirmed"] > 0)
        shipper.stop()
        shipper.paused.clear()
        for n in range(300, 400):
            sink.emit(event(n))
        shipper.start()
        assert wait_until(lambda: set(shipper.numbers()) == set(range(400)))
        assert wait_until(lambda: sink.stats()[sink.name]["delivered"] >= 400)
    finally:
        sink.close()
    stats = sink.stats()[sink.name]
    assert stats["dropped"] == 0, stats
    assert stats["resent"] > 0, stats
    assert stats["connects"] >= 2
    assert sorted(shipper.numbers()) == list(range(400))  # each once: nothing was read twice


# -- the set of sinks ------------------------------------------------------------------------


def test_specs_and_reconfigure(tmp_path: Path) -> None:
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    settings = Settings(
        stdout=False, sinks=(("output", (one,)), ("tcp", (Endpoint("127.0.0.1", 9),)))
    )
    assert [s.name for s in specs(settings)] == [f"file:{one}", "tcp:127.0.0.1:9"]
    assert specs(Settings(), stdout_is_tty=True)[0].fmt == "text"
    assert specs(Settings(), stdout_is_tty=False)[0].fmt == "json"

    sinks = SinkSet.open(Settings(stdout=False, sinks=(("output", (one,)),)))
    try:
        sinks.emit(event(1))
        changes = sinks.reconfigure(Settings(stdout=False, sinks=(("output", (one, two)),)))
        assert changes == {"added": [f"file:{two}"], "removed": []}
        sinks.emit(event(2))
        changes = sinks.reconfigure(Settings(stdout=False, sinks=(("output", (two,)),)))
        assert changes == {"added": [], "removed": [f"file:{one}"]}
        sinks.emit(event(3))
        assert sinks.names == [f"file:{two}"]
    finally:
        sinks.close()
    assert wait_until(lambda: numbers(one) == [1, 2])
    assert numbers(two) == [2, 3]


def test_a_file_that_cannot_be_opened_stops_start_up(tmp_path: Path) -> None:
    from oomtrace.config import ConfigError

    with pytest.raises(ConfigError, match="cannot open"):
        SinkSet.open(Settings(stdout=False, sinks=(("output", (tmp_path,)),)))
