"""The agent's event loop, one step after the other:

    kernel -> decode -> capture -> correlate -> build -> filter -> enrich -> stops
           -> classify -> sinks

Each record is decoded (kernel/records.py), its evidence read from the host while
it is fresh (capture.py), and joined with the others of its kill (correlate.py).
A completed kill becomes an event (build.py), is kept or dropped by --pid and
--cgroup, gets its pods and containers (kubernetes.py), waits for the rest of its
pod's stop if a runtime stopped it (stops.py), gets its cause (classify.py), and
goes to every sink (sinks/).

Two threads. The reader only polls the ring buffer and enqueues raw records, so
nothing slow ever stands between the kernel and its buffer. The pipeline thread
(the main thread) does the rest. The queue between them is bounded; whatever it
must drop is counted and reported as a ``lost`` event, like kernel-side drops.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Final

from oomtrace import log
from oomtrace.build import Clock, EventBuilder, kill_facts, with_verdict
from oomtrace.capture import Capture
from oomtrace.classify import Rules, classify
from oomtrace.config import DEFAULT_KUBELET_CONFIG, Settings
from oomtrace.correlate import Correlator, Kill
from oomtrace.cri.resolver import CriResolver
from oomtrace.exits import ExitWatcher, ProcExit
from oomtrace.host import procfs
from oomtrace.host.cgroupfs import CgroupPaths
from oomtrace.kernel import commands
from oomtrace.kernel.features import KernelVocabulary
from oomtrace.kernel.probes import Probes
from oomtrace.kernel.records import KIND_NAMES, DecodeError, RecordDecoder
from oomtrace.kubernetes import KubernetesEnricher
from oomtrace.nodefacts import NodeWatch
from oomtrace.schema import Cause, Event
from oomtrace.sinks import Accounted, Sink
from oomtrace.stops import StopStep, busy_pods

# While kills wait for their exit or window, deadlines are checked this often;
# with none pending the loop only wakes for records and the periodic checks,
# so an idle node costs a few wake-ups a second.
TICK_S: Final = 0.02
IDLE_TICK_S: Final = 0.5
# A ring buffer record wakes the reader at once; the timeout only bounds how
# long a stop request waits for it.
POLL_MS: Final = 500
LOST_CHECK_S: Final = 1.0
CLOCK_RESYNC_S: Final = 60.0


@dataclass(slots=True)
class Counters:
    records: int = 0
    events: int = 0
    filtered: int = 0
    decode_errors: int = 0
    queue_dropped: int = 0
    kernel_lost: int = 0
    pipeline_errors: int = 0
    sink_dropped: int = 0


class EventFilter:
    """--pid / --cgroup: keep events that involve one of the given processes or cgroups."""

    def __init__(self, pids: Iterable[int], cgroups: Iterable[str]) -> None:
        self.pids = frozenset(pids)
        self.cgroups = tuple(c.rstrip("/") or "/" for c in cgroups)

    def __bool__(self) -> bool:
        return bool(self.pids or self.cgroups)

    def matches(self, event: Event) -> bool:
        procs = [event.get(role) for role in ("victim", "sender", "trigger")]
        for proc in procs:
            if not proc:
                continue
            if proc.get("pid") in self.pids:
                return True
            path = proc.get("cgroup")
            if path and any(self._under(path, c) for c in self.cgroups):
                return True
        return False

    @staticmethod
    def _under(path: str, prefix: str) -> bool:
        return prefix in ("/", path) or path.startswith(prefix + "/")


def rules_of(settings: Settings) -> Rules:
    """The classifier's rules, with the configuration's [causes] table."""
    return Rules(configured={comm: Cause(cause) for comm, cause in settings.causes})


class Agent:
    def __init__(
        self,
        settings: Settings,
        probes: Probes,
        sinks: list[Sink],
        *,
        paths: CgroupPaths | None = None,
        k8s: CriResolver | None = None,
        vocabulary: KernelVocabulary | None = None,
        on_ready: Callable[[], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.probes = probes
        self.sinks = sinks
        self.log = log.get()
        self.paths = paths or CgroupPaths()
        self.k8s = k8s
        self.capture = Capture(
            self.paths,
            on_new_container=k8s.nudge if k8s else None,
            node=NodeWatch(
                settings.kubelet_config,
                explicit=settings.kubelet_config != DEFAULT_KUBELET_CONFIG,
            ),
        )
        self.correlator = Correlator(exit_wait_ns=int(settings.exit_wait * 1e9))
        self.clock = Clock()
        self.builder = EventBuilder(
            self.clock, probes.plan.tier, vocabulary=vocabulary, node_name=settings.node_name
        )
        self.kubernetes = KubernetesEnricher(k8s)
        self.stops: StopStep[Kill] = StopStep()
        self.rules = rules_of(settings)
        self.filter = EventFilter(settings.pids, settings.cgroups)
        self.decoder = RecordDecoder()
        self.counters = Counters()
        self.stop_event = threading.Event()
        self._queue: queue.Queue[bytes | ProcExit] = queue.Queue(maxsize=settings.queue_size)
        self.exits = ExitWatcher(self._enqueue)
        self.exits.watched = self.correlator.watched_tgids
        self._reader = threading.Thread(target=self._read, name="ringbuf-reader", daemon=True)
        self._on_ready = on_ready
        # Called once per event-loop turn (sd_notify watchdog, SIGHUP reload).
        self._on_tick = on_tick
        self._lost_seen: dict[int, int] = {}
        self._errors_logged: set[str] = set()
        self.commands = probes.commands()
        self._commands_full_seen = 0

    # -- threads ---------------------------------------------------------------

    def _enqueue(self, raw: bytes | ProcExit) -> None:
        try:
            self._queue.put_nowait(raw)
        except queue.Full:
            self.counters.queue_dropped += 1

    def _read(self) -> None:
        while not self.stop_event.is_set():
            self.probes.poll(POLL_MS)

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if signum is not None:
            self.log.info("stopping", signal=signal.Signals(signum).name)
        self.stop_event.set()

    def healthy(self) -> bool:
        """The kernel reader still polls: the watchdog keepalive depends on it."""
        return self._reader.is_alive()

    def run(self) -> int:
        self.paths.warm()
        if self.k8s is not None:
            self.k8s.start()
        self.probes.open(self._enqueue)
        self._reader.start()
        self.exits.start()
        # After the attach: an exec from now on is the kernel's to record.
        seeded = commands.seed(self.commands, procfs.all_pids()) if self.commands else None
        plan = self.probes.plan
        self.log.info(
            "ready",
            commands_seeded=seeded.inserted if seeded else None,
            tier=plan.tier,
            hooks=plan.hooks + (["netlink:proc_connector"] if self.exits.available else []),
            missing=plan.missing,
            kernel_headers="stub" if plan.kernel_source else "kernel",
            signals=sorted(self.settings.signals),
        )
        if self._on_ready:
            self._on_ready()
        deadline = (
            time.monotonic() + self.settings.duration
            if self.settings.duration is not None
            else None
        )
        next_lost = time.monotonic() + LOST_CHECK_S
        next_resync = time.monotonic() + CLOCK_RESYNC_S
        next_stats = time.monotonic() + self.settings.stats_interval
        while not self.stop_event.is_set():
            idle = self.correlator.idle() and not self.stops.holding()
            self._process_queue(timeout=IDLE_TICK_S if idle else TICK_S)
            self._emit_kills(self.correlator.tick(time.monotonic_ns()))
            if self.stops.holding():
                self._emit_ready(self.stops.tick(time.monotonic_ns(), self._busy_pods()))
            now = time.monotonic()
            if now >= next_lost:
                self._check_lost()
                next_lost = now + LOST_CHECK_S
            if now >= next_resync:
                self.clock.resync()
                next_resync = now + CLOCK_RESYNC_S
            if now >= next_stats:
                self._log_stats("stats")
                next_stats = now + self.settings.stats_interval
            if deadline is not None and now >= deadline:
                break
            if self.settings.count is not None and self.counters.events >= self.settings.count:
                break
            if self._on_tick:
                self._on_tick()
        self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.stop_event.set()
        self.exits.stop()
        self._reader.join(timeout=2 * POLL_MS / 1000 + 1)
        self._process_queue(timeout=0)
        self._emit_kills(self.correlator.drain())
        self._emit_ready(self.stops.drain())
        self._check_lost()
        self._log_stats("stopped")
        for sink in self.sinks:
            sink.close()
        if self.k8s is not None:
            self.k8s.stop()
        self.probes.close()

    # -- pipeline --------------------------------------------------------------

    def _process_queue(self, timeout: float) -> None:
        try:
            raw = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            self._process(raw)
            try:
                raw = self._queue.get_nowait()
            except queue.Empty:
                return

    def _process(self, raw: bytes | ProcExit) -> None:
        if isinstance(raw, ProcExit):
            self.correlator.on_proc_exit(raw)
            return
        self.counters.records += 1
        try:
            record = self.decoder.decode(raw)
        except DecodeError as exc:
            self.counters.decode_errors += 1
            self.log.warning("bad_record", error=str(exc))
            return
        try:
            self._emit_kills(self.correlator.feed(record, self.capture.on_record(record)))
        except Exception as exc:
            # One bad record must not stop the agent; say so once per kind of failure.
            self.counters.pipeline_errors += 1
            key = type(exc).__name__
            if key not in self._errors_logged:
                self._errors_logged.add(key)
                self.log.exception("pipeline_error", record=type(record).__name__)

    def _emit_kills(self, kills: list[Kill]) -> None:
        now = time.monotonic_ns()
        for kill in kills:
            event = self._enriched(kill)
            if event is not None:
                busy = self._busy_pods() if event.get("stop") else set()
                self._emit_ready(self.stops.offer(event, kill, now, busy))

    def _emit_ready(self, ready: list[tuple[Event, Kill]]) -> None:
        for event, kill in ready:
            self._emit(self._classified(event, kill))

    def _busy_pods(self) -> set[str]:
        return busy_pods(self.correlator.stopping())

    def _enriched(self, kill: Kill) -> Event | None:
        """build -> filter -> enrich; None when --pid/--cgroup leave it out."""
        event = self.builder.kill(kill)
        if self.filter and not self.filter.matches(event):
            self.counters.filtered += 1
            return None
        self.kubernetes.enrich(event)
        return event

    def _classified(self, event: Event, kill: Kill) -> Event:
        return with_verdict(event, classify(kill_facts(event, kill), self.rules))

    def event_of(self, kill: Kill) -> Event | None:
        """One kill's event, through every step but the stop step's wait (a stop's
        `stop.kind` stays null): the hot path the benchmarks and tests measure."""
        event = self._enriched(kill)
        return None if event is None else self._classified(event, kill)

    def _emit(self, event: Event) -> None:
        self.counters.events += 1
        for sink in self.sinks:
            sink.emit(event)

    def _check_lost(self) -> None:
        kernel = self.probes.lost_counts()
        new = {k: v - self._lost_seen.get(k, 0) for k, v in kernel.items()}
        new = {k: v for k, v in new.items() if v > 0}
        now = time.monotonic_ns()
        if new:
            self._lost_seen = kernel
            count = sum(new.values())
            self.counters.kernel_lost += count
            self._emit(self.builder.lost(now, "kernel_ring_buffer", count, _by_kind(new)))
            self.log.warning("records_lost", source="kernel_ring_buffer", count=count)
        self._check_commands()
        dropped = self.counters.queue_dropped - self._lost_seen.get(-1, 0)
        if dropped > 0:
            self._lost_seen[-1] = self.counters.queue_dropped
            self._emit(self.builder.lost(now, "agent_queue", dropped, {}))
            self.log.warning("records_lost", source="agent_queue", count=dropped)
        # What a sink had to drop from its queue (its consumer was slow or away),
        # by event type; the lost event itself goes to every sink.
        for sink in self.sinks:
            if isinstance(sink, Accounted):
                for name, by_type in sink.take_drops().items():
                    count = sum(by_type.values())
                    self.counters.sink_dropped += count
                    self._emit(self.builder.lost(now, f"sink:{name}", count, by_type))
                    self.log.warning("events_dropped", sink=name, count=count)

    def _check_commands(self) -> None:
        """Processes whose argv the full commands map could not keep: their
        events lose no field, but take the command line from /proc."""
        if self.commands is None:
            return
        full = self.commands.full()
        if full > self._commands_full_seen:
            self.log.warning(
                "commands_map_full",
                left_out=full - self._commands_full_seen,
                total=full,
                fallback="/proc while the process lives",
            )
            self._commands_full_seen = full

    def _log_stats(self, event: str) -> None:
        s = self.correlator.stats
        peak, size = self.probes.ring_peak() or (None, None)
        self.log.info(
            event,
            **asdict(self.counters),
            ring_buffer_peak_bytes=peak,
            ring_buffer_bytes=size,
            pending=self.correlator.pending_count(),
            evicted=s.evicted,
            # Signals folded into a kill already reported (the OOM killer's own
            # resend, a dying pid namespace's SIGKILL to a member already exiting).
            duplicates=s.duplicates,
            stops_forgotten=s.stops_forgotten,
            unmatched_deliver=s.unmatched_deliver,
            unmatched_exit=s.unmatched_exit,
            commands_full=self._commands_full_seen if self.commands else None,
            sinks={
                k: v for x in self.sinks if isinstance(x, Accounted) for k, v in x.stats().items()
            },
        )


def _by_kind(counts: dict[int, int]) -> dict[str, int]:
    return {KIND_NAMES.get(k, str(k)): v for k, v in counts.items()}
