"""Kill storm: N children SIGKILLed as fast as possible, and at a sustained rate.
Every kill must come out as a `signal` event, or be counted in a `lost` event.

  burst      children forked in waves (all paused), then each wave killed in a
             tight loop: the ring buffer and the agent's queue take the brunt
  sustained  one child forked and killed every 1/RATE s for the duration

For each: kills made, events emitted for them, what is missing, what the agent
reported lost (kernel ring buffer and its own queue), the agent's CPU and RSS,
and how long after the last kill its last event came.

    sudo .venv/bin/python -m bench.killstorm [--short]
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import common


@dataclass
class Sampler:
    """The agent's RSS and CPU time, sampled every `interval` s while a storm runs."""

    pid: int
    interval: float = 0.25
    rss_kb: list[int] = field(default_factory=list)
    cpu: list[tuple[float, int]] = field(default_factory=list)  # (monotonic s, ticks)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.cpu.append((time.monotonic(), common.cpu_ticks(self.pid)))
        self.rss_kb.append(common.rss_kb(self.pid)["VmRSS"])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except (OSError, KeyError):
                return

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def cpu_percent(self, until: float | None = None) -> float:
        """Of one core, from the start to `until` (monotonic s; default: the end)."""
        samples = [s for s in self.cpu if until is None or s[0] <= until + self.interval]
        if len(samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = samples[0], samples[-1]
        return 100.0 * (c1 - c0) / common.CLK_TCK / (t1 - t0)


@dataclass
class StormResult:
    name: str
    made: int
    rate: float
    emitted: int
    exit_observed: int
    lost_kernel_signal: int
    lost_kernel_total: int
    lost_queue: int
    cpu_percent: float
    rss_max_mb: float
    drain_s: float
    latency_ms: list[float]
    stats: common.Json

    @property
    def missing(self) -> int:
        return self.made - self.emitted

    @property
    def counted_lost(self) -> int:
        """Lost records that may each hide one kill: signal records the kernel could
        not write, and anything the agent's queue dropped (its kind is unknown)."""
        return self.lost_kernel_signal + self.lost_queue

    @property
    def accounted(self) -> bool:
        return self.missing == 0 or 0 <= self.missing <= self.counted_lost


def read_kills(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    return [(pid, t) for pid, _, t in struct.iter_unpack("<IIQ", data)]


@dataclass
class LostCounts:
    """What the agent's `lost` events say: ring-buffer drops (all kinds, and the
    signal records among them) and records its own queue dropped."""

    kernel_signal: int = 0
    kernel_total: int = 0
    queue: int = 0

    def add(self, lost: common.Json) -> None:
        if lost["source"] == "kernel_ring_buffer":
            self.kernel_total += lost["count"]
            self.kernel_signal += lost["by_kind"].get("signal", 0)
        else:
            self.queue += lost["count"]


class Tally:
    """Counts, as the agent writes them, the `signal` events of one sender and what
    `lost` events say may hide such a kill; reads only what is new each time."""

    def __init__(self, agent: common.Agent, sender: int) -> None:
        self.agent = agent
        self.sender = sender
        self.emitted = 0
        self.counted = 0
        self._offset = 0

    def update(self) -> int:
        with self.agent.out_path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            if b'"lost"' in line or b'"signal"' in line:
                event = orjson.loads(line)
                if event["type"] == "signal" and event["sender"]["pid"] == self.sender:
                    self.emitted += 1
                elif event["type"] == "lost":
                    lost = event["lost"]
                    self.counted += lost["by_kind"].get("signal", 0)
                    if lost["source"] == "agent_queue":
                        self.counted += lost["count"]
        return self.emitted + self.counted


def wait_accounted(agent: common.Agent, sender: int, made: int, timeout: float) -> None:
    """Waits until every kill is an event or counted lost, or the agent has been
    quiet for longer than its exit wait, or the timeout."""
    tally = Tally(agent, sender)
    start = last = time.monotonic()
    lines = agent.lines_read()
    while tally.update() < made and time.monotonic() - start < timeout:
        if agent.lines_read() != lines:
            lines, last = agent.lines_read(), time.monotonic()
        elif time.monotonic() - last > 6.0:
            return
        time.sleep(0.1)


def peak_rate(kills: list[tuple[int, int]], wave: int) -> float:
    """Kills per second within the fastest wave (a burst), or overall."""
    best = 0.0
    for i in range(0, len(kills), wave):
        chunk = kills[i : i + wave]
        if len(chunk) > 1 and chunk[-1][1] > chunk[0][1]:
            best = max(best, (len(chunk) - 1) * 1e9 / (chunk[-1][1] - chunk[0][1]))
    return best


def storm(
    work: Path,
    name: str,
    n: int,
    rate: float,
    wave: int,
    *,
    agent_args: tuple[str, ...] = (),
    module: str = "oomtrace",
) -> StormResult:
    agent = common.Agent(work, *agent_args, module=module)
    agent.wait_ready()
    out = work / f"kills-{time.monotonic_ns()}.bin"
    try:
        with Sampler(agent.pid) as sampler:
            summary = common.run_stormer("storm", n, rate, wave, out, timeout=3600)
            storm_end = time.monotonic_ns()
            wait_accounted(agent, summary["pid"], summary["made"], timeout=300.0)
    finally:
        stats = agent.stop()
    kills = read_kills(out)
    sender = summary["pid"]
    emitted = observed = 0
    lost = LostCounts()
    last_event = storm_end
    latency_ms = []
    for read_ns, event in agent.events():
        kind = event["type"]
        if kind == "signal" and (event.get("sender") or {}).get("pid") == sender:
            emitted += 1
            last_event = max(last_event, read_ns)
            latency_ms.append((read_ns - event["ktime_ns"]) / 1e6)
            if ((event.get("victim") or {}).get("exit") or {}).get("observed"):
                observed += 1
        elif kind == "lost":
            lost.add(event["lost"])
    return StormResult(
        name=name,
        made=len(kills),
        rate=peak_rate(kills, wave) if rate <= 0 else len(kills) * 1e9 / summary["elapsed_ns"],
        emitted=emitted,
        exit_observed=observed,
        lost_kernel_signal=lost.kernel_signal,
        lost_kernel_total=lost.kernel_total,
        lost_queue=lost.queue,
        cpu_percent=sampler.cpu_percent(until=last_event / 1e9),
        rss_max_mb=max(sampler.rss_kb, default=0) / 1024,
        drain_s=(last_event - storm_end) / 1e9,
        latency_ms=latency_ms,
        stats=stats,
    )


def rows(results: list[StormResult]) -> list[list[object]]:
    out: list[list[object]] = []
    for r in results:
        out.append(
            [
                r.name,
                r.made,
                f"{r.rate:,.0f}/s",
                r.emitted,
                r.exit_observed,
                r.missing,
                f"{r.lost_kernel_signal} ({r.lost_kernel_total} records)",
                r.lost_queue,
                "yes" if r.accounted else "NO",
                f"{r.cpu_percent:.0f}%",
                f"{r.rss_max_mb:.0f}",
                f"{common.percentile(r.latency_ms, 50):.1f} / "
                f"{common.percentile(r.latency_ms, 99):.1f}",
                f"{r.drain_s:.1f}",
            ]
        )
    return out


HEADER = [
    "storm",
    "kills",
    "rate",
    "events",
    "with exit",
    "missing",
    "lost: ring buffer, signal (all)",
    "lost: agent queue",
    "all accounted",
    "agent CPU (of a core)",
    "agent max RSS MB",
    "kill to line p50 / p99 ms",
    "last event after storm s",
]


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.require_root()
    if args.short:
        plan = [("burst 2 000", 2000, 0.0, 1000), ("sustained 5 000/s x 2 s", 10_000, 5000.0, 1)]
    else:
        plan = [
            ("burst 20 000", 20_000, 0.0, 5000),
            ("sustained 5 000/s x 60 s", 300_000, 5000.0, 1),
        ]
    results = []
    with common.workdir() as work:
        for name, n, rate, wave in plan:
            results.append(storm(work, name, n, rate, wave))
    report = common.Report("Kill storm (bench.killstorm)")
    report.add("SIGKILLed children: events emitted vs kills made", HEADER, rows(results))
    report.note(
        "'missing' = kills without a `signal` event; 'all accounted' = missing is covered "
        "by lost signal records (ring buffer) plus agent-queue drops."
    )
    report.note(
        "burst: children forked in waves (up to 5 000 alive at once), each wave killed in a "
        "tight loop."
    )
    report.data = {
        "storms": [
            {
                "name": r.name,
                "made": r.made,
                "emitted": r.emitted,
                "missing": r.missing,
                "lost_kernel_signal": r.lost_kernel_signal,
                "lost_queue": r.lost_queue,
                "cpu_percent": r.cpu_percent,
                "rss_max_mb": r.rss_max_mb,
                "latency_p50_ms": common.percentile(r.latency_ms, 50),
                "latency_p99_ms": common.percentile(r.latency_ms, 99),
                "stats": r.stats,
            }
            for r in results
        ]
    }
    report.emit(args.json)


if __name__ == "__main__":
    main()
