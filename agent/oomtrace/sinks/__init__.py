"""Where events go: each sink takes finished events and writes them out."""

from __future__ import annotations

from typing import Protocol

from oomtrace.events import Event


class Sink(Protocol):
    name: str

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...
