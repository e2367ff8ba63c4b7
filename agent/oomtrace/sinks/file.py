"""Events appended to a file as JSON lines, reopened when rotated.

logrotate (without copytruncate) moves the file away and may send SIGHUP. The
writer notices the move by itself -- the path no longer names the file it has
open -- and creates a new one; SIGHUP reopens too. Events written before the
move are in the moved file, events after it in the new one: none is lost.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

from oomtrace.sinks.fd import write_all

FILE_MODE: Final = 0o640


def check_path(path: Path) -> None:
    """A file sink's path must be a file this process can create or append to;
    raises ValueError saying why not."""
    if not path.is_absolute():
        raise ValueError(f"{path} must be an absolute path")
    if not path.parent.is_dir():
        raise ValueError(f"directory {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory")
    problem = _unwritable(path)
    if problem:
        raise ValueError(f"cannot write {path}: {problem}")


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be appended to, found without creating or changing
    anything (access(2) would say yes to root on a read-only mount or in /proc)."""
    try:
        if path.exists():
            # O_NONBLOCK: a FIFO with no reader yet must not hang the check.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            # An unnamed file in the directory: the same permission and
            # file-system checks as creating the real one, gone on close.
            fd = os.open(path.parent, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None  # a FIFO nobody reads yet
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            # No O_TMPFILE on this file system: the best left is access(2).
            ok = os.access(path.parent, os.W_OK | os.X_OK)
            return None if ok else os.strerror(errno.EACCES)
        return exc.strerror or str(exc)
    os.close(fd)
    return None


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
