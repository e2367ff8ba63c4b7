"""Events appended to a file as JSON lines, reopened when rotated.

logrotate (without copytruncate) moves the file away and may send SIGHUP. The
writer notices the move by itself -- the path no longer names the file it has
open -- and creates a new one; SIGHUP reopens too. Events written before the
move are in the moved file, events after it in the new one: none is lost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from oomtrace.sinks.stream import write_all

FILE_MODE: Final = 0o640


def open_append(path: Path) -> int:
    """Opens ``path`` for appending, creating it with mode 0640 whatever the umask."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    while True:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            pass
        else:
            os.fchmod(fd, FILE_MODE)
            return fd
        try:
            # O_APPEND makes each write land whole at the end, even when another
            # writer shares the file.
            return os.open(path, flags)
        except FileNotFoundError:
            continue  # removed between the two opens


class FileTransport:
    reopens = True

    def __init__(self, path: Path) -> None:
        self.name = f"file:{path}"
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def connect(self) -> None:
        fd = open_append(self.path)
        st = os.fstat(fd)
        self._fd = fd
        self._identity = (st.st_dev, st.st_ino)

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        write_all(self._fd, data)

    def unread(self) -> int | None:
        return 0

    def check(self) -> str | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "rotated"
        except OSError:
            return None  # keep writing where we are; the next open will tell
        return None if (st.st_dev, st.st_ino) == self._identity else "rotated"

    def disconnect(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        pass
