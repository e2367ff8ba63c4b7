"""Prometheus metrics (--metrics-listen, off by default, 127.0.0.1 unless told).

The registry is fed like a sink: each event the pipeline emits counts once,
after the --pid/--cgroup filter, so the numbers match the event stream. Sink
state (queue, drops, delivery) and the agent's memory are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from oomtrace.config import Endpoint
from oomtrace.host.procfs import PAGE_SIZE
from oomtrace.schema import Event

UNKNOWN: Final = "unknown"
ROLES: Final = ("victim", "trigger", "sender")
# Lost records the kernel or the agent's own queue could not keep; a sink's
# drops are counted per sink instead (oomtrace_sink_dropped_total).
RECORD_SOURCES: Final = ("kernel_ring_buffer", "agent_queue")

SinkStats = Callable[[], dict[str, dict[str, int]]]


class Metrics:
    name = "metrics"

    def __init__(self, sink_stats: SinkStats) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.oom_kills = Counter(
            "oomtrace_oom_kills",
            "Processes killed by the kernel OOM killer, by the victim's pod and the OOM's "
            "constraint (memcg, cpuset, memory_policy, none; unknown without the kprobe tier).",
            ["namespace", "pod", "container", "constraint"],
            registry=r,
        )
        self.signals = Counter(
            "oomtrace_signals",
            "Traced signals sent to processes (outside OOM kills), by signal and cause.",
            ["signal", "cause"],
            registry=r,
        )
        self.stops = Counter(
            "oomtrace_container_stops",
            "Container processes stopped through the runtime, by pod and container: "
            "cause eviction or runtime_stop, kind pod (evictions, deletions) or container "
            "(restarts after a failed probe, CRI kills).",
            ["namespace", "pod", "container", "cause", "kind"],
            registry=r,
        )
        self.lost = Counter(
            "oomtrace_events_lost",
            "Kernel records lost before they became events: the BPF ring buffer or the "
            "agent's queue was full.",
            ["source"],
            registry=r,
        )
        self.gaps = Counter(
            "oomtrace_gaps",
            "Times nothing was traced (the agent stopped, a reboot, an upgrade that "
            "changed the record layout), by reason.",
            ["reason"],
            registry=r,
        )
        self.enrichment_errors = Counter(
            "oomtrace_enrichment_errors",
            "Facts an event could not be given (a process gone, the CRI unreachable...), "
            "by the process's role in the event.",
            ["role"],
            registry=r,
        )
        for source in RECORD_SOURCES:
            self.lost.labels(source=source)
        rss = Gauge(
            "oomtrace_agent_resident_memory_bytes",
            "The agent's own resident memory (RSS).",
            registry=r,
        )
        rss.set_function(_rss_bytes)
        ProcessCollector(registry=r)
        r.register(_SinkCollector(sink_stats))
        self._server: Any = None

    # The Sink protocol: the pipeline hands every emitted event here.
    def emit(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "oom_kill":
            k8s = (event.get("victim") or {}).get("k8s") or {}
            oom = event.get("oom") or {}
            self.oom_kills.labels(
                namespace=k8s.get("namespace") or "",
                pod=k8s.get("pod") or "",
                container=k8s.get("container") or "",
                constraint=oom.get("constraint") or UNKNOWN,
            ).inc()
        elif kind == "signal":
            sig = event.get("signal") or {}
            self.signals.labels(
                signal=sig.get("name") or UNKNOWN, cause=event.get("cause") or UNKNOWN
            ).inc()
            stop = event.get("stop")
            if stop:
                k8s = (event.get("victim") or {}).get("k8s") or {}
                self.stops.labels(
                    namespace=k8s.get("namespace") or "",
                    pod=k8s.get("pod") or "",
                    # The pause process has no container: it stands for the sandbox.
                    container=k8s.get("container") or ("POD" if k8s.get("sandbox") else ""),
                    cause=event.get("cause") or UNKNOWN,
                    kind=stop.get("kind") or UNKNOWN,
                ).inc()
        elif kind == "gap":
            self.gaps.labels(reason=(event.get("gap") or {}).get("reason") or UNKNOWN).inc()
        elif kind == "lost":
            lost = event.get("lost") or {}
            if lost.get("source") in RECORD_SOURCES:
                self.lost.labels(source=lost["source"]).inc(lost.get("count") or 0)
        for error in (event.get("enrichment") or {}).get("errors") or ():
            role = str(error).split(":", 1)[0]
            self.enrichment_errors.labels(role=role if role in ROLES else "other").inc()

    def serve(self, endpoint: Endpoint) -> None:
        """Starts the HTTP endpoint in a daemon thread; OSError when it cannot listen."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(
            endpoint.port, addr=endpoint.host, registry=self.registry
        )
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _SinkCollector(Collector):
    def __init__(self, sink_stats: SinkStats) -> None:
        self._stats = sink_stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats()
        families = {
            "dropped": CounterMetricFamily(
                "oomtrace_sink_dropped",
                "Events a sink dropped because its queue was full (or left at exit).",
                labels=["sink"],
            ),
            "delivered": CounterMetricFamily(
                "oomtrace_sink_delivered",
                "Events a sink's consumer has taken (read from its socket, or written).",
                labels=["sink"],
            ),
            "resent": CounterMetricFamily(
                "oomtrace_sink_resent",
                "Events written again after a connection broke before the consumer read them.",
                labels=["sink"],
            ),
        }
        queued = GaugeMetricFamily(
            "oomtrace_sink_queued", "Events waiting in a sink's queue.", labels=["sink"]
        )
        connected = GaugeMetricFamily(
            "oomtrace_sink_connected", "1 when a sink's consumer is connected.", labels=["sink"]
        )
        for sink, values in sorted(stats.items()):
            for key, family in families.items():
                family.add_metric([sink], values.get(key, 0))
            queued.add_metric([sink], values.get("queued", 0))
            connected.add_metric([sink], values.get("connected", 0))
        yield from families.values()
        yield queued
        yield connected


def _rss_bytes() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0.0
