"""Settings, validated once at start-up; a bad value stops with exit code 2."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from oomtrace.sigdefs import SIGKILL

FORMATS: Final = ("auto", "json", "text")
TIERS: Final = ("auto", "tracepoint", "kprobe")
LOG_FORMATS: Final = ("auto", "json", "console")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    signals: frozenset[int] = frozenset({SIGKILL})
    format: str = "auto"
    outputs: tuple[Path, ...] = ()
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

    def validate(self) -> Settings:
        _choice("format", self.format, FORMATS)
        _choice("tier", self.tier, TIERS)
        _choice("log-format", self.log_format, LOG_FORMATS)
        _choice("log-level", self.log_level, LOG_LEVELS)
        if not self.signals:
            raise ConfigError("signals: at least one signal must be traced")
        if self.duration is not None and self.duration <= 0:
            raise ConfigError(f"duration: must be positive, not {self.duration}")
        if self.count is not None and self.count <= 0:
            raise ConfigError(f"count: must be positive, not {self.count}")
        if not 0 < self.exit_wait <= 300:
            raise ConfigError(f"exit-wait: must be in (0, 300] seconds, not {self.exit_wait}")
        pages = self.ringbuf_pages
        if pages < 1 or pages & (pages - 1):
            raise ConfigError(f"ring-buffer-pages: must be a power of two, not {pages}")
        if self.queue_size < 1:
            raise ConfigError(f"queue-size: must be positive, not {self.queue_size}")
        for path in self.outputs:
            if not path.parent.is_dir():
                raise ConfigError(f"output: directory {path.parent} does not exist")
            if path.is_dir():
                raise ConfigError(f"output: {path} is a directory")
        for cgroup in self.cgroups:
            if not cgroup.startswith("/"):
                raise ConfigError(
                    f"cgroup: {cgroup!r} must be an absolute cgroup path like /kubepods"
                )
        return self


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
