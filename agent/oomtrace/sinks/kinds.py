"""Every kind of sink that takes targets, declared once.

Adding a sink kind is its transport module in sinks/ and its SinkKind here.

A declaration names the configuration key (also the flag --<key> and the
environment variable OOMTRACE_<KEY>), how one target is parsed and checked, and
the transport that writes to it. configfile.py makes the keys and checks the
targets when it loads settings, Settings holds the targets by key, cli.py makes
the flags and sinks/fanout.py the sinks, all from this table. stdout is not
here: it is a switch with a format, not a list of targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from oomtrace.config import check_resolvable, parse_endpoint
from oomtrace.sinks.file import FileTransport, check_path
from oomtrace.sinks.queued import Transport
from oomtrace.sinks.sockets import TcpTransport, UnixTransport, check_socket_path


@dataclass(frozen=True, slots=True)
class SinkKind:
    name: str  # a sink of this kind is called "<name>:<target>", as its transport names it
    key: str  # configuration key, flag --<key>, environment OOMTRACE_<KEY>
    metavar: str
    example: str  # a TOML value, for error messages
    help: str
    # One target from text (a flag, the environment, a string in the file); the
    # target must be hashable and print as the text it came from.
    parse: Callable[[str], Any]
    # Called for each target when settings are loaded; raises ValueError saying
    # what is wrong, which becomes a configuration error naming the key.
    check: Callable[[Any], None]
    transport: Callable[[Any], Transport]  # from a parsed target
    # Opened at start-up, so a target that cannot be written stops it at once;
    # sockets connect in their writer thread and are retried instead.
    opens_at_start: bool = False
    short_flag: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


SINK_KINDS: Final[tuple[SinkKind, ...]] = (
    SinkKind(
        name="file",
        key="output",
        metavar="PATH",
        example='["/var/log/oomtrace/events.jsonl"]',
        help="also append JSON lines to PATH, mode 0640; reopened on SIGHUP and when "
        "moved away by logrotate (repeatable)",
        parse=Path,
        check=check_path,
        transport=FileTransport,
        opens_at_start=True,
        short_flag="-o",
    ),
    SinkKind(
        name="unix",
        key="unix_socket",
        metavar="PATH",
        example='["/run/shipper/oomtrace.sock"]',
        help="also send JSON lines to a log shipper's unix stream socket (repeatable)",
        parse=Path,
        check=check_socket_path,
        transport=UnixTransport,
    ),
    SinkKind(
        name="tcp",
        key="tcp",
        metavar="HOST:PORT",
        example='["127.0.0.1:5140"]',
        help="also send JSON lines to a log shipper over TCP, e.g. 127.0.0.1:5140 (repeatable)",
        parse=parse_endpoint,
        check=check_resolvable,
        transport=TcpTransport,
    ),
)
BY_NAME: Final = {kind.name: kind for kind in SINK_KINDS}
BY_KEY: Final = {kind.key: kind for kind in SINK_KINDS}
