"""The Prometheus endpoint after real kills: OOM kills in memory cgroups, SIGKILL and
SIGTERM from this process, a cgroup.kill, and a sink that has to drop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kernel.test_service_shipper import wait_until
from tests.support.agent import AgentProcess
from tests.support.memcg import Memcg, memcg
from tests.support.shipper import free_port

pytestmark = pytest.mark.kernel

MiB = 1 << 20
HOG = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def victims() -> Iterator[Memcg]:
    with memcg(None, prefix="oomtrace-metrics") as group:
        yield group


def provoke(victims: Memcg, agent: AgentProcess) -> int:
    """Three OOM kills, four SIGKILLs and two SIGTERMs from this process, and a
    cgroup.kill (cgroup v2) or one more SIGKILL (v1). Returns how many
    cgroup.kills there were."""
    for n in range(3):
        # Each OOM in a memcg of its own under the victims' cgroup.
        child = victims.child(f"hog{n}")
        child.set_limit(48 * MiB)
        hog = subprocess.Popen([sys.executable, "-c", HOG], preexec_fn=child.preexec)
        assert hog.wait(timeout=60) == -signal.SIGKILL
        agent.collect(0.1)
    # On cgroup v2 a cgroup with child memcgs holds no processes itself.
    plain = victims.child("plain")
    for sig, count in ((signal.SIGKILL, 4), (signal.SIGTERM, 2)):
        for _ in range(count):
            proc = subprocess.Popen(["sleep", "300"], preexec_fn=plain.preexec)
            proc.send_signal(sig)
            assert proc.wait(timeout=10) == -sig
    group = victims.child("killed")
    proc = subprocess.Popen(["sleep", "300"], preexec_fn=group.preexec)
    if group.version == 1:  # no cgroup.kill there
        proc.kill()
        proc.wait()
        return 0
    (group.path / "cgroup.kill").write_text("1")
    assert proc.wait(timeout=10) == -signal.SIGKILL
    return 1


def test_metrics_count_kills_by_label(victims: Memcg) -> None:
    port = free_port()
    dead_port = free_port()  # nothing listens: that sink can only queue and drop
    agent = AgentProcess(
        "--metrics-listen",
        f"127.0.0.1:{port}",
        "--signals",
        "KILL,TERM",
        "--cgroup",
        victims.cgroup_path,
        "--cri-endpoint",
        "none",
        "--tcp",
        f"127.0.0.1:{dead_port}",
        "--sink-queue-size",
        "3",
    )
    try:
        agent.wait_ready()
        _, before = scrape(port)
        kills = provoke(victims, agent)

        def counted() -> bool:
            _, s = scrape(port)
            return (
                sum(v for (n, _), v in s.items() if n == "oomtrace_oom_kills_total") >= 3
                and sum(v for (n, _), v in s.items() if n == "oomtrace_signals_total") >= 6 + kills
            )

        assert wait_until(counted, 30)
        # The dead sink's drops are read at scrape time.
        dead = f"tcp:127.0.0.1:{dead_port}"
        assert wait_until(
            lambda: (value(scrape(port)[1], "oomtrace_sink_dropped_total", sink=dead) or 0) > 0, 10
        )
        text, after = scrape(port)
    finally:
        assert agent.stop() == 0, agent.logs[-5:]

    print("\n" + "\n".join(line for line in text.splitlines() if line.startswith("oomtrace_")))
    oom = {"namespace": "", "pod": "", "container": ""}
    # The tracepoint tier does not see the OOM's constraint; the kprobe tier does
    # (checked in the VM, where it is `memcg`).
    tier = agent.wait_ready()["tier"]
    constraint = "memcg" if tier == "kprobe" else "unknown"
    assert value(after, "oomtrace_oom_kills_total", **oom, constraint=constraint) == 3
    assert value(before, "oomtrace_oom_kills_total", **oom, constraint=constraint) is None
    assert value(after, "oomtrace_signals_total", signal="SIGKILL", cause="process") == 4 + (
        1 - kills
    )
    assert value(after, "oomtrace_signals_total", signal="SIGTERM", cause="process") == 2
    if kills:
        assert value(after, "oomtrace_signals_total", signal="SIGKILL", cause="cgroup_kill") == 1
    # Nothing else was counted: the OOM killer's own SIGKILL is the oom_kill.
    signals = {k: v for k, v in after.items() if k[0] == "oomtrace_signals_total"}
    assert sum(signals.values()) == 6 + 1

    events = [e for e in agent.events if e["type"] in ("oom_kill", "signal")]
    assert len(events) == 3 + 6 + 1
    for source in ("kernel_ring_buffer", "agent_queue"):
        assert value(after, "oomtrace_events_lost_total", source=source) == 0
    assert value(after, "oomtrace_sink_dropped_total", sink="stdout") == 0
    assert value(after, "oomtrace_sink_connected", sink="stdout") == 1
    assert value(after, "oomtrace_sink_connected", sink=dead) == 0
    dropped = value(after, "oomtrace_sink_dropped_total", sink=dead)
    assert dropped is not None and dropped >= len(events) - 3
    assert (value(after, "oomtrace_agent_resident_memory_bytes") or 0) > 10 * MiB
    assert "# HELP oomtrace_enrichment_errors_total" in text
    errors = sum(len(e["enrichment"]["errors"]) for e in events)
    counted_errors = sum(v for k, v in after.items() if k[0] == "oomtrace_enrichment_errors_total")
    assert counted_errors == errors


def test_metrics_port_in_use_stops_start_up() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent = AgentProcess("--metrics-listen", f"127.0.0.1:{port}")
        code = agent.proc.wait(timeout=60)
        agent.stop()
    assert code == 2
    messages = [e.get("line") for e in agent.logs if e.get("event") == "raw"]
    assert messages == [
        f"oomtrace: metrics_listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
