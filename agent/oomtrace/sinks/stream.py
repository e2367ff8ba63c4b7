"""Events to a byte stream (stdout): JSON lines, or the text view for a person."""

from __future__ import annotations

from typing import BinaryIO

import orjson

from oomtrace.events import Event
from oomtrace.text import render


class StreamSink:
    def __init__(self, stream: BinaryIO, *, fmt: str, name: str = "stdout") -> None:
        self.name = name
        self._stream = stream
        self._text = fmt == "text"

    def emit(self, event: Event) -> None:
        data = render(event).encode() if self._text else orjson.dumps(event) + b"\n"
        self._stream.write(data)
        # A log shipper must see each event as it happens, not when a
        # block buffer fills.
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
