"""Reconnect delays: exponential, capped, with jitter so that agents on many
nodes do not all knock on a restarted shipper in the same instant."""

from __future__ import annotations

import random
from typing import Final

FIRST_S: Final = 0.1
FACTOR: Final = 2.0
CAP_S: Final = 5.0
JITTER: Final = 0.2  # each delay is within +-20% of the nominal one


class Backoff:
    def __init__(
        self,
        first: float = FIRST_S,
        cap: float = CAP_S,
        *,
        jitter: float = JITTER,
        rng: random.Random | None = None,
    ) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._nominal = first
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt, after a failed one."""
        delay = self._nominal * (1 + self._rng.uniform(-self.jitter, self.jitter))
        self._nominal = min(self._nominal * FACTOR, self.cap)
        self.attempts += 1
        return min(delay, self.cap)

    def reset(self) -> None:
        self._nominal = self.first
        self.attempts = 0
