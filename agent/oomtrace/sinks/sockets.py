"""Log shipper transports: a unix stream socket, or TCP (meant for localhost).

JSON lines, one event per line, which rsyslog (imtcp, imptcp), syslog-ng
(network(), unix-stream()), Vector and Fluent Bit all read as they come.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Final

from oomtrace.config import Endpoint
from oomtrace.sinks.peer import TcpPeer, outq
from oomtrace.sinks.queued import CLOSED

CONNECT_TIMEOUT_S: Final = 2.0
# A shipper that takes nothing for this long is treated as gone: the connection
# is dropped and what it had not read is written again on a new one.
SEND_TIMEOUT_S: Final = 10.0
# The kernel's limit for a unix socket path (sun_path, with its terminating NUL).
UNIX_PATH_MAX: Final = 107


def check_socket_path(path: Path) -> None:
    """A unix socket sink's path must be able to name a socket; raises ValueError
    saying why not. A socket that does not exist yet is fine (the shipper may
    start later: the sink retries); a path that can never work is not."""
    if not path.is_absolute():
        raise ValueError(f"{path} must be an absolute path")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ValueError(f"{path} is longer than the {UNIX_PATH_MAX} bytes a socket path may have")
    if not path.parent.is_dir():
        raise ValueError(f"{path} is unreachable: directory {path.parent} does not exist")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ValueError(f"{path} is unreachable: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{path} exists and is not a socket")


class _SocketTransport:
    reopens = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._sock: socket.socket | None = None

    def _open(self) -> socket.socket:
        raise NotImplementedError

    def connect(self) -> None:
        sock = self._open()
        sock.settimeout(None)
        # SO_SNDTIMEO bounds a blocking send, as struct timeval.
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SEND_TIMEOUT_S), 0)
        )
        self._sock = sock

    def write(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def unread(self) -> int | None:
        assert self._sock is not None
        unread = outq(self._sock)
        self._raise_if_closed()
        return unread

    def _raise_if_closed(self) -> None:
        """A closed connection's queues are purged: its 0 bytes unread would
        confirm what was written into it after the reader had gone."""
        assert self._sock is not None
        try:
            data = self._sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, CLOSED)

    def check(self) -> str | None:
        """Notices a peer that closed before writing into the dead connection."""
        assert self._sock is not None
        try:
            # A shipper never talks back; anything it sends is discarded.
            data = self._sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            return exc.strerror or str(exc)
        return None if data else CLOSED

    def disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def abort(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class UnixTransport(_SocketTransport):
    def __init__(self, path: Path) -> None:
        super().__init__(f"unix:{path}")
        self.path = path

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        return sock


class TcpTransport(_SocketTransport):
    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(f"tcp:{endpoint}")
        self.endpoint = endpoint
        self._peer: TcpPeer | None = None

    def _open(self) -> socket.socket:
        sock = socket.create_connection(
            (self.endpoint.host, self.endpoint.port), timeout=CONNECT_TIMEOUT_S
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._peer = TcpPeer(sock)
        return sock

    def unread(self) -> int | None:
        assert self._peer is not None
        peer = self._peer.rqueue()
        unread = super().unread()
        if peer is None or unread is None:
            return None  # a remote shipper: what it read cannot be known
        return unread + peer

    def disconnect(self) -> None:
        super().disconnect()
        if self._peer is not None:
            self._peer.close()
            self._peer = None
