"""Latency: from the kill (the sender's CLOCK_MONOTONIC just before kill(2)) to the
event's line read from the agent's stdout, p50 and p99.

  host process   a victim outside any pod: no CRI lookup at all
  pod, CRI warm  a victim in a pod's container cgroup that the agent's CRI cache
                 already lists (it refreshed after the cgroup appeared)
  pod, CRI cold  the container became known to the runtime after the agent's last
                 list: the event path asks ContainerStatus before it writes the line

The runtime is bench.fakecri, a CRI server on a unix socket that answers from
memory. Kills are 20 ms apart, so each measures an idle agent; modes alternate
round by round.

    sudo .venv/bin/python -m bench.latency [--short]
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.support.memcg import Memcg, memcg

from bench import common
from bench.fakecri import FakeCri

SPACING_S = 0.02


@dataclass
class Mode:
    name: str
    kills: dict[int, int] = field(default_factory=dict)  # victim pid -> kill ns
    latencies_ms: list[float] = field(default_factory=list)
    named: int = 0
    events: int = 0


def _spawn(group: Memcg) -> subprocess.Popen[bytes]:
    # The bench runs grpc threads; preexec only writes one cgroup file.
    return subprocess.Popen(["sleep", "600"], preexec_fn=group.preexec)  # noqa: PLW1509


def _kill_all(
    mode: Mode,
    victims: list[subprocess.Popen[bytes]],
    before_each: Sequence[Callable[[], None] | None],
) -> None:
    for victim, prepare in zip(victims, before_each, strict=True):
        if prepare is not None:
            prepare()
        t = time.monotonic_ns()
        os.kill(victim.pid, signal.SIGKILL)
        mode.kills[victim.pid] = t
        time.sleep(SPACING_S)
    for victim in victims:
        victim.wait()


def run(per_round: int, rounds: int) -> tuple[list[Mode], dict[str, int]]:
    modes = {n: Mode(n) for n in ("host process", "pod, CRI warm", "pod, CRI cold")}
    with (
        common.workdir() as work,
        FakeCri(work / "cri.sock") as cri,
        memcg(None, "oomtrace-bench") as top,
    ):
        runtime = cri.runtime
        pod = top.child("kubepods").child("besteffort").child(f"pod{runtime.pod_uid}")
        agent = common.Agent(work, "--cri-endpoint", cri.endpoint)
        try:
            agent.wait_ready()
            time.sleep(1.0)
            for rnd in range(rounds):
                # host
                victims = [_spawn(top) for _ in range(per_round)]
                time.sleep(0.2)
                _kill_all(modes["host process"], victims, [None] * per_round)
                # warm: the runtime knows the containers before their cgroups appear;
                # the cgroup_mkdir nudges the agent to list them.
                ids = [uuid.uuid4().hex * 2 for _ in range(per_round)]
                for n, cid in enumerate(ids):
                    runtime.add_container(cid, f"warm-{rnd}-{n}")
                groups = [pod.child(cid) for cid in ids]
                victims = [_spawn(g) for g in groups]
                time.sleep(1.5)
                _kill_all(modes["pod, CRI warm"], victims, [None] * per_round)
                # cold: cgroups (and their nudged list) first, the runtime learns each
                # container just before it is killed.
                ids = [uuid.uuid4().hex * 2 for _ in range(per_round)]
                groups = [pod.child(cid) for cid in ids]
                victims = [_spawn(g) for g in groups]
                time.sleep(1.5)
                prepares = [
                    (lambda cid=cid, n=n, rnd=rnd: runtime.add_container(cid, f"cold-{rnd}-{n}"))
                    for n, cid in enumerate(ids)
                ]
                _kill_all(modes["pod, CRI cold"], victims, prepares)
            time.sleep(1.0)
        finally:
            agent.stop()
        by_pid = {pid: mode for mode in modes.values() for pid in mode.kills}
        for read_ns, event in agent.events():
            victim = event.get("victim") or {}
            mode = by_pid.get(int(victim.get("pid") or 0))
            if event["type"] != "signal" or mode is None:
                continue
            mode.events += 1
            mode.latencies_ms.append((read_ns - mode.kills[victim["pid"]]) / 1e6)
            if (victim.get("k8s") or {}).get("pod") == "bench-pod":
                mode.named += 1
        calls = dict(runtime.calls)
    return list(modes.values()), calls


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.require_root()
    per_round, rounds = (10, 1) if args.short else (50, 4)
    modes, calls = run(per_round, rounds)
    report = common.Report("Latency, kill to line on stdout (bench.latency)")
    rows = []
    for m in modes:
        rows.append(
            [
                m.name,
                f"{len(m.kills)}",
                f"{m.events}",
                f"{common.percentile(m.latencies_ms, 50):.2f}",
                f"{common.percentile(m.latencies_ms, 99):.2f}",
                f"{max(m.latencies_ms, default=float('nan')):.2f}",
                f"{m.named}" if m.name != "host process" else "-",
            ]
        )
    report.add(
        f"SIGKILL of an idle sleep, {SPACING_S * 1000:.0f} ms apart, {rounds} rounds",
        ["victim", "kills", "events", "p50 ms", "p99 ms", "max ms", "named by the CRI"],
        rows,
    )
    report.note(f"CRI calls the fake runtime answered: {calls}")
    report.data = {
        m.name: {
            "p50_ms": common.percentile(m.latencies_ms, 50),
            "p99_ms": common.percentile(m.latencies_ms, 99),
            "n": len(m.latencies_ms),
        }
        for m in modes
    }
    report.emit(args.json)


if __name__ == "__main__":
    main()
