"""Settings, validated once at start-up; a bad value stops with exit code 2.

Where each value comes from (defaults < TOML file < OOMTRACE_* environment <
flags) is configfile.py's job; this module only says what a valid value is. What
a valid sink target is, each sink kind says (sinks/kinds.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from oomtrace.schema import Cause
from oomtrace.sigdefs import SIGKILL

FORMATS: Final = ("auto", "json", "text")
TIERS: Final = ("auto", "tracepoint", "kprobe")
LOG_FORMATS: Final = ("auto", "json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
OVERFLOW_POLICIES: Final = ("drop_oldest", "drop_newest")

# The kernel keeps a comm in 16 bytes with its terminating NUL (TASK_COMM_LEN).
COMM_MAX_BYTES: Final = 15
CAUSES: Final = tuple(cause.value for cause in Cause)
# Where the metrics endpoint listens when only a port is given: never the
# network unless asked, since events name pods and command lines.
METRICS_DEFAULT_HOST: Final = "127.0.0.1"
# Where kubeadm and most installers have the kubelet read its configuration.
DEFAULT_KUBELET_CONFIG: Final = Path("/var/lib/kubelet/config.yaml")


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
    # The targets of every sink kind but stdout, by the kind's key (sinks/kinds.py),
    # e.g. (("output", (Path(...),)), ("tcp", (Endpoint(...),))). Held by key rather
    # than in a field per kind so that a new kind needs no change here.
    sinks: tuple[tuple[str, tuple[Any, ...]], ...] = ()
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
    # The kernel side (pinned in bpffs) keeps recording after the service stops;
    # a restart keeps it either way. Off: a stop really stops.
    keep_tracing_when_stopped: bool = False
    # Where the kernel side is pinned (a directory in bpffs); None: in
    # /sys/fs/bpf/oomtrace when run as a systemd service, nowhere when run by
    # hand (a run by hand must never take over the service's ring buffer).
    pin_dir: Path | None = None
    # Where the agent notes when it last traced.
    state_dir: Path = Path("/var/lib/oomtrace")
    log_level: str = "info"
    log_format: str = "auto"
    cri_endpoint: str | None = None
    # The Kubernetes node's name (a DaemonSet's spec.nodeName), which a node's
    # hostname need not be.
    node_name: str | None = None
    # The kubelet's KubeletConfiguration file, for its memory eviction thresholds.
    kubelet_config: Path = DEFAULT_KUBELET_CONFIG
    # The [causes] table: (sender comm, Cause value) pairs, sorted by comm.
    causes: tuple[tuple[str, str], ...] = ()
    config_file: Path | None = None

    def targets(self, key: str) -> tuple[Any, ...]:
        """The targets of one sink kind, by its key ("output", "tcp", ...)."""
        for name, targets in self.sinks:
            if name == key:
                return targets
        return ()

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
        for comm, cause in self.causes:
            _check_cause(comm, cause)
        return self


def _check_cause(comm: str, cause: object) -> None:
    if not comm:
        raise ConfigError("a sender's comm cannot be empty", key="causes")
    raw = comm.encode()
    # A name the kernel could never report would be accepted and then silently
    # never match a sender: refused instead.
    if len(raw) > COMM_MAX_BYTES:
        shown = raw[:COMM_MAX_BYTES].decode(errors="replace")
        hint = "" if "\ufffd" in shown else f" ({comm!r} shows as {shown!r})"
        raise ConfigError(
            f"{comm!r} is longer than {COMM_MAX_BYTES} bytes: the kernel cuts every comm "
            f"to {COMM_MAX_BYTES}, so it could never match{hint}",
            key="causes",
        )
    if "\0" in comm:
        raise ConfigError(
            f"{comm!r} holds a NUL, where the kernel ends every comm, so it could never match",
            key="causes",
        )
    if cause not in CAUSES:
        raise ConfigError(
            f"{comm!r}: {cause!r} is not a cause (one of: {', '.join(CAUSES)})", key="causes"
        )


def check_resolvable(endpoint: Endpoint) -> None:
    """Raises ValueError when the host has no address."""
    try:
        socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {endpoint.host!r}: {exc.strerror}") from None


def _positive(key: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"must be positive, not {value}", key=key)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{value!r} is not one of {', '.join(allowed)}", key=key)
