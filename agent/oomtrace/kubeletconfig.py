"""The kubelet's memory eviction thresholds, read from its KubeletConfiguration file.

Only the memory signals are kept: ``memory.available`` and ``allocatableMemory.available``,
hard and soft. The kubelet's own rules are followed, by function name:

- ``loadConfigFile`` (cmd/kubelet/app/server.go): with no ``evictionHard`` the kubelet uses
  ``DefaultEvictionHard`` (pkg/kubelet/eviction/defaults_linux.go), whose memory entry is
  ``memory.available: 100Mi``. With an ``evictionHard`` that leaves a signal out, that signal
  has no hard threshold, unless ``mergeDefaultEvictionSettings`` is true, which fills the
  missing signals in from the defaults.
- ``ParseThresholdConfig`` / ``parseThresholdStatement`` (pkg/kubelet/eviction/helpers.go):
  "0%" and "100%" are ignored; other percentages must lie in 0..100; a quantity must be
  positive; every soft threshold needs a grace period in ``evictionSoftGracePeriod``, a
  Go duration that is not negative. Any other value makes the kubelet refuse the whole file.
- ``addAllocatableThresholds``: when ``enforceNodeAllocatable`` holds "pods" (its default),
  every hard ``memory.available`` threshold is copied to ``allocatableMemory.available``.
- ``thresholdsMet`` and ``GetThresholdQuantity`` (pkg/kubelet/eviction/api/types.go): a
  threshold is met when its quantity is greater than the signal's available bytes; a
  percentage is taken of the signal's capacity, as a float32 fraction, truncated to bytes.

Values the kubelet would refuse make a warning and no thresholds at all, as the kubelet would
not run with them. Nothing here raises on a bad file.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal

import yaml

from oomtrace.host.nodememory import NodeMemory

__all__ = [
    "ALLOCATABLE_MEMORY_AVAILABLE",
    "DEFAULT_PATH",
    "DEFAULT_PRESSURE_TRANSITION_S",
    "EVICTION_MONITORING_PERIOD_S",
    "HARD_EVICTION_GRACE_PERIOD_S",
    "MEMORY_AVAILABLE",
    "EvictionThresholds",
    "Threshold",
    "crossed",
    "load",
    "parse",
    "parse_duration",
    "parse_quantity",
]

DEFAULT_PATH: Final = Path("/var/lib/kubelet/config.yaml")

MEMORY_AVAILABLE: Final = "memory.available"
ALLOCATABLE_MEMORY_AVAILABLE: Final = "allocatableMemory.available"
_SIGNALS: Final = (MEMORY_AVAILABLE, ALLOCATABLE_MEMORY_AVAILABLE)

# DefaultEvictionHard's memory entry, for Linux.
_DEFAULT_HARD: Final = "100Mi"
# SetDefaults_KubeletConfiguration: an unset (or zero) evictionPressureTransitionPeriod is 5m.
DEFAULT_PRESSURE_TRANSITION_S: Final = 300.0
# The kubelet's evictionMonitoringPeriod: how often it compares the signals to the
# thresholds. A constant of the kubelet, not a setting of the file.
EVICTION_MONITORING_PERIOD_S: Final = 10.0
# The eviction manager's immediateEvictionGracePeriodSeconds: a pod evicted on a hard
# threshold is killed this long after it is told to stop, whatever its own grace period.
HARD_EVICTION_GRACE_PERIOD_S: Final = 1
# enforceNodeAllocatable's default, and the key that makes the allocatable thresholds.
_PODS: Final = "pods"

Kind = Literal["hard", "soft"]


@dataclass(frozen=True, slots=True)
class Threshold:
    """One memory threshold: the signal's available bytes must not fall below it.

    Exactly one of ``quantity_bytes`` and ``percentage`` is set. ``percentage`` is the number
    written before "%" (10.0 for "10%"), resolved against the signal's capacity only when it
    is compared, as the capacity changes with the kubepods limit.
    """

    signal: str
    kind: Kind
    quantity_bytes: int | None
    percentage: float | None
    grace_period_s: float | None  # soft thresholds only
    # The value as the file writes it ("500M", "10%"), for people to recognise; not
    # compared, as "1Gi" and "1024Mi" are one threshold to the kubelet.
    text: str | None = field(default=None, compare=False)

    def bytes_for(self, capacity: int | None) -> int | None:
        """The threshold in bytes for a signal of ``capacity`` bytes (``GetThresholdQuantity``);
        None for a percentage when the capacity is unknown."""
        if self.quantity_bytes is not None:
            return self.quantity_bytes
        if self.percentage is None or capacity is None:
            return None
        # The kubelet keeps the fraction as a float32 (parsePercentage divides a float32 by
        # 100), then multiplies in float64 and truncates: 10% of a capacity is a few bytes
        # off a tenth, and matching it keeps a borderline comparison the kubelet's.
        fraction = _float32(_float32(self.percentage) / 100)
        return int(capacity * fraction)


@dataclass(frozen=True, slots=True)
class EvictionThresholds:
    """The memory thresholds of one kubelet config file.

    ``thresholds`` is None exactly when ``warnings`` is not empty: the file is missing or
    unreadable, or holds a value the kubelet would refuse. Hard thresholds come first.
    """

    thresholds: list[Threshold] | None
    warnings: list[str] = field(default_factory=list)
    # evictionMaxPodGracePeriod: the seconds a pod evicted on a soft threshold is given to
    # stop (on a hard threshold: HARD_EVICTION_GRACE_PERIOD_S).
    max_pod_grace_period_s: int | None = None
    # evictionPressureTransitionPeriod: how long MemoryPressure stays after the last crossing.
    pressure_transition_period_s: float | None = None


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


# -- quantities and durations: each raises ValueError with a message that completes "X: " --

_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    # Order matters: "Ei" is exbi, "E9" an exponent, a bare "E" exa.
    r"(?P<suffix>[KMGTPE]i|[eE][+-]?[0-9]+|[kMGTPEm])?"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# int64, where the kubelet keeps bytes; an exponent beyond this bound is a typo, not memory.
_MAX_BYTES = 2**63 - 1
_MAX_EXPONENT = 30


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity of memory in bytes, rounded up to a whole byte as
    ``Quantity.Value()`` rounds: "100Mi", "1Gi", "500M", "1e9", "1.5Gi", "1048576".

    Raises ValueError for anything else, for a negative quantity, and for the milli suffix
    ("100m" is a tenth of a byte: valid for Kubernetes, never meant for memory).
    """
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity (such as 100Mi, 1Gi, 500M or 1e9)")
    suffix = match["suffix"] or ""
    if suffix == "m":
        raise ValueError(f"{text!r} is in thousandths of a byte (the suffix m); use Mi or M")
    value = Fraction(match["number"])
    if suffix in _BINARY:
        value *= 1024 ** _BINARY[suffix]
    elif suffix in _DECIMAL:
        value *= 10 ** _DECIMAL[suffix]
    elif suffix:
        exponent = int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError(f"{text!r} is out of range")
        value *= Fraction(10) ** exponent
    if match["sign"] == "-" and value != 0:
        raise ValueError(f"{text!r} is negative")
    result = math.ceil(value)
    if result > _MAX_BYTES:
        raise ValueError(f"{text!r} is out of range")
    return result


