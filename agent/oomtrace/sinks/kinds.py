"""Every kind of sink that takes a target, declared once.

A declaration names the configuration key (also the flag --<key> and the
environment variable OOMTRACE_<KEY>), the Settings field that holds its targets,
how one target is parsed and checked, and the transport that writes to it.
configfile.py makes the keys (and checks the targets when it loads settings),
cli.py the flags and sinks/fanout.py the sinks from this table.

A new sink kind: its transport in sinks/, and its SinkKind here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from oomtrace.config import (
    Endpoint,
    check_output_path,
    check_resolvable,
    check_socket_path,
    parse_endpoint,
)
from oomtrace.sinks.file import FileTransport
from oomtrace.sinks.queued import Transport
from oomtrace.sinks.sockets import TcpTransport, UnixTransport


@dataclass(frozen=True, slots=True)
class SinkKind:
    name: str  # a sink of this kind is called "<name>:<target>"
    key: str  # configuration key, flag --<key>, environment OOMTRACE_<KEY>
    field: str  # the Settings field with the targets
    metavar: str
    example: str  # a TOML value, for error messages
    help: str
    parse: Callable[[str], Any]  # one target from text (flag, environment, file)
    # Called for each target when settings are loaded; raises ConfigError.
    check: Callable[[Any], None]
    transport: Callable[[str], Transport]  # from the target as its sink names it
    # Opened at start-up, so a target that cannot be written stops it at once;
    # sockets connect in their writer thread and are retried instead.
    opens_at_start: bool = False
    short_flag: str | None = None


def _tcp(target: str) -> Transport:
    host, _, port = target.rpartition(":")
    return TcpTransport(Endpoint(host.strip("[]"), int(port)))


SINK_KINDS: Final[tuple[SinkKind, ...]] = (
    SinkKind(
        name="file",
        key="output",
        field="outputs",
        metavar="PATH",
        example='["/var/log/oomtrace/events.jsonl"]',
        help="also append JSON lines to PATH, mode 0640; reopened on SIGHUP and when "
        "moved away by logrotate (repeatable)",
        parse=Path,
        check=check_output_path,
        transport=lambda target: FileTransport(Path(target)),
        opens_at_start=True,
        short_flag="-o",
    ),
    SinkKind(
        name="unix",
        key="unix_socket",
        field="unix_sockets",
        metavar="PATH",
        example='["/run/shipper/oomtrace.sock"]',
        help="also send JSON lines to a log shipper's unix stream socket (repeatable)",
        parse=Path,
        check=check_socket_path,
        transport=lambda target: UnixTransport(Path(target)),
    ),
    SinkKind(
        name="tcp",
        key="tcp",
        field="tcp",
        metavar="HOST:PORT",
        example='["127.0.0.1:5140"]',
        help="also send JSON lines to a log shipper over TCP, e.g. 127.0.0.1:5140 (repeatable)",
        parse=parse_endpoint,
        check=lambda endpoint: check_resolvable(endpoint, "tcp"),
        transport=_tcp,
    ),
)
BY_NAME: Final = {kind.name: kind for kind in SINK_KINDS}
