"""Events appended to a file as JSON lines."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from oomtrace.events import Event

FILE_MODE = 0o640


class FileSink:
    def __init__(self, path: Path) -> None:
        self.name = f"file:{path}"
        self.path = path
        self._fd = self._open()

    def _open(self) -> int:
        # O_APPEND makes each write land whole at the end, even when another
        # writer (or a rotated copy) shares the file.
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)

    def emit(self, event: Event) -> None:
        os.write(self._fd, orjson.dumps(event) + b"\n")

    def reopen(self) -> None:
        old, self._fd = self._fd, self._open()
        os.close(old)

    def close(self) -> None:
        os.close(self._fd)
