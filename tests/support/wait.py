"""Polling a condition with a deadline, for tests that wait on another process."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(check: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    """True once `check` holds, checked every `step` s; its last answer at `timeout`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(step)
    return check()
