"""Footprint: the agent's start-up time to `ready`, its RSS and CPU idle and under a
kill storm, next to the peers and next to the agent compiling in its own process
(bench.inprocess, as before oomtrace.kernel.loader); and where its memory goes.

  start-up   time from exec to the `ready` log (the peers: to their first output
             line), RSS right after it; R runs, setups alternating, medians
  idle       RSS and CPU (% of one core, from schedstat) over an idle window
  storm      5 000 SIGKILLs/s for a while (bench.killstorm): max RSS, CPU
  phases     RSS of one process through the agent's start-up, loading in a
             child (as shipped) and in-process (bcc imported, compile + attach,
             malloc_trim)
  mappings   the agent's largest mappings after `ready` (smaps)

    sudo .venv/bin/python -m bench.footprint [--short]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common, killstorm
from bench.sigpath import BPFTRACE_PROG, SIGGEN_FMT

MB = 1024.0


def cpu_ns(pid: int) -> int:
    """Time on CPU of all threads of a process (schedstat, ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue
    return total


def wakeups(pid: int) -> int:
    """Context switches of all threads: each is a wake-up (a timer, a poll) while idle."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


@dataclass
class Running:
    pid: int
    startup_s: float
    stop: Callable[[], object]


@dataclass
class Setup:
    name: str
    start: Callable[[Path], Running]
    startup_s: list[float] = field(default_factory=list)
    rss_ready_mb: list[float] = field(default_factory=list)
    idle_rss_mb: float = float("nan")
    idle_cpu_pct: float = float("nan")
    idle_wakeups: float = float("nan")
    error: str | None = None


def _agent(module: str) -> Callable[[Path], Running]:
    def start(work: Path) -> Running:
        agent = common.Agent(work, module=module)
        startup = agent.wait_ready()
        return Running(agent.pid, startup, agent.stop)

    return start


def _peer(name: str, cmd: list[str], ready: str, stub: bool) -> Callable[[Path], Running]:
    def start(work: Path) -> Running:
        env = {"BCC_KERNEL_SOURCE": str(common.stub_kernel_tree(work))} if stub else None
        t0 = time.monotonic()
        tracer = common.Tracer(work, name, cmd, ready, env=env)
        tracer.wait_ready()
        return Running(tracer.proc.pid, time.monotonic() - t0, tracer.stop)

    return start


def setups() -> list[Setup]:
    out = [
        Setup("oomtrace (as shipped: loader child)", _agent("oomtrace")),
        Setup("oomtrace compiling in-process (bench.inprocess)", _agent("bench.inprocess")),
        Setup(
            "trace-bpfcc signal_generate",
            _peer(
                "trace-bpfcc",
                ["trace-bpfcc", f"t:signal:signal_generate {SIGGEN_FMT}"],
                "PID",
                True,
            ),
        ),
    ]
    if shutil.which("bpftrace"):
        out.append(
            Setup(
                "bpftrace signal_generate",
                _peer("bpftrace", ["bpftrace", "-e", BPFTRACE_PROG], "READY", False),
            )
        )
        killsnoop_bt = shutil.which("killsnoop.bt")
        if killsnoop_bt:
            out.append(
                Setup(
                    "killsnoop.bt (bpftrace)",
                    _peer("killsnoop.bt", ["bpftrace", killsnoop_bt], "Tracing kill()", False),
                )
            )
    return out


def measure_setups(work: Path, runs: int, idle_s: float) -> list[Setup]:
    all_setups = setups()
    for run in range(runs):
        for setup in all_setups[run % len(all_setups) :] + all_setups[: run % len(all_setups)]:
            if setup.error:
                continue
            try:
                running = setup.start(work)
            except Exception as exc:
                setup.error = str(exc)[:200]
                continue
            try:
                setup.startup_s.append(running.startup_s)
                time.sleep(0.5)
                setup.rss_ready_mb.append(common.rss_kb(running.pid)["VmRSS"] / MB)
                if run == 0:
                    c0, w0, t0 = cpu_ns(running.pid), wakeups(running.pid), time.monotonic()
                    time.sleep(idle_s)
                    elapsed = time.monotonic() - t0
                    setup.idle_cpu_pct = 100 * (cpu_ns(running.pid) - c0) / 1e9 / elapsed
                    setup.idle_wakeups = (wakeups(running.pid) - w0) / elapsed
                    setup.idle_rss_mb = common.rss_kb(running.pid)["VmRSS"] / MB
            finally:
                running.stop()
    return all_setups


PHASE_SCRIPT = """
import ctypes, json, sys
def rss():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('VmRSS', 'RssAnon', 'RssFile'):
            out[k] = int(v.split()[0])
    return out
def say(phase):
    print(json.dumps({'phase': phase, **rss()}), flush=True)
in_process = sys.argv[1] == 'in-process'
say('python started')
import oomtrace.startup, oomtrace.pipeline, oomtrace.cri.resolver
say('agent modules imported')
from oomtrace.kernel import features, probes
p = probes.plan(features.probe_kernel(features.find_tracefs(mount=True)))
if in_process:
    import bcc
    say('bcc imported (LLVM, clang mapped)')
pr = probes.Probes(p, in_process=in_process)
say('programs compiled and attached' if in_process else 'child loaded them, fds handed over')
if in_process:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    say('after malloc_trim(0)')
got = []
pr.open(got.append)
pr.poll(10)
say('ring buffer mapped and polled')
pr.close()
"""


def phases(mode: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-c", PHASE_SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=common.ROOT,
        timeout=300,
    ).stdout
    return [{"mode": mode, **json.loads(line)} for line in out.splitlines() if line.startswith("{")]


def mappings(work: Path) -> list[tuple[str, int, int]]:
    agent = common.Agent(work)
    try:
        agent.wait_ready()
        time.sleep(1.0)
        return common.smaps_by_mapping(agent.pid, top=8)
    finally:
        agent.stop()


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.require_root()
    runs, idle_s, storm_s = (1, 2.0, 1) if args.short else (10, 30.0, 20)
    report = common.Report("Footprint (bench.footprint)")
    with common.workdir() as work:
        results = measure_setups(work, runs, idle_s)
        storms = {
            name: killstorm.storm(work, name, 5000 * storm_s, 5000.0, 1, module=module)
            for name, module in (
                ("oomtrace (as shipped: loader child)", "oomtrace"),
                ("oomtrace compiling in-process (bench.inprocess)", "bench.inprocess"),
            )
        }
        top = mappings(work)
    phase_rows = phases("loader child") + phases("in-process")
    rows = []
    for s in results:
        if s.error or not s.startup_s:
            rows.append([s.name, *["n/a"] * 7, s.error or "not run"])
            continue
        st = storms.get(s.name)
        rows.append(
            [
                s.name,
                f"{common.median(s.startup_s):.2f} (max {max(s.startup_s):.2f})",
                f"{common.median(s.rss_ready_mb):.0f}",
                f"{s.idle_rss_mb:.0f}",
                f"{s.idle_cpu_pct:.2f}%",
                f"{s.idle_wakeups:.0f}",
                f"{st.rss_max_mb:.0f}" if st else "-",
                f"{st.cpu_percent:.0f}%" if st else "-",
                f"{st.made - st.emitted} missing, {st.counted_lost} counted lost" if st else "-",
            ]
        )
    report.add(
        f"{runs} start-ups per setup (alternating), idle {idle_s:.0f} s, storm 5 000 kills/s "
        f"for {storm_s} s",
        [
            "setup",
            "start-up to ready s",
            "RSS at ready MB",
            "RSS idle MB",
            "CPU idle (of a core)",
            "wake-ups/s idle",
            "RSS max in storm MB",
            "CPU in storm",
            "storm kills",
        ],
        rows,
    )
    report.add(
        "Where the agent's RSS comes from: one process through start-up",
        ["load", "phase", "RSS MB", "anon MB", "file MB"],
        [
            [
                p["mode"],
                p["phase"],
                f"{p['VmRSS'] / MB:.0f}",
                f"{p['RssAnon'] / MB:.0f}",
                f"{p['RssFile'] / MB:.0f}",
            ]
            for p in phase_rows
        ],
    )
    report.add(
        "The agent's largest mappings after ready (smaps)",
        ["mapping", "RSS MB", "anon MB"],
        [[name, f"{kb / MB:.1f}", f"{anon / MB:.1f}"] for name, kb, anon in top],
    )
    report.note(
        "peers' start-up is to their first line of output (bcc's trace prints its header once "
        "attached; the bpftrace programs print from BEGIN)."
    )
    report.data = {
        "setups": {
            s.name: {
                "startup_s": common.median(s.startup_s) if s.startup_s else None,
                "rss_ready_mb": common.median(s.rss_ready_mb) if s.rss_ready_mb else None,
                "idle_rss_mb": s.idle_rss_mb,
                "idle_cpu_pct": s.idle_cpu_pct,
                "idle_wakeups_per_s": s.idle_wakeups,
            }
            for s in results
        },
        "phases": phase_rows,
        "storms": {
            k: {"rss_max_mb": v.rss_max_mb, "cpu": v.cpu_percent} for k, v in storms.items()
        },
    }
    report.emit(args.json)


if __name__ == "__main__":
    main()
