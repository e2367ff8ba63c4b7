"""Writing to a file descriptor, for the sinks that write to one (files, stdout).

Kept apart from the encoders in sinks/stream.py so that a transport that only
writes bytes imports neither orjson nor the text view.
"""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    """os.write, until a short write (a pipe, a signal) has put out everything."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
