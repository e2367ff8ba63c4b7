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
from oomtrace.capture import NO_EVIDENCE, Capture
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
from oomtrace.kernel.records import KIND_NAMES, CgroupRecord, DecodeError, RecordDecoder
from oomtrace.kubernetes import KubernetesEnricher
from oomtrace.nodefacts import NodeWatch
from oomtrace.resume import KillKey, ResumePoint
from oomtrace.schema import Cause, Event
from oomtrace.sinks import Accounted, Sink
from oomtrace.state import StateFile, gap_reason
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
# The longest the loop works through queued records before its periodic checks.
BATCH_S: Final = 0.25
CLOCK_RESYNC_S: Final = 60.0
# How often the ring buffer position a restarted agent resumes from is stored
# in the pinned `resume` map: one bpf(2) call each time.
COMMIT_S: Final = 0.05


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
    # Kills whose records were written while no agent read them (a restart).
    recovered: int = 0
    # Kills a previous agent had written out, read again after its restart.
    already_reported: int = 0
    # Records the fresh programs wrote while the previous ones still traced.
    overlap_skipped: int = 0
    gaps: int = 0


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
        on_stopping: Callable[[], None] | None = None,
        state: StateFile | None = None,
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
        self._queue: queue.Queue[bytes | tuple[bytes, int] | ProcExit] = queue.Queue(
            maxsize=settings.queue_size
        )
        self.exits = ExitWatcher(self._enqueue)
        self.exits.watched = self.correlator.watched_tgids
        self._reader = threading.Thread(target=self._read, name="ringbuf-reader", daemon=True)
        self._on_ready = on_ready
        # Called once per event-loop turn (sd_notify watchdog, SIGHUP reload).
        self._on_tick = on_tick
        self._on_stopping = on_stopping
        self._stop_signal: int | None = None
        self._lost_seen: dict[int, int] = {}
        self._errors_logged: set[str] = set()
        self.commands = probes.commands()
        self._commands_full_seen = 0
        # What the kernel side held at start (kernel/probes.Resume); tests pass
        # probes without it.
        self.resume = getattr(probes, "resume", None)
        self.pinned = bool(getattr(probes, "pinned", False))
        self.state = state
        self._started_ktime = self.resume.started_ktime if self.resume else 0
        self._skip_before_ktime = self.resume.skip_before_ktime if self.resume else 0
        if self.resume is not None:
            self._lost_seen = dict(self.resume.lost_baseline)
        # Set once reading starts, when the kernel side is pinned.
        self.resume_point: ResumePoint | None = None
        self._next_commit = 0.0
        # The kill of the event _emit() is given, when it is one.
        self._emitting_kill: KillKey | None = None

    # -- threads ---------------------------------------------------------------

    def _enqueue(self, raw: bytes | ProcExit) -> None:
        try:
            self._queue.put_nowait(raw)
        except queue.Full:
            self.counters.queue_dropped += 1

    def _enqueue_record(self, raw: bytes) -> None:
        """The ring buffer reader's callback when the kernel side is pinned: the
        record and where it ends, for the resume point."""
        try:
            self._queue.put_nowait((raw, self.probes.record_end()))
        except queue.Full:
            self.counters.queue_dropped += 1

    def _read(self) -> None:
        while not self.stop_event.is_set():
            self.probes.poll(POLL_MS)

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Also a signal handler's: it only sets flags. A log line written here
        could deadlock, since a handler runs between two bytecodes of the main
        thread, which may be holding the log writer's lock just then."""
        self._stop_signal = signum
        self.stop_event.set()

    def healthy(self) -> bool:
        """The kernel reader still polls: the watchdog keepalive depends on it."""
        return self._reader.is_alive()

    def run(self) -> int:
        self.paths.warm()
        if self.k8s is not None:
            self.k8s.start()
        self._start_reading()
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
            **self._resume_fields(),
        )
        self._report_gaps()
        if self.state is not None:
            # From now on a start that finds no pins has a gap to report.
            self.state.traced(pinned=self.pinned, force=True)
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
            drained = self._process_queue(timeout=IDLE_TICK_S if idle else TICK_S, budget_s=BATCH_S)
            # Deadlines are judged only once what is queued has been read: a
            # record still in the queue may be the one a waiting kill waits for
            # (the next member of an OOM run, an exit), and the clock has moved
            # on while the backlog was worked through.
            if drained:
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
            if now >= self._next_commit:
                self._commit()
                self._next_commit = now + COMMIT_S
            if self.state is not None:
                self.state.traced(pinned=self.pinned)
            if self._on_tick:
                self._on_tick()
        self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.stop_event.set()
        if self._stop_signal is not None:
            self.log.info("stopping", signal=signal.Signals(self._stop_signal).name)
        if self._on_stopping:
            self._on_stopping()
        self.exits.stop()
        self._reader.join(timeout=2 * POLL_MS / 1000 + 1)
        self._process_queue(timeout=0)
        # Before the drain: the kills it writes out unfinished are marked
        # reported, and the next agent reads their records again (their exits,
        # to come) without reporting them twice.
        self._commit()
        if self.state is not None:
            self.state.traced(pinned=self.pinned, force=True)
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

    def _process_queue(self, timeout: float, budget_s: float | None = None) -> bool:
        """Processes what is queued; with ``budget_s``, for at most that long, so
        that the loop's periodic work (the watchdog's keepalive among it) goes on
        while a resumed agent works through a backlog of thousands of records.
        False when it stopped with records still queued."""
        try:
            raw = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return True
        until = None if budget_s is None else time.monotonic() + budget_s
        done = 0
        while True:
            self._process(raw)
            done += 1
            if until is not None and done % 64 == 0 and time.monotonic() >= until:
                return False
            try:
                raw = self._queue.get_nowait()
            except queue.Empty:
                return True

    def _start_reading(self) -> None:
        if self.resume is not None and self.resume.previous is not None:
            # Fresh programs replaced others of the same layout: what those wrote
            # comes first, before the reader starts on the new ring buffer.
            drained = self.probes.drain_previous(self._process_previous)
            self.log.info("previous_ring_buffer_read", records=drained)
        # Unpinned, a record's end in the ring is of no use: the plain record.
        self.probes.open(self._enqueue_record if self.pinned else self._enqueue)
        if self.pinned:
            peak = self.probes.ring_peak()
            start = self.resume.commit if self.resume and self.resume.commit else 0
            self.resume_point = ResumePoint(self.probes, start, peak[1] if peak else 0, self.sinks)
        self._reader.start()

    def _process_previous(self, raw: bytes) -> None:
        self._process(raw, previous=True)

    def _process(
        self, item: bytes | tuple[bytes, int] | ProcExit, *, previous: bool = False
    ) -> None:
        if isinstance(item, ProcExit):
            self.correlator.on_proc_exit(item)
            return
        raw, end = item if isinstance(item, tuple) else (item, 0)
        self.counters.records += 1
        try:
            record = self.decoder.decode(raw)
        except DecodeError as exc:
            self.counters.decode_errors += 1
            self.log.warning("bad_record", error=str(exc))
            return
        if end and self.resume_point is not None:
            self.resume_point.read(record.ktime_ns, end)
        if not previous and record.ktime_ns < self._skip_before_ktime:
            # Also in the previous programs' ring buffer, read already.
            self.counters.overlap_skipped += 1
            return
        if record.ktime_ns < self._started_ktime and not isinstance(record, CgroupRecord):
            # Written while no agent read: what /proc says now is not what it
            # said then (the processes are gone, their pids maybe reused).
            evidence = NO_EVIDENCE
        else:
            evidence = self.capture.on_record(record)
        try:
            self._emit_kills(self.correlator.feed(record, evidence))
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
            if kill.ktime_ns < self._started_ktime:
                kill.recovered = True
                if self.pinned and self.probes.was_reported(kill.ktime_ns, kill.victim_tid):
                    self.counters.already_reported += 1
                    continue
                self.counters.recovered += 1
            event = self._enriched(kill)
            if event is not None:
                busy = self._busy_pods() if event.get("stop") else set()
                self._emit_ready(self.stops.offer(event, kill, now, busy))

    def _emit_ready(self, ready: list[tuple[Event, Kill]]) -> None:
        for event, kill in ready:
            classified = self._classified(event, kill)
            self._emitting_kill = (kill.ktime_ns, kill.victim_tid)
            self._emit(classified)

    # -- restarts ----------------------------------------------------------------

    def _commit(self) -> None:
        if self.resume_point is not None:
            self.resume_point.commit(
                self.correlator.oldest_pending_ktime(), self.stops.holding(), self._lost_seen
            )

    def _resume_fields(self) -> dict[str, object]:
        r = self.resume
        if r is None:
            return {}
        return {
            "pinned": r.pins is not None,
            "resumed": r.resumed,
            "backlog_records": r.backlog_records if r.resumed else None,
            "backlog_bytes": r.backlog_bytes if r.resumed else None,
            "reread_bytes": r.rewound_bytes if r.resumed else None,
        }

    def _report_gaps(self) -> None:
        """Every time nothing was traced, as a `gap` event: a layout the agent
        cannot read, or a start that found no kernel side after an earlier run."""
        r = self.resume
        previous = self.state.read() if self.state is not None else None
        now_ns, now_k = time.time_ns(), time.monotonic_ns()
        since = previous.last_traced_ns if previous is not None else None
        gaps: list[tuple[int | None, int | None, str]] = []
        if r is not None:
            gaps += [(since, d.records, "layout_changed") for d in r.dropped]
            if r.rewind_failed:
                self.log.warning(
                    "unfinished_kills_lost",
                    reason="the kernel reused the ring buffer room of kills the previous "
                    "agent had not written out",
                )
        carried = r is not None and (r.resumed or r.previous is not None or r.dropped)
        if previous is not None and not carried:
            reason = gap_reason(previous, resumed=False)
            if reason is not None:
                gaps.append((since, None, reason))
        for start, unread, reason in gaps:
            self.counters.gaps += 1
            self._emit(
                self.builder.gap(now_k, start_ns=start, end_ns=now_ns, unread=unread, reason=reason)
            )
            self.log.warning("gap", since=start, unread_records=unread, reason=reason)

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
        kill, self._emitting_kill = self._emitting_kill, None
        self.counters.events += 1
        if self.resume_point is not None:
            self.resume_point.emitted(kill)
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
