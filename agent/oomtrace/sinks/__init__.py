"""Where events go: each sink takes finished events and writes them out.

``emit`` runs in the pipeline thread and must never block it: the sinks that
write to something that can stall (a file, a pipe, a log shipper) hand events to
their own writer thread through a bounded queue (sinks/queued.py).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from oomtrace.schema import Event


class Sink(Protocol):
    name: str

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Accounted(Protocol):
    """A sink that may have to drop events, and says so.

    ``take_drops`` returns, per sink name, the events dropped since the last
    call by event type; the pipeline reports them as ``lost`` events with source
    ``sink:<name>``. ``stats`` is each sink's running totals, for the stats log
    line and the metrics endpoint.
    """

    name: str

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...

    def take_drops(self) -> dict[str, dict[str, int]]: ...

    def stats(self) -> dict[str, dict[str, int]]: ...
