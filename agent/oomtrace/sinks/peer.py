"""How much of what a socket sink wrote its reader has not consumed yet.

A shipper that exits while bytes wait in its socket loses them, and the writer
is never told which: the connection is just reset. Knowing how much is still
unread when the connection is fine lets the sink write those events again after
reconnecting (sinks/queued.py).

- unix stream socket: SIOCOUTQ on the writer's end counts the buffers it sent
  that the peer has not read, in the kernel's allocation units: an upper bound
  of the bytes, and exactly 0 once the peer has read everything.
- TCP: SIOCOUTQ counts only what the peer's kernel has not acknowledged. What it
  acknowledged but the shipper has not read sits in the peer socket's receive
  queue, which NETLINK_SOCK_DIAG reports when the peer is on this host.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Final

NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLM_F_REQUEST: Final = 0x1
NLMSG_ERROR: Final = 2
INET_DIAG_NOCOOKIE: Final = 0xFFFFFFFF
_NLMSGHDR: Final = struct.Struct("=IHHII")
# struct inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires,
# rqueue, ...
_RQUEUE_OFFSET: Final = _NLMSGHDR.size + 4 + 48 + 4


def outq(sock: socket.socket) -> int:
    """SIOCOUTQ (the same ioctl number as TIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    value: int = struct.unpack("i", raw)[0]
    return value


class TcpPeer:
    """The local peer socket of one TCP connection, looked up by its addresses."""

    def __init__(self, sock: socket.socket) -> None:
        family = sock.family
        local_ip, local_port = sock.getsockname()[:2]
        peer_ip, peer_port = sock.getpeername()[:2]
        # The peer's view: its source is our destination, and the other way round.
        sockid = struct.pack(
            "!HH16s16s", peer_port, local_port, _addr(family, peer_ip), _addr(family, local_ip)
        ) + struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
        request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0
        )
        self._request = header + request
        self._netlink: socket.socket | None = None

    def rqueue(self) -> int | None:
        """Bytes in the peer socket's receive queue; None when it is not on this
        host (or not in this network namespace)."""
        if self._netlink is None:
            nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
            nl.settimeout(1.0)
            self._netlink = nl
        self._netlink.send(self._request)
        reply = self._netlink.recv(65536)
        _length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(reply)
        if kind == NLMSG_ERROR or len(reply) < _RQUEUE_OFFSET + 4:
            return None
        value: int = struct.unpack_from("=I", reply, _RQUEUE_OFFSET)[0]
        return value

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None


def _addr(family: int, ip: str) -> bytes:
    packed = socket.inet_pton(family, ip.split("%", 1)[0])
    return packed.ljust(16, b"\0")