_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """A Go duration ("90s", "1m30s", "1.5h", "0") in seconds, as ``time.ParseDuration``
    reads it. Raises ValueError otherwise; a negative duration is returned negative."""
    rest = text
    sign = 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    total = 0.0
    if not rest:
        raise ValueError(f"{text!r} is not a duration (such as 90s, 1m30s or 5m)")
    while rest:
        part = _DURATION_PART.match(rest)
        if part is None or not any(c.isdigit() for c in part[1]):
            raise ValueError(f"{text!r} is not a duration (such as 90s, 1m30s or 5m)")
        total += float(part[1]) * _UNIT_SECONDS[part[2]]
        rest = rest[part.end() :]
    return sign * total


# -- the file --


class _Odd(ValueError):
    """A value the kubelet would refuse; its message names the setting."""


def _mapping(doc: Mapping[str, object], key: str) -> Mapping[str, object] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Odd(f"{key} must be a mapping of signal to value, not {_kind_of(value)}")
    return value


def _kind_of(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names |= {list: "a list", dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


def _statement(key: str, signal: str, value: object, kind: Kind) -> Threshold | None:
    """One ``signal: value`` entry of evictionHard or evictionSoft (``parseThresholdStatement``);
    None when the kubelet ignores it ("0%" and "100%")."""
    where = f"{key}[{signal}]"
    if not isinstance(value, str):
        raise _Odd(f"{where} must be a string such as 100Mi or 10%, not {_kind_of(value)}")
    if value.endswith("%"):
        if value in ("0%", "100%"):
            return None
        number = value[:-1]
        if not re.fullmatch(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", number):
            raise _Odd(f"{where}: {value!r} is not a percentage")
        percentage = float(number)
        if not 0 <= percentage <= 100:
            raise _Odd(f"{where}: {value!r} must lie between 0% and 100%")
        return Threshold(signal, kind, None, percentage, None, value)
    try:
        quantity = parse_quantity(value)
    except ValueError as e:
        raise _Odd(f"{where}: {e}") from None
    if quantity <= 0:
        raise _Odd(f"{where}: {value!r} must be positive")
    return Threshold(signal, kind, quantity, None, None, value)


def _statements(key: str, entries: Mapping[str, object] | None, kind: Kind) -> list[Threshold]:
    found = []
    for signal in _SIGNALS:
        if entries is not None and signal in entries:
            threshold = _statement(key, signal, entries[signal], kind)
            if threshold is not None:
                found.append(threshold)
    return found


def _grace_period(entries: Mapping[str, object] | None, signal: str) -> float:
    key = "evictionSoftGracePeriod"
    if entries is None or signal not in entries:
        raise _Odd(f"evictionSoft[{signal}] has no grace period in {key}")
    value = entries[signal]
    if not isinstance(value, str):
        raise _Odd(f"{key}[{signal}] must be a duration such as 90s, not {_kind_of(value)}")
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise _Odd(f"{key}[{signal}]: {e}") from None
    if seconds < 0:
        raise _Odd(f"{key}[{signal}]: {value!r} is negative")
    return seconds


def _bool(doc: Mapping[str, object], key: str, default: bool) -> bool:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Odd(f"{key} must be true or false, not {_kind_of(value)}")
    return value


def _enforced(doc: Mapping[str, object]) -> list[str]:
    value = doc.get("enforceNodeAllocatable")
    if value is None:
        return [_PODS]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Odd("enforceNodeAllocatable must be a list of strings such as [pods]")
    return value


def _max_pod_grace_period(doc: Mapping[str, object]) -> int:
    value = doc.get("evictionMaxPodGracePeriod")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise _Odd(f"evictionMaxPodGracePeriod must be a number of seconds, not {value!r}")
    return value


def _transition_period(doc: Mapping[str, object]) -> float:
    key = "evictionPressureTransitionPeriod"
    value = doc.get(key)
    if value is None:
        return DEFAULT_PRESSURE_TRANSITION_S
    if not isinstance(value, str):
        raise _Odd(f"{key} must be a duration such as 5m, not {_kind_of(value)}")
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise _Odd(f"{key}: {e}") from None
    if seconds < 0:
        raise _Odd(f"{key}: {value!r} is negative")
    return seconds or DEFAULT_PRESSURE_TRANSITION_S


def _from_document(doc: Mapping[str, object]) -> EvictionThresholds:
    kind = doc.get("kind")
    if kind is not None and kind != "KubeletConfiguration":
        raise _Odd(f"kind is {kind!r}, not KubeletConfiguration")

    hard_entries = _mapping(doc, "evictionHard")
    merge = _bool(doc, "mergeDefaultEvictionSettings", default=False)
    if hard_entries is None:
        hard_entries = {MEMORY_AVAILABLE: _DEFAULT_HARD}
    elif merge:
        hard_entries = {MEMORY_AVAILABLE: _DEFAULT_HARD, **hard_entries}
    hard = _statements("evictionHard", hard_entries, "hard")

    if _PODS in _enforced(doc):
        for threshold in [t for t in hard if t.signal == MEMORY_AVAILABLE]:
            copy = dataclasses.replace(threshold, signal=ALLOCATABLE_MEMORY_AVAILABLE)
            if copy not in hard:
                hard.append(copy)

    soft = _statements("evictionSoft", _mapping(doc, "evictionSoft"), "soft")
    periods = _mapping(doc, "evictionSoftGracePeriod")
    soft = [dataclasses.replace(t, grace_period_s=_grace_period(periods, t.signal)) for t in soft]
    return EvictionThresholds(
        thresholds=hard + soft,
        warnings=[],
        max_pod_grace_period_s=_max_pod_grace_period(doc),
        pressure_transition_period_s=_transition_period(doc),
    )


def _failed(warning: str) -> EvictionThresholds:
    return EvictionThresholds(thresholds=None, warnings=[warning])


def parse(text: str, source: str = "the kubelet config") -> EvictionThresholds:
    """The memory thresholds of a KubeletConfiguration document; ``source`` names it in
    warnings."""
    if not text.strip():
        return _failed(f"{source} is empty")
    try:
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
        what = e.problem or ""
        # Some problems read only after their context: "expected a single document in the
        # stream" + "but found another document".
        if e.context and (not what or what.startswith("but ")):
            what = f"{e.context}, {what}" if what else e.context
        return _failed(f"{source} is not valid YAML{where}: {what}")
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
        # The constructors raise ValueError for scalars such as a timestamp of month 13.
        return _failed(f"{source} is not valid YAML: {e}")
    if doc is None:
        return _failed(f"{source} is empty")
    if not isinstance(doc, dict):
        return _failed(f"{source} is not a mapping of settings but {_kind_of(doc)}")
    try:
        return _from_document(doc)
    except _Odd as e:
        return _failed(f"{source}: {e}")


def load(path: Path = DEFAULT_PATH) -> EvictionThresholds:
    """The memory thresholds of the kubelet config file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _failed(f"{path} is missing")
    except OSError as e:
        return _failed(f"{path} cannot be read: {e.strerror or e}")
    except (UnicodeDecodeError, ValueError):
        return _failed(f"{path} is not UTF-8 text")
    return parse(text, source=str(path))


def _observe(signal: str, memory: NodeMemory) -> tuple[int | None, int | None]:
    """The signal's (available, capacity) bytes, as ``makeSignalObservations`` makes them."""
    if signal == MEMORY_AVAILABLE:
        available, ws = memory.available_bytes, memory.working_set_bytes
        return available, None if available is None or ws is None else available + ws
    if signal == ALLOCATABLE_MEMORY_AVAILABLE:
        return memory.allocatable_available_bytes, memory.allocatable_capacity_bytes
    return None, None


def crossed(
    thresholds: EvictionThresholds | Iterable[Threshold], memory: NodeMemory
) -> Threshold | None:
    """The first threshold whose signal is below it now, or None (also when a signal is
    unknown). Grace periods are not waited for: a crossed soft threshold is returned too."""
    if isinstance(thresholds, EvictionThresholds):
        thresholds = thresholds.thresholds or []
    for threshold in thresholds:
        available, capacity = _observe(threshold.signal, memory)
        if available is None:
            continue
        limit = threshold.bytes_for(capacity)
        if limit is not None and limit > available:
            return threshold
    return None
