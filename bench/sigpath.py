"""Signal-path overhead: what a tracer costs every signal on the node, traced or not.

A C loop sends itself SIGUSR1 with kill(2) and handles it, N times: every call
goes through signal_generate and signal_deliver. oomtrace does not trace SIGUSR1
(it filters in the kernel); the peers have no filter and report every one:

  no tracer          the baseline
  oomtrace           the agent as shipped (SIGKILL only)
  killsnoop-bpfcc    bcc's killsnoop: kprobes on the kill syscall
  killsnoop.bt       bpftrace's killsnoop: syscalls:sys_{enter,exit}_kill
  trace-bpfcc        t:signal:signal_generate, printing every signal
  bpftrace           tracepoint:signal:signal_generate, printing every signal

Setups alternate within each round (each tracer started, loop run, tracer
stopped), each between two runs with no tracer; the ratio to the mean of
those two is reported as the median over the rounds.
Then the kernel's own BPF statistics (kernel.bpf_stats_enabled) give the run
time of each of oomtrace's programs per call.

    sudo .venv/bin/python -m bench.sigpath [--short] [--rounds N]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import common

SIGGEN_FMT = '"%d %d", args->sig, args->pid'
BPFTRACE_PROG = (
    'BEGIN { printf("READY\\n"); } '
    'tracepoint:signal:signal_generate { printf("%d %d %d\\n", pid, args->sig, args->pid); }'
)


@dataclass
class Setup:
    name: str
    hooks: str
    start: Callable[[Path], Callable[[], int]] | None  # returns stop(); None = no tracer
    ns_per_call: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    reported: list[float] = field(default_factory=list)  # lines or events per call
    error: str | None = None


def _agent(work: Path) -> Callable[[], int]:
    agent = common.Agent(work)
    agent.wait_ready()

    def stop() -> int:
        stats = agent.stop()
        return int(stats.get("records", 0))

    return stop


def _peer(
    name: str, cmd: list[str], ready: str, *, stub: bool
) -> Callable[[Path], Callable[[], int]]:
    def start(work: Path) -> Callable[[], int]:
        env = {"BCC_KERNEL_SOURCE": str(common.stub_kernel_tree(work))} if stub else None
        tracer = common.Tracer(work, name, cmd, ready, env=env)
        tracer.wait_ready()
        # bpftrace runs BEGIN before it attaches the other probes: wait for the
        # loop's signals to show up in the output before timing anything.
        before = tracer.path.stat().st_size
        end = time.monotonic() + 30
        while tracer.path.stat().st_size == before and time.monotonic() < end:
            common.run_stormer("sigloop", 2000)
            time.sleep(0.2)
        return tracer.stop

    return start


def setups() -> list[Setup]:
    out = [
        Setup("no tracer", "-", None),
        Setup(
            "oomtrace",
            "signal_generate (raw, in-kernel filter), sched_process_exit",
            _agent,
        ),
        Setup(
            "killsnoop-bpfcc",
            "kprobe + kretprobe on the kill syscall",
            _peer("killsnoop-bpfcc", ["killsnoop-bpfcc"], "PID", stub=True),
        ),
    ]
    killsnoop_bt = shutil.which("killsnoop.bt")
    if killsnoop_bt:
        out.append(
            Setup(
                "killsnoop.bt (bpftrace)",
                "tracepoints syscalls:sys_enter_kill + sys_exit_kill, a line per kill",
                _peer("killsnoop.bt", ["bpftrace", killsnoop_bt], "Tracing kill()", stub=False),
            )
        )
    else:
        out.append(Setup("killsnoop.bt (bpftrace)", "-", None, error="bpftrace is not installed"))
    out.append(
        Setup(
            "trace-bpfcc",
            "t:signal:signal_generate, no filter, a line per signal",
            _peer(
                "trace-bpfcc",
                ["trace-bpfcc", f"t:signal:signal_generate {SIGGEN_FMT}"],
                "PID",
                stub=True,
            ),
        )
    )
    if shutil.which("bpftrace"):
        out.append(
            Setup(
                "bpftrace",
                "tracepoint:signal:signal_generate, no filter, a line per signal",
                _peer("bpftrace", ["bpftrace", "-e", BPFTRACE_PROG], "READY", stub=False),
            )
        )
    else:
        out.append(Setup("bpftrace", "-", None, error="bpftrace is not installed"))
    return out


def _why_not(setup: Setup, error: str) -> str:
    if setup.name == "killsnoop-bpfcc" and not common.kernel_has_kprobes():
        return (
            "cannot run here: it attaches a kprobe to the kill syscall and this kernel has "
            f"no kprobes (CONFIG_KPROBES off); bcc said: {error[:140]}"
        )
    return f"cannot run here: {error[:200]}"


def measure(calls: int, rounds: int, reps: int) -> tuple[list[Setup], dict[str, float]]:
    """Each tracer's runs sit between two runs with no tracer, and its ratio is to
    their mean: the machine's drift over a round (minutes) is larger than the
    few percent measured."""
    all_setups = setups()
    none = next(s for s in all_setups if s.start is None)
    tracers = [s for s in all_setups if s.start is not None]

    def baseline() -> float:
        t = float(common.run_stormer("sigloop", calls)["elapsed_ns"]) / calls
        none.ns_per_call.append(t)
        none.reported.append(0.0)
        return t

    with common.workdir() as work:
        common.run_stormer("sigloop", 10000)  # build and warm up
        for rnd in range(rounds):
            # Rotate the order so no tracer always runs first or last.
            order = tracers[rnd % len(tracers) :] + tracers[: rnd % len(tracers)]
            before = baseline()
            for setup in order:
                if setup.error is not None or setup.start is None:
                    continue
                try:
                    stop = setup.start(work)
                except Exception as exc:
                    setup.error = _why_not(setup, str(exc))
                    continue
                times = []
                try:
                    for _ in range(reps):
                        result = common.run_stormer("sigloop", calls)
                        times.append(result["elapsed_ns"] / calls)
                finally:
                    reported = stop()
                after = baseline()
                setup.ns_per_call.extend(times)
                setup.reported.append(reported / (calls * reps))
                setup.ratios.append(common.median(times) / ((before + after) / 2))
                before = after
        prog_cost = program_costs(work, calls)
    return all_setups, prog_cost


def program_costs(work: Path, calls: int) -> dict[str, float]:
    """ns per run of each of oomtrace's BPF programs, from kernel.bpf_stats_enabled."""
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return {}
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    agent = common.Agent(work)
    try:
        agent.wait_ready()
        knob.write_text("1")
        common.run_stormer("sigloop", calls)
        progs = json.loads(
            subprocess.run(
                [bpftool, "-j", "prog", "show"], capture_output=True, text=True, check=True
            ).stdout
        )
        perf = json.loads(
            subprocess.run(
                [bpftool, "-j", "perf"], capture_output=True, text=True, check=True
            ).stdout
        )
    finally:
        knob.write_text(old)
        agent.stop()
    mine = {link["prog_id"]: link["tracepoint"] for link in perf if link["pid"] == agent.pid}
    costs = {}
    for prog in progs:
        hook = mine.get(prog["id"])
        if hook and prog.get("run_cnt"):
            costs[f"{hook} ({prog['run_cnt']} runs)"] = prog["run_time_ns"] / prog["run_cnt"]
    return costs


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, help="rounds of every setup (default 7; --short 1)")
    args = p.parse_args()
    common.require_root()
    calls = 100_000 if args.short else 1_000_000
    rounds = args.rounds or (1 if args.short else 7)
    reps = 1
    others = common.other_signal_tracers()
    results, prog_cost = measure(calls, rounds, reps)
    report = common.Report("Signal-path overhead (bench.sigpath)")
    base = next(s for s in results if s.name == "no tracer")
    rows = []
    for s in results:
        if s.error is not None or not s.ns_per_call:
            rows.append([s.name, s.hooks, "n/a", "n/a", "n/a", "cannot run (see below)"])
            report.note(f"{s.name}: {s.error or 'not run'}")
            continue
        overhead = (common.median(s.ratios) - 1) * 100 if s.name != "no tracer" else 0.0
        rows.append(
            [
                s.name,
                s.hooks,
                f"{common.median(s.ns_per_call):.0f}",
                f"{overhead:+.1f}%",
                f"{common.median(s.reported):.2f}",
                "",
            ]
        )
    report.add(
        f"{calls:,} kill(2) of a handled SIGUSR1, {rounds} rounds x {reps} runs, medians",
        ["setup", "hooks", "ns per kill(2)", "vs no tracer", "reported per kill", "note"],
        rows,
    )
    if prog_cost:
        report.add(
            "oomtrace's BPF programs during the loop (kernel.bpf_stats_enabled)",
            ["program", "ns per run"],
            [[k, f"{v:.0f}"] for k, v in prog_cost.items()],
        )
    report.note(
        "'reported per kill': lines the peer printed, or records oomtrace's programs sent "
        "to userspace, per kill(2) of the loop (1.00 = one per signal)."
    )
    if others > 0:
        report.note(f"{others} BPF programs of other processes were on signal tracepoints.")
    report.data = {
        "calls": calls,
        "rounds": rounds,
        "baseline_ns": common.median(base.ns_per_call),
        "setups": {
            s.name: {
                "ns_per_call": common.median(s.ns_per_call) if s.ns_per_call else None,
                "ratio": common.median(s.ratios) if s.ratios else None,
                "error": s.error,
            }
            for s in results
        },
        "program_ns": prog_cost,
    }
    report.emit(args.json)


if __name__ == "__main__":
    main()
