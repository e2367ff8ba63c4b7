"""Diagnostic logging: structlog to stderr, never mixed with the event stream.

JSON lines (orjson) when stderr is not a terminal, which is what journald and
log shippers read; a console renderer for a person at a terminal. A log line may
quote a process's name or a cgroup path: the console gets them through
display.printable(), and JSON gets text it can carry (bytes that are not UTF-8
as \\xNN).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from oomtrace.display import printable
from oomtrace.schema import exact_text

LEVELS = ("debug", "info", "warning", "error")


def configure(level: str = "info", fmt: str = "auto") -> None:
    """fmt: "json", "console", or "auto" (console on a TTY)."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        processors = [
            *shared,
            _for_console,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
        factory: Any = structlog.PrintLoggerFactory(file=sys.stderr)
    else:
        processors = [
            *shared,
            structlog.processors.dict_tracebacks,
            _for_json,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get(name: str = "oomtrace") -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


def _walk(value: Any, text: Any) -> Any:
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {k: _walk(v, text) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, text) for v in value]
    return value


def _for_console(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    return {k: _walk(v, printable) for k, v in event.items()}


def _for_json(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    # orjson escapes control characters itself, but refuses lone surrogates.
    return {k: _walk(v, lambda t: t if t.isascii() else exact_text(t)[0]) for k, v in event.items()}
