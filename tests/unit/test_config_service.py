"""The service side: sd_notify (READY, STATUS, WATCHDOG), SIGHUP reloads, the
metrics registry, and what the agent can still find under the systemd unit's
hardening (/proc/kallsyms masked, /proc with hidepid)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import generate_latest

from oomtrace.config import ConfigError, Endpoint, Settings
from oomtrace.kernel.features import find_symbol
from oomtrace.metrics import Metrics
from oomtrace.notify import Notifier
from oomtrace.pipeline import Agent
from oomtrace.sinks.fanout import SinkSet
from oomtrace.startup import hidepid
from oomtrace.systemd import Lifecycle


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(1)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(1)
    return messages


def test_notifier_outside_systemd_does_nothing() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    assert notifier.keepalive(0.0) is False


def test_ready_status_and_watchdog(notify_socket: socket.socket) -> None:
    env = {
        "NOTIFY_SOCKET": notify_socket.getsockname(),
        "WATCHDOG_USEC": "10000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    notifier = Notifier(env)
    assert notifier.watchdog_interval == 10.0
    notifier.ready("tracing")
    # WATCHDOG=1 at half the interval, however often the loop turns.
    pings = [notifier.keepalive(t / 10) for t in range(0, 120)]
    assert sum(pings) == 3  # at 0, 5 and 10 s
    notifier.reloading()
    notifier.stopping()
    messages = received(notify_socket)
    assert messages[0] == "READY=1\nSTATUS=tracing"
    assert messages[1:4] == ["WATCHDOG=1"] * 3
    assert messages[4].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert messages[5] == "STOPPING=1\nSTATUS=stopping"


def test_watchdog_is_for_the_main_process_only() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    notifier = Notifier(env)
    assert notifier.address == "\0x"  # abstract namespace
    assert notifier.watchdog_interval is None


class FakeAgent:
    """What Lifecycle uses of the Agent."""

    def __init__(self) -> None:
        self.alive = True
        self.filter: object = None
        self.probes = type("P", (), {"plan": type("Plan", (), {"tier": "kprobe", "hooks": [1, 2]})})
        self.counters = type("C", (), {"events": 7})

    def healthy(self) -> bool:
        return self.alive


def test_keepalive_only_while_the_reader_lives_and_reload(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "2000"}
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    settings = Settings(stdout=False, sinks=(("output", (first,)),))
    sinks = SinkSet.open(settings)
    answers: list[Settings | ConfigError] = [
        Settings(
            stdout=False, sinks=(("output", (first, second)),), pids=frozenset({42}), tier="kprobe"
        ),
        ConfigError("bad", key="tcp"),
    ]

    def reload() -> Settings:
        answer = answers.pop(0)
        if isinstance(answer, ConfigError):
            raise answer
        return answer

    lifecycle = Lifecycle(settings, sinks, Notifier(env), reload)
    agent = FakeAgent()
    lifecycle._agent = cast(Agent, agent)
    try:
        lifecycle.on_ready()
        assert received(notify_socket) == [
            f"READY=1\nSTATUS=tracing (kprobe tier, 2 hooks); 7 events; sinks: file:{first}"
        ]
        lifecycle.on_tick()
        assert "WATCHDOG=1" in received(notify_socket)
        # The kernel reader thread died: no more keepalives, systemd restarts us.
        agent.alive = False
        lifecycle.notifier._next_ping = 0.0
        lifecycle.on_tick()
        assert "WATCHDOG=1" not in received(notify_socket)

        lifecycle.on_sighup(1, None)  # the handler only sets a flag
        assert sinks.names == [f"file:{first}"]
        lifecycle.on_tick()
        assert sinks.names == [f"file:{first}", f"file:{second}"]
        assert lifecycle.reloads == 1
        assert lifecycle.settings.pids == {42}
        messages = received(notify_socket)
        assert messages[0].startswith("RELOADING=1")
        assert messages[1].startswith("READY=1\nSTATUS=tracing")

        lifecycle.on_sighup(1, None)
        lifecycle.on_tick()
        assert lifecycle.reloads == 1  # a bad file changes nothing
        assert sinks.names == [f"file:{first}", f"file:{second}"]
        assert received(notify_socket)[1] == (
            "READY=1\nSTATUS=reload failed, running as before: tcp: bad"
        )
    finally:
        sinks.close()


def test_metrics_count_what_the_pipeline_emits() -> None:
    stats = {"tcp:127.0.0.1:5140": {"dropped": 5, "delivered": 10, "queued": 2, "connected": 1}}
    metrics = Metrics(lambda: stats)
    pod = {"namespace": "shop", "pod": "web-7d9", "container": "web"}
    events: list[dict[str, Any]] = [
        {"type": "oom_kill", "victim": {"k8s": pod}, "oom": {"constraint": "memcg"},
         "enrichment": {"errors": []}},
        {"type": "oom_kill", "victim": {"k8s": pod}, "oom": {"constraint": "memcg"},
         "enrichment": {"errors": ["victim: gone", "sender: gone", "k8s: CRI unreachable"]}},
        {"type": "oom_kill", "victim": {"k8s": None}, "oom": {}, "enrichment": {"errors": []}},
        {"type": "signal", "signal": {"name": "SIGKILL"}, "cause": "runtime_stop"},
        {"type": "lost", "lost": {"source": "kernel_ring_buffer", "count": 4}},
        {"type": "lost", "lost": {"source": "sink:stdout", "count": 9}},
    ]  # fmt: skip
    for event in events:
        metrics.emit(event)
    text = generate_latest(metrics.registry).decode()
    assert (
        'oomtrace_oom_kills_total{constraint="memcg",container="web",namespace="shop",'
        'pod="web-7d9"} 2.0'
    ) in text
    assert (
        'oomtrace_oom_kills_total{constraint="unknown",container="",namespace="",pod=""} 1.0'
        in text
    )
    assert 'oomtrace_signals_total{cause="runtime_stop",signal="SIGKILL"} 1.0' in text
    assert 'oomtrace_events_lost_total{source="kernel_ring_buffer"} 4.0' in text
    assert 'oomtrace_events_lost_total{source="agent_queue"} 0.0' in text
    assert "sink:stdout" not in text  # a sink's drops are per sink, not lost records
    assert 'oomtrace_enrichment_errors_total{role="victim"} 1.0' in text
    assert 'oomtrace_enrichment_errors_total{role="sender"} 1.0' in text
    assert 'oomtrace_enrichment_errors_total{role="other"} 1.0' in text
    assert 'oomtrace_sink_dropped_total{sink="tcp:127.0.0.1:5140"} 5.0' in text
    assert 'oomtrace_sink_delivered_total{sink="tcp:127.0.0.1:5140"} 10.0' in text
    assert 'oomtrace_sink_queued{sink="tcp:127.0.0.1:5140"} 2.0' in text
    assert 'oomtrace_sink_connected{sink="tcp:127.0.0.1:5140"} 1.0' in text
    assert "oomtrace_agent_resident_memory_bytes " in text
    assert "process_resident_memory_bytes " in text


def test_metrics_endpoint_serves_and_closes() -> None:
    import urllib.request

    metrics = Metrics(dict)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.serve(Endpoint("127.0.0.1", port))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"# HELP oomtrace_oom_kills_total" in response.read()
    finally:
        metrics.close()


def test_hidepid_is_read_from_the_last_proc_mount(tmp_path: Path) -> None:
    plain = "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    hidden = "23 27 0:22 / /proc rw - proc proc rw,hidepid=invisible\n"
    off = "24 27 0:23 / /proc rw - proc proc rw,hidepid=0\n"
    other = "25 27 0:24 / /srv/proc rw - proc proc rw,hidepid=2\n"
    for text, expected in ((plain, False), (plain + hidden, True), (hidden + off, False)):
        path = tmp_path / "mountinfo"
        path.write_text(text + other)
        assert hidepid(str(path)) is expected
    assert hidepid(str(tmp_path / "missing")) is False


def test_kprobe_symbol_without_kallsyms(tmp_path: Path) -> None:
    kallsyms = tmp_path / "kallsyms"
    tracefs = tmp_path / "tracing"
    tracefs.mkdir()
    (tracefs / "available_filter_functions").write_text(
        "out_of_memory\noom_kill_process.constprop.0\noom_kill_process.cold\n"
    )
    # Masked /proc/kallsyms (systemd's ProtectKernelTunables=): tracefs answers.
    assert find_symbol("oom_kill_process", kallsyms, tracefs) == "oom_kill_process.constprop.0"
    assert find_symbol("oom_kill_process", kallsyms) is None
    # Readable kallsyms is the authority.
    kallsyms.write_text("0000000000000000 t oom_kill_process\n")
    assert find_symbol("oom_kill_process", kallsyms, tracefs) == "oom_kill_process"
    kallsyms.write_text("0000000000000000 t out_of_memory\n")
    assert find_symbol("oom_kill_process", kallsyms, tracefs) is None
