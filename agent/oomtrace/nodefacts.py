"""The node's memory at a kill, against the kubelet's eviction thresholds: `node.memory`.

Capture reads it (NodeWatch.read) for the records where the kubelet's view of the
node matters: an OOM kill, and a signal from a container runtime, which may be an
eviction. The builder renders it (render) into the event; the stop step and the
classifier read `below_threshold` from there.

The kubelet's config file is read with the thresholds' parser (kubeletconfig.py)
at start and again when its modification time changes, looked at no more than
every CONFIG_CHECK_S: a node's kubelet config changes with a kubelet restart, not
between two kills of one storm.

A file absent at the default path gives no thresholds, not the kubelet's defaults:
the kubelet would use memory.available<100Mi without a file, but a node without a
file is most often a node without a kubelet, and a threshold nobody enforces would
name an eviction that cannot have happened.

`below_threshold` is the first crossed threshold in the parser's order: hard before
soft, since the kubelet acts on a hard threshold at its next check and on a soft one
only after its grace period; and memory.available before allocatableMemory.available.
Each signal has at most one threshold of each kind, so no two crossed thresholds
compete on height.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from oomtrace import log
from oomtrace.host import nodememory
from oomtrace.host.nodememory import NodeMemory
from oomtrace.kubeletconfig import (
    ALLOCATABLE_MEMORY_AVAILABLE,
    MEMORY_AVAILABLE,
    EvictionThresholds,
    Threshold,
    crossed,
    load,
)

CONFIG_CHECK_S: Final = 10.0
# Records of one burst (the members of a group kill, the containers of one pod's
# stop) come within milliseconds: one reading serves them all.
READING_KEPT_NS: Final = 10_000_000
_BINARY_UNITS: Final = (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """The node's memory at one moment, and the kubelet thresholds it was held against."""

    memory: NodeMemory
    # None when the kubelet's config could not be read (its warning says why).
    thresholds: tuple[Threshold, ...] | None
    below: Threshold | None


class NodeWatch:
    """Reads the node's memory on demand, with the kubelet's thresholds kept current."""

    def __init__(self, config: Path, *, explicit: bool, root: Path = Path("/")) -> None:
        self.config = config
        # A node without a kubelet has no config file at the default path: that is
        # said once at info level. A file named in the settings must be there.
        self.explicit = explicit
        self.root = root
        self._thresholds: EvictionThresholds | None = None
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self._last: tuple[int, NodeFacts] | None = None
        # At start-up, so a bad file is reported then, not at the first kill.
        self.thresholds()

    def thresholds(self) -> EvictionThresholds:
        now = time.monotonic()
        if self._thresholds is not None and now < self._next_check:
            return self._thresholds
        self._next_check = now + CONFIG_CHECK_S
        stamp = _stamp(self.config)
        if self._thresholds is None or stamp != self._stamp:
            self._stamp = stamp
            self._thresholds = load(self.config)
            self._report(self._thresholds)
        return self._thresholds

    def read(self, ktime_ns: int) -> NodeFacts:
        """The node's memory now (a record's kernel time keys the reading)."""
        if self._last is not None and 0 <= ktime_ns - self._last[0] <= READING_KEPT_NS:
            return self._last[1]
        memory = nodememory.read(self.root)
        config = self.thresholds()
        found = None if config.thresholds is None else tuple(config.thresholds)
        facts = NodeFacts(memory, found, crossed(found or (), memory))
        self._last = (ktime_ns, facts)
        return facts

    def _report(self, config: EvictionThresholds) -> None:
        logger = log.get()
        if config.thresholds is not None:
            logger.info(
                "kubelet_config",
                path=str(self.config),
                thresholds=[_threshold_text(t) for t in config.thresholds],
            )
        elif self._stamp is None and not self.explicit:
            logger.info(
                "kubelet_config_missing",
                path=str(self.config),
                effect="node.memory has no eviction thresholds",
            )
        else:
            logger.warning(
                "kubelet_config_unusable",
                path=str(self.config),
                reason="; ".join(config.warnings),
                effect="node.memory has no eviction thresholds",
            )


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def quantity(threshold: Threshold) -> str:
    """The threshold as the kubelet config writes it: "10%", "100Mi", "500M"."""
    if threshold.text is not None:
        return threshold.text
    if threshold.percentage is not None:
        return f"{threshold.percentage:g}%"
    value = threshold.quantity_bytes or 0
    for unit, size in _BINARY_UNITS:
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def _threshold_text(threshold: Threshold) -> str:
    return f"{threshold.kind} {threshold.signal}<{quantity(threshold)}"


def _capacity(signal: str, memory: NodeMemory) -> int | None:
    """What a percentage of the signal is taken of (the kubelet's makeSignalObservations)."""
    if signal == MEMORY_AVAILABLE:
        if memory.available_bytes is None or memory.working_set_bytes is None:
            return None
        return memory.available_bytes + memory.working_set_bytes
    if signal == ALLOCATABLE_MEMORY_AVAILABLE:
        return memory.allocatable_capacity_bytes
    return None


def _threshold(threshold: Threshold, memory: NodeMemory) -> dict[str, Any]:
    return {
        "signal": threshold.signal,
        "kind": threshold.kind,
        "quantity": quantity(threshold),
        "bytes": threshold.bytes_for(_capacity(threshold.signal, memory)),
        "grace_period_s": threshold.grace_period_s,
    }


def render(facts: NodeFacts | None) -> dict[str, Any] | None:
    """The event's `node.memory` (docs/events.md), or None when it was not read."""
    if facts is None:
        return None
    memory = facts.memory
    psi = None
    if memory.psi_some_avg10 is not None or memory.psi_full_avg10 is not None:
        psi = {"some_avg10": memory.psi_some_avg10, "full_avg10": memory.psi_full_avg10}
    return {
        "capacity_bytes": memory.capacity_bytes,
        "working_set_bytes": memory.working_set_bytes,
        "working_set_formula": memory.formula.replace(" ", "_"),
        "available_bytes": memory.available_bytes,
        "allocatable_available_bytes": memory.allocatable_available_bytes,
        "psi": psi,
        "thresholds": None
        if facts.thresholds is None
        else [_threshold(t, memory) for t in facts.thresholds],
        "below_threshold": None if facts.below is None else _threshold(facts.below, memory),
    }
