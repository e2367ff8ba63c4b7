"""Settings, validated once at start-up; a bad value stops with exit code 2.

Where each value comes from (defaults < TOML file < OOMTRACE_* environment <
flags) is configfile.py's job; this module only says what a valid value is.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from oomtrace.sigdefs import SIGKILL

FORMATS: Final = ("auto", "json", "text")
TIERS: Final = ("auto", "tracepoint", "kprobe")
LOG_FORMATS: Final = ("auto", "json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
OVERFLOW_POLICIES: Final = ("drop_oldest", "drop_newest")

# The kernel's limit for a unix socket path (sun_path, with its terminating NUL).
UNIX_PATH_MAX: Final = 107
# Where the metrics endpoint listens when only a port is given: never the
# network unless asked, since events name pods and command lines.
METRICS_DEFAULT_HOST: Final = "127.0.0.1"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it.

    ``key`` is the setting's name when one setting is at fault, so the caller
    can say where the value came from (a file, the environment, a flag).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.detail = message


class Endpoint(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str, *, default_host: str | None = None) -> Endpoint:
    """'127.0.0.1:5140', '[::1]:5140', 'localhost:5140'; ':9808' or '9808' when
    a default host is allowed."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if default_host is None:
            raise ValueError(f"{text!r} is not HOST:PORT, as in 127.0.0.1:5140")
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        if default_host is None:
            raise ValueError(f"{text!r} needs a host, as in 127.0.0.1:5140")
        host = default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r} is not HOST:PORT") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port must be 1 to 65535")
    return Endpoint(host, port)


@dataclass(frozen=True, slots=True)
class Settings:
    signals: frozenset[int] = frozenset({SIGKILL})
    format: str = "auto"
    stdout: bool = True
    outputs: tuple[Path, ...] = ()
    unix_sockets: tuple[Path, ...] = ()
    tcp: tuple[Endpoint, ...] = ()
    sink_queue_size: int = 4096
    sink_overflow: str = "drop_oldest"
    metrics_listen: Endpoint | None = None
    pids: frozenset[int] = frozenset()
    cgroups: tuple[str, ...] = ()
    tier: str = "auto"
    duration: float | None = None
    count: int | None = None
    exit_wait: float = 5.0
    ringbuf_pages: int = 1024
    queue_size: int = 65536
    stats_interval: float = 60.0
    log_level: str = "info"
    log_format: str = "auto"
    cri_endpoint: str | None = None
    # The [causes] table: (sender comm, cause) pairs, checked by configfile.
    causes: tuple[tuple[str, str], ...] = ()
    config_file: Path | None = None

    def validate(self) -> Settings:
        _choice("format", self.format, FORMATS)
        _choice("tier", self.tier, TIERS)
        _choice("log_format", self.log_format, LOG_FORMATS)
        _choice("log_level", self.log_level, LOG_LEVELS)
        _choice("sink_overflow", self.sink_overflow, OVERFLOW_POLICIES)
        if not self.signals:
            raise ConfigError("at least one signal must be traced", key="signals")
        for sig in self.signals:
            if not 0 < sig < 65:
                raise ConfigError(f"{sig} is not a signal number (1 to 64)", key="signals")
        _positive("duration", self.duration)
        _positive("count", self.count)
        if not 0 < self.exit_wait <= 300:
            raise ConfigError(f"must be in (0, 300] seconds, not {self.exit_wait}", key="exit_wait")
        pages = self.ringbuf_pages
        if pages < 1 or pages & (pages - 1):
            raise ConfigError(f"must be a power of two, not {pages}", key="ring_buffer_pages")
        _positive("record_queue_size", self.queue_size)
        _positive("sink_queue_size", self.sink_queue_size)
        _positive("stats_interval", self.stats_interval)
        for pid in self.pids:
            _positive("pid", pid)
        for cgroup in self.cgroups:
            if not cgroup.startswith("/"):
                raise ConfigError(
                    f"{cgroup!r} must be an absolute cgroup path like /kubepods", key="cgroup"
                )
        return self


def check_output_path(path: Path) -> None:
    """A file sink's path must be a file this process can create or append to."""
    if not path.is_absolute():
        raise ConfigError(f"{path} must be an absolute path", key="output")
    if not path.parent.is_dir():
        raise ConfigError(f"directory {path.parent} does not exist", key="output")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory", key="output")
    problem = _unwritable(path)
    if problem:
        raise ConfigError(f"cannot write {path}: {problem}", key="output")


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


def check_socket_path(path: Path) -> None:
    """A unix socket sink's path must be able to name a socket. A socket that
    does not exist yet is fine (the shipper may start later: the sink retries);
    a path that can never work is not."""
    if not path.is_absolute():
        raise ConfigError(f"{path} must be an absolute path", key="unix_socket")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ConfigError(
            f"{path} is longer than the {UNIX_PATH_MAX} bytes a socket path may have",
            key="unix_socket",
        )
    if not path.parent.is_dir():
        raise ConfigError(
            f"{path} is unreachable: directory {path.parent} does not exist", key="unix_socket"
        )
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{path} is unreachable: {exc.strerror}", key="unix_socket") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket", key="unix_socket")


def check_resolvable(endpoint: Endpoint, key: str) -> None:
    try:
        socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {endpoint.host!r}: {exc.strerror}", key=key) from None


def _positive(key: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"must be positive, not {value}", key=key)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{value!r} is not one of {', '.join(allowed)}", key=key)
