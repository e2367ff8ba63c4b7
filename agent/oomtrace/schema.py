"""The ``oomtrace.event/v1`` vocabulary, shared by the builder, the classifier and
every sink: the event type, the roles a process can play, the causes, and the
labels people read. docs/events.md documents every field.

Nothing here reads the host or knows about kernel records: a sink that imports
this module imports nothing else of the agent.
"""

from __future__ import annotations

import base64
import time
from enum import StrEnum
from typing import Any, Final

SCHEMA: Final = "oomtrace.event/v1"

# One event: plain JSON data, ready for orjson.
Event = dict[str, Any]

# The roles a process plays in an event. The victim is the process that died; the
# sender sent the signal; the trigger is the task whose allocation ran the OOM killer.
VICTIM: Final = "victim"
SENDER: Final = "sender"
TRIGGER: Final = "trigger"
ROLES: Final = (VICTIM, SENDER, TRIGGER)


class Cause(StrEnum):
    """Why a process died: the event's `cause`. A new cause is added here and
    decided in classify.py (with its test in tests/unit/test_classify.py)."""

    OOM_KILL = "oom_kill"
    CGROUP_KILL = "cgroup_kill"
    USERSPACE_OOM_KILLER = "userspace_oom_killer"
    EVICTION = "eviction"
    RUNTIME_STOP = "runtime_stop"
    MANUAL = "manual"
    KERNEL = "kernel"
    PROCESS = "process"


MIB: Final = 1 << 20


def mib(value: object, digits: int = 1) -> str:
    """A byte count in MiB for people, or "?" when it is unknown."""
    return f"{value / MIB:.{digits}f} MiB" if isinstance(value, int) else "?"


def utc_second(seconds: int) -> str:
    """An RFC 3339 UTC date and time, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def rfc3339(wall_ns: int) -> str:
    """Nanoseconds since the epoch as every time in an event is written."""
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    return f"{utc_second(seconds)}.{nanos:09d}Z"


def duration(seconds: float) -> str:
    """A process's age for people, at the precision that matters at that age:
    "0.05 s", "1.2 s", "42 s", "12 min 5 s", "4 h 12 min", "3 d 4 h"."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def pod_label(k8s: dict[str, Any]) -> str:
    """namespace/pod, with the pod UID when the CRI gave no name."""
    return f"{k8s.get('namespace') or '?'}/{k8s.get('pod') or k8s.get('pod_uid') or '?'}"


def container_label(k8s: dict[str, Any]) -> str | None:
    """The container's name, or the start of its ID when the CRI gave no name."""
    return k8s.get("container") or (k8s.get("container_id") or "")[:12] or None


def exact_text(value: str) -> tuple[str, str | None]:
    """A name for JSON, and its exact bytes when JSON cannot hold them.

    Names from the kernel and /proc are decoded as os.fsdecode() does: bytes that
    are not UTF-8 are lone surrogates, which JSON cannot carry. Those bytes are
    written as ``\\xNN`` in the text, and the exact bytes go, base64, in a
    ``<field>_b64`` sibling (docs/events.md). UTF-8 text is returned as it is."""
    if value.isascii():
        return value, None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Only U+DC80..U+DCFF come from undecodable bytes; any other lone
        # surrogate is kept as the bytes Python would store for it.
        raw = value.encode("utf-8", "surrogateescape" if _escaped_bytes(value) else "surrogatepass")
        return raw.decode("utf-8", "backslashreplace"), base64.b64encode(raw).decode("ascii")
    return value, None


def _escaped_bytes(value: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in value)


def json_safe(value: Any) -> Any:
    """A copy of an event that JSON can carry: every name that is not UTF-8 as
    text with ``\\xNN``, and its exact bytes in a ``<key>_b64`` sibling (for a
    list, such as `cmdline`, one entry per item). Only an event that orjson
    refused needs it, so the common case pays nothing."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[key] = json_safe(item)
            raw = _raw_of(item)
            if raw is not None:
                out[f"{key}_b64"] = raw
        return out
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, str):
        return exact_text(value)[0]
    return value


def _raw_of(value: Any) -> str | list[str] | None:
    """The base64 sibling of a name, or of a list of names, that is not UTF-8."""
    if isinstance(value, str):
        return exact_text(value)[1]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        exact = [exact_text(v) for v in value]
        if any(raw is not None for _, raw in exact):
            utf8 = (base64.b64encode(t.encode()).decode("ascii") for t, _ in exact)
            return [raw if raw is not None else b for (_, raw), b in zip(exact, utf8, strict=True)]
    return None
