"""The configured sinks as one: built from the settings, changed on SIGHUP.

Each sink is queued (sinks/queued.py): stdout, every output file, every unix
socket and TCP endpoint. A SIGHUP keeps the sinks whose settings did not change
(their queues and connections live on), opens the new ones and closes the
removed ones in the background, so a reload never stalls the pipeline.
"""

from __future__ import annotations

import errno
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from oomtrace import log
from oomtrace.config import ConfigError, Settings
from oomtrace.schema import Event
from oomtrace.sinks.kinds import BY_NAME, SINK_KINDS
from oomtrace.sinks.queued import CLOSE_TIMEOUT_S, QueuedSink, Transport
from oomtrace.sinks.stream import FdTransport, encoder


@dataclass(frozen=True, slots=True)
class SinkSpec:
    kind: str  # "stdout", or a SinkKind's name (sinks/kinds.py)
    target: object  # as the kind parsed it (a Path, an Endpoint); "" for stdout
    fmt: str = "json"

    @property
    def name(self) -> str:
        return "stdout" if self.kind == "stdout" else f"{self.kind}:{self.target}"


def specs(settings: Settings, *, stdout_is_tty: bool | None = None) -> list[SinkSpec]:
    out: list[SinkSpec] = []
    if settings.stdout:
        fmt = settings.format
        if fmt == "auto":
            tty = sys.stdout.isatty() if stdout_is_tty is None else stdout_is_tty
            fmt = "text" if tty else "json"
        out.append(SinkSpec("stdout", "", fmt))
    for kind in SINK_KINDS:
        out += [SinkSpec(kind.name, t) for t in dict.fromkeys(settings.targets(kind.key))]
    return out


def open_sink(spec: SinkSpec, settings: Settings) -> QueuedSink:
    """A running sink. A file is opened here, so that one that cannot be written
    stops start-up (ConfigError); sockets connect in the writer thread and are
    retried for as long as it takes."""
    transport: Transport
    connected = False
    if spec.kind == "stdout":
        transport = FdTransport(sys.stdout.fileno())
    else:
        kind = BY_NAME[spec.kind]
        transport = kind.transport(spec.target)
        if kind.opens_at_start:
            try:
                transport.connect()
            except OSError as exc:
                raise ConfigError(_open_failure(str(spec.target), exc), key=kind.key) from None
            connected = True
    return QueuedSink(
        transport,
        encoder(spec.fmt),
        capacity=settings.sink_queue_size,
        overflow=settings.sink_overflow,
        connected=connected,
    )


def _open_failure(path: str, exc: OSError) -> str:
    message = f"cannot open {path}: {exc.strerror}"
    if exc.errno == errno.EROFS:
        message += (
            " (under the systemd unit only /var/log/oomtrace is writable; "
            "add the directory to ReadWritePaths= in a drop-in)"
        )
    return message


class SinkSet:
    name = "sinks"

    def __init__(self, sinks: dict[SinkSpec, QueuedSink]) -> None:
        # Replaced whole, never mutated: the metrics thread reads it.
        self._sinks = sinks
        self._log = log.get()
        # Events every current sink has out of its queue (written or dropped),
        # counted in emit order, for on_out (see watch_out).
        self._out_lock = threading.Lock()
        self._emitted = 0
        self._out_reported = 0
        self._out_base: dict[int, int] = {}
        self._on_out: Callable[[int], None] | None = None

    def watch_out(self, on_out: Callable[[int], None]) -> None:
        """Calls ``on_out(n)`` (from a writer thread) each time the next ``n``
        events emitted are out of every sink's queue."""
        with self._out_lock:
            self._on_out = on_out
            for sink in self._sinks.values():
                self._track(sink)

    def _track(self, sink: QueuedSink) -> None:
        # A sink added later never had the events emitted before it.
        self._out_base[id(sink)] = self._emitted - sink.out_count
        sink.on_out = self._sink_out

    def _sink_out(self) -> None:
        with self._out_lock:
            if self._on_out is None:
                return
            done = min(
                (self._out_base.get(id(s), 0) + s.out_count for s in self._sinks.values()),
                default=self._emitted,
            )
            done = min(done, self._emitted)
            if done > self._out_reported:
                n, self._out_reported = done - self._out_reported, done
                self._on_out(n)

    @classmethod
    def open(cls, settings: Settings) -> SinkSet:
        opened: dict[SinkSpec, QueuedSink] = {}
        try:
            for spec in specs(settings):
                opened[spec] = open_sink(spec, settings)
        except ConfigError:
            _close_all(list(opened.values()), timeout=0)
            raise
        return cls(opened)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self._sinks]

    def emit(self, event: Event) -> None:
        with self._out_lock:
            self._emitted += 1
        for sink in self._sinks.values():
            sink.emit(event)
        if not self._sinks:
            self._sink_out()

    def reopen(self) -> None:
        for sink in self._sinks.values():
            sink.reopen()

    def reconfigure(self, settings: Settings) -> dict[str, list[str]]:
        """Makes the set match ``settings``; on ConfigError nothing changed."""
        wanted = specs(settings)
        added: dict[SinkSpec, QueuedSink] = {}
        try:
            for spec in wanted:
                if spec not in self._sinks:
                    added[spec] = open_sink(spec, settings)
        except ConfigError:
            _close_all(list(added.values()), timeout=0)
            raise
        removed = [sink for spec, sink in self._sinks.items() if spec not in wanted]
        kept = {spec: self._sinks.get(spec) or added[spec] for spec in wanted}
        for sink in kept.values():
            sink.configure(capacity=settings.sink_queue_size, overflow=settings.sink_overflow)
        with self._out_lock:
            if self._on_out is not None:
                for sink in added.values():
                    self._track(sink)
            self._sinks = kept
        self._sink_out()
        if removed:
            threading.Thread(
                target=self._retire, args=(removed,), name="sink-retire", daemon=True
            ).start()
        return {
            "added": [spec.name for spec in added],
            "removed": [sink.name for sink in removed],
        }

    def take_drops(self) -> dict[str, dict[str, int]]:
        drops: dict[str, dict[str, int]] = {}
        for sink in self._sinks.values():
            drops |= sink.take_drops()
        return drops

    def stats(self) -> dict[str, dict[str, int]]:
        totals: dict[str, dict[str, int]] = {}
        for sink in self._sinks.values():
            totals |= sink.stats()
        return totals

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        sinks = list(self._sinks.values())
        _close_all(sinks, timeout)
        totals: dict[str, dict[str, int]] = {}
        for sink in sinks:
            totals |= sink.stats()
        # The last word on delivery: what each sink wrote, what its reader
        # confirmed, and what it had to drop, including at this exit.
        self._log.info("sinks_closed", sinks=totals)

    def _retire(self, sinks: list[QueuedSink]) -> None:
        _close_all(sinks, CLOSE_TIMEOUT_S)
        totals: dict[str, dict[str, int]] = {}
        for sink in sinks:
            totals |= sink.stats()
        self._log.info("sinks_removed", sinks=totals)


def _close_all(sinks: list[QueuedSink], timeout: float) -> None:
    """Closes sinks side by side: one slow consumer does not eat the others' time."""
    deadline = time.monotonic() + timeout
    for sink in sinks:
        sink.request_close(deadline)
    for sink in sinks:
        sink.wait_closed(deadline)
