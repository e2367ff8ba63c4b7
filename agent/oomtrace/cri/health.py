"""Whether the CRI is answering, and logging each outage once rather than once per event."""

from __future__ import annotations

import threading
import time

from structlog.typing import FilteringBoundLogger

from oomtrace.cri.errors import CriBadAnswer, CriError, CriTimeout, CriUnavailable

__all__ = ["CriHealth"]

_EVENT_BY_KIND: dict[type[CriError], str] = {
    CriUnavailable: "cri_unavailable",
    CriTimeout: "cri_timeout",
    CriBadAnswer: "cri_bad_answer",
}


class CriHealth:
    """Thread-safe. ``failed`` logs the first failure of an outage, ``ok`` logs its end."""

    def __init__(self, log: FilteringBoundLogger, endpoint: str | None) -> None:
        self._log = log
        self._lock = threading.Lock()
        self.endpoint = endpoint
        self._since: float | None = None
        self._kind: type[CriError] | None = None
        self._reason: str | None = None
        self._suppressed = 0

    @property
    def down_reason(self) -> str | None:
        """Why the runtime is known to be unreachable, None when it may answer."""
        with self._lock:
            return self._reason if self._kind is CriUnavailable else None

    def failed(self, err: CriError) -> bool:
        """Record a failure; True when it starts an outage (or changes its kind)."""
        kind = next((k for k in _EVENT_BY_KIND if isinstance(err, k)), None)
        if kind is None:
            return False  # not found is an answer, not a failure
        with self._lock:
            self._reason = str(err)
            if self._kind is kind:
                self._suppressed += 1
                return False
            starts = self._kind is None
            self._kind = kind
            if starts:
                self._since = time.monotonic()
            self._suppressed = 0
        self._log.warning(_EVENT_BY_KIND[kind], endpoint=self.endpoint, reason=str(err))
        return True

    def ok(self) -> None:
        with self._lock:
            if self._kind is None:
                return
            kind, since, suppressed = self._kind, self._since, self._suppressed
            self._kind = self._reason = self._since = None
            self._suppressed = 0
        self._log.info(
            "cri_reconnected" if kind is CriUnavailable else "cri_recovered",
            endpoint=self.endpoint,
            outage_s=round(time.monotonic() - since, 3) if since is not None else None,
            failures_not_logged=suppressed,
        )
