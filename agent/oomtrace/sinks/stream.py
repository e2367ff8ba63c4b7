"""Events to a byte stream (stdout): JSON lines, or the text view for a person."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import orjson

from oomtrace.schema import Event, json_safe
from oomtrace.sinks.fd import write_all
from oomtrace.text import render


def json_line(event: Event) -> bytes:
    try:
        return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # A name that is not UTF-8 (a lone surrogate, as os.fsdecode() gives it).
        return orjson.dumps(json_safe(event), option=orjson.OPT_APPEND_NEWLINE)


def text_block(event: Event) -> bytes:
    return render(event).encode()


def encoder(fmt: str) -> Callable[[Event], bytes]:
    return text_block if fmt == "text" else json_line


class StreamSink:
    """Writes in the caller's thread: for tests and benchmarks of the pipeline.
    The agent writes stdout through a queued sink with an FdTransport."""

    def __init__(self, stream: BinaryIO, *, fmt: str, name: str = "stdout") -> None:
        self.name = name
        self._stream = stream
        self._encode = encoder(fmt)

    def emit(self, event: Event) -> None:
        self._stream.write(self._encode(event))
        # A log shipper must see each event as it happens, not when a
        # block buffer fills.
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class FdTransport:
    """An inherited file descriptor (stdout: the journal under systemd, or a pipe)."""

    reopens = False

    def __init__(self, fd: int = 1, name: str = "stdout") -> None:
        self.name = name
        self._fd = fd

    def connect(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        write_all(self._fd, data)

    def unread(self) -> int | None:
        return 0

    def check(self) -> str | None:
        return None

    def disconnect(self) -> None:
        pass

    def abort(self) -> None:
        pass
