"""Exec-path overhead: what oomtrace's `commands` map costs every process created on
the node, in time and in kernel memory.

commands.bpf.c copies each new process's argv (its first 256 bytes) into the
`commands` hash map at sched_process_exec, copies the parent's entry to each new
process at sched_process_fork, and the sched_process_exit program deletes it.
Two C loops (bench/csrc/execloop.c):

  fork+exec   fork(), execve("/bin/true") in the child with more than 256 bytes
              of argv, waitpid(): every hook runs, and the exec program copies
              the whole 256 bytes
  fork        fork(), _exit(0) in the child, waitpid(): the fork and exit hooks

each timed with no tracer and with the agent as shipped. Setups alternate within
each round, the agent's run between two runs with no tracer; its ratio to their
mean is reported as the median over the rounds. Then the kernel's own BPF
statistics (kernel.bpf_stats_enabled) give the run time per call of each of
oomtrace's programs during each loop, and the agent's fdinfo gives the map's
kernel memory (memlock) at `ready` and with 2 000 more processes alive.

    sudo .venv/bin/python -m bench.execpath [--short] [--rounds N]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench.footprint import cpu_ns

CSRC = Path(__file__).resolve().parent / "csrc" / "execloop.c"
BPF_MAP_TYPE_HASH = 1
MAP_NAME = "commands"
# oomtrace's hooks that each iteration of a loop runs. SIGCHLD goes through
# signal_generate, whose program returns at its in-kernel filter.
LOOPS = {
    "fork+exec": "fork (raw), exec, exit, signal_generate",
    "fork": "fork (raw), exit, signal_generate",
}
# Programs that ran fewer times than this per iteration ran for other processes.
MIN_RUNS = 0.5
MB = 1024.0


def execloop() -> Path:
    """bench/csrc/execloop.c compiled once per source version into the temp dir,
    as common.stormer() builds the stormer."""
    source = CSRC.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"oomtrace-bench-{digest}" / "execloop"
    if out.exists():
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("a C compiler (cc) is needed to build bench/csrc/execloop.c")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(CSRC)], check=True)
    tmp.rename(out)
    return out


def exec_image() -> str:
    """What the fork+exec loop's children exec: /bin/true, a small dynamically
    linked program as most execs are, else the loop's own `exit`."""
    return "/bin/true" if Path("/bin/true").exists() else str(execloop())


def ns_per_iteration(loop: str, n: int) -> float:
    args = [str(execloop()), "exec" if loop == "fork+exec" else "fork", str(n)]
    if loop == "fork+exec":
        args.append(exec_image())
    done = subprocess.run(args, check=True, capture_output=True, text=True, timeout=900)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["elapsed_ns"]) / n


@dataclass
class Timings:
    """One loop's figures in one setup."""

    ns: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    agent_cpu: list[float] = field(default_factory=list)  # % of one core


def measure(counts: dict[str, int], rounds: int) -> dict[str, dict[str, Timings]]:
    """Each agent run sits between two runs with no tracer, and its ratios are to
    their mean: the machine's speed drifts over a round by more than the cost
    measured."""
    out = {loop: {"no tracer": Timings(), "oomtrace": Timings()} for loop in counts}

    def baseline() -> dict[str, float]:
        got = {loop: ns_per_iteration(loop, n) for loop, n in counts.items()}
        for loop, ns in got.items():
            out[loop]["no tracer"].ns.append(ns)
        return got

    with common.workdir() as work:
        for loop, n in counts.items():
            ns_per_iteration(loop, max(1, n // 10))  # build and warm up
        # Each round's closing run with no tracer opens the next round.
        before = baseline()
        for _ in range(rounds):
            agent = common.Agent(work)
            got: dict[str, tuple[float, float]] = {}
            try:
                agent.wait_ready()
                for loop, n in counts.items():
                    cpu0, t0 = cpu_ns(agent.pid), time.monotonic_ns()
                    ns = ns_per_iteration(loop, n)
                    cpu = 100 * (cpu_ns(agent.pid) - cpu0) / (time.monotonic_ns() - t0)
                    got[loop] = (ns, cpu)
            finally:
                agent.stop()
            after = baseline()
            for loop, (ns, cpu) in got.items():
                t = out[loop]["oomtrace"]
                t.ns.append(ns)
                t.agent_cpu.append(cpu)
                t.ratios.append(ns / ((before[loop] + after[loop]) / 2))
            before = after
    return out


# -- the kernel's own statistics ---------------------------------------------------


def _bpftool(*args: str) -> Any:
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        raise FileNotFoundError("bpftool")
    done = subprocess.run(
        [bpftool, "-j", *args], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(done.stdout or "null")


def other_tracers() -> int:
    """BPF programs on the process tracepoints that this run did not load
    (another agent, a test suite): they tax every setup alike."""
    try:
        links = _bpftool("perf") or []
    except (OSError, subprocess.SubprocessError, ValueError):
        return -1
    hooks = {"sched_process_fork", "sched_process_exec", "sched_process_exit"}
    return sum(1 for link in links if link.get("tracepoint") in hooks)


def _prog_stats(ids: dict[int, str]) -> dict[int, tuple[int, int]]:
    """(run_cnt, run_time_ns) of the given programs."""
    return {
        p["id"]: (int(p.get("run_cnt", 0)), int(p.get("run_time_ns", 0)))
        for p in _bpftool("prog", "show")
        if p["id"] in ids
    }


def program_costs(work: Path, counts: dict[str, int], reps: int) -> list[dict[str, Any]]:
    """Each of oomtrace's programs that ran during each loop: runs per iteration
    and ns per run, from kernel.bpf_stats_enabled, as differences of the kernel's
    counters across the loop (other processes' forks count too). Each loop runs
    `reps` times, alternating; medians and ranges over those runs."""
    if shutil.which("bpftool") is None:
        return []
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    agent = common.Agent(work)
    # (loop, prog id) -> per run of the loop: (runs per iteration, ns per run)
    seen: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        agent.wait_ready()
        perf = _bpftool("perf")
        hooks = {link["prog_id"]: link["tracepoint"] for link in perf if link["pid"] == agent.pid}
        names = {p["id"]: p.get("name", "?") for p in _bpftool("prog", "show") if p["id"] in hooks}
        knob.write_text("1")
        for _ in range(reps):
            for loop, n in counts.items():
                start = _prog_stats(hooks)
                ns_per_iteration(loop, n)
                end = _prog_stats(hooks)
                for prog_id in hooks:
                    runs = end[prog_id][0] - start[prog_id][0]
                    if runs >= MIN_RUNS * n:
                        run_ns = end[prog_id][1] - start[prog_id][1]
                        seen.setdefault((loop, prog_id), []).append((runs / n, run_ns / runs))
    finally:
        knob.write_text(old)
        agent.stop()
    rows = []
    order = list(counts)
    for (loop, prog_id), got in sorted(
        seen.items(), key=lambda kv: (order.index(kv[0][0]), hooks[kv[0][1]])
    ):
        per_iteration = common.median([r for r, _ in got])
        per_run = [ns for _, ns in got]
        rows.append(
            {
                "loop": loop,
                "hook": hooks[prog_id],
                "name": names[prog_id],
                "runs_per_iteration": per_iteration,
                "ns_per_run": common.median(per_run),
                "ns_per_run_min": min(per_run),
                "ns_per_run_max": max(per_run),
                "ns_per_iteration": common.median([r * ns for r, ns in got]),
                "loop_runs": len(got),
            }
        )
    return rows


# -- the map's memory --------------------------------------------------------------


def _fdinfo(pid: int, fd: str) -> dict[str, str]:
    out = {}
    try:
        text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def commands_map(pid: int) -> tuple[str, int]:
    """(fd, map id) of the `commands` map among process pid's fds: a hash map by
    its fdinfo, named `commands` by the kernel's map info."""
    for fd in sorted(os.listdir(f"/proc/{pid}/fdinfo"), key=int):
        info = _fdinfo(pid, fd)
        if info.get("map_type") != str(BPF_MAP_TYPE_HASH) or "map_id" not in info:
            continue
        map_id = int(info["map_id"])
        if _bpftool("map", "show", "id", str(map_id)).get("name") == MAP_NAME:
            return fd, map_id
    raise RuntimeError(f"no hash map named {MAP_NAME!r} among the agent's fds")


def live_processes() -> int:
    return sum(1 for d in os.listdir("/proc") if d.isdigit())


@dataclass
class MemoryPoint:
    label: str
    processes: int
    entries: int
    memlock: int  # bytes
    max_entries: int
    rss_kb: int


def memory_point(label: str, pid: int, fd: str, map_id: int) -> MemoryPoint:
    info = _fdinfo(pid, fd)
    return MemoryPoint(
        label=label,
        processes=live_processes(),
        entries=len(_bpftool("map", "dump", "id", str(map_id)) or []),
        memlock=int(info["memlock"]),
        max_entries=int(info["max_entries"]),
        rss_kb=common.rss_kb(pid)["VmRSS"],
    )


def memory(work: Path, extra: int) -> tuple[list[MemoryPoint], int | None, int]:
    """The map's memlock and the agent's RSS right after `ready`, then with `extra`
    more processes alive, started after the agent so that each has an entry from
    its exec. They are `cat`s reading one pipe: closing its write end ends them,
    and so does this bench's own death."""
    agent = common.Agent(work)
    children: list[subprocess.Popen[bytes]] = []
    read_end, write_end = os.pipe()
    try:
        agent.wait_ready()
        seeded = next(
            (e.get("commands_seeded") for e in agent.logs if e.get("event") == "ready"), None
        )
        fd, map_id = commands_map(agent.pid)
        points = [memory_point("right after ready", agent.pid, fd, map_id)]
        for _ in range(extra):
            children.append(subprocess.Popen(["cat"], stdin=read_end, stdout=subprocess.DEVNULL))
        os.close(read_end)
        read_end = -1
        # Popen returns once the child has exec'd, so each has its entry now.
        points.append(memory_point(f"with {extra:,} more processes", agent.pid, fd, map_id))
    finally:
        if read_end >= 0:
            os.close(read_end)
        os.close(write_end)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        agent.stop()
    return points, seeded, len(children)


# -- the report --------------------------------------------------------------------


def _middle_half(ratios: list[float]) -> str:
    """The 25th to 75th percentile of the rounds' ratios, as overheads: how far
    the machine's drift spreads them."""
    low, high = (common.percentile(ratios, q) for q in (25, 75))
    return f"{(low - 1) * 100:+.1f}% to {(high - 1) * 100:+.1f}%"


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, help="rounds of both setups (default 15; --short 1)")
    args = p.parse_args()
    common.require_root()
    short, full = {"fork+exec": 200, "fork": 500}, {"fork+exec": 3000, "fork": 10000}
    counts = short if args.short else full
    rounds = args.rounds or (1 if args.short else 15)
    extra = 200 if args.short else 2000
    others = other_tracers()
    results = measure(counts, rounds)
    with common.workdir() as work:
        costs = program_costs(work, counts, 1 if args.short else 5)
        points, seeded, started = memory(work, extra)

    report = common.Report("Exec-path overhead and the commands map (bench.execpath)")
    rows: list[list[object]] = []
    for loop, by_setup in results.items():
        for setup, t in by_setup.items():
            shipped = setup == "oomtrace"
            rows.append(
                [
                    loop,
                    setup,
                    LOOPS[loop] + "; proc connector" if shipped else "-",
                    f"{common.median(t.ns) / 1000:.1f}",
                    f"{(common.median(t.ratios) - 1) * 100:+.1f}%" if shipped else "+0.0%",
                    _middle_half(t.ratios) if shipped else "-",
                    f"{common.median(t.agent_cpu):.1f}%" if shipped else "-",
                ]
            )
    report.add(
        f"{counts['fork+exec']:,} fork+exec of {exec_image()} and {counts['fork']:,} forks, "
        f"{rounds} rounds, medians",
        [
            "loop",
            "setup",
            "hooks",
            "us per iteration",
            "vs no tracer",
            "rounds' middle half",
            "agent CPU (of a core)",
        ],
        rows,
    )
    if costs:
        cost_rows: list[list[object]] = [
            [
                c["loop"],
                f"{c['hook']} ({c['name']})",
                f"{c['runs_per_iteration']:.2f}",
                f"{c['ns_per_run']:.0f} ({c['ns_per_run_min']:.0f} to {c['ns_per_run_max']:.0f})",
                f"{c['ns_per_iteration']:.0f}",
            ]
            for c in costs
        ]
        for loop in counts:
            total = sum(c["ns_per_iteration"] for c in costs if c["loop"] == loop)
            cost_rows.append([loop, "all of oomtrace's programs", "-", "-", f"{total:.0f}"])
        loop_runs = max(c["loop_runs"] for c in costs)
        report.add(
            f"oomtrace's BPF programs during each loop (kernel.bpf_stats_enabled), "
            f"{loop_runs} runs of each loop, medians",
            ["loop", "program", "runs per iteration", "ns per run (range)", "ns per iteration"],
            cost_rows,
        )
    else:
        report.note("bpftool is not installed: no per-program figures.")
    first, second = points
    grown = second.entries - first.entries
    per_entry = (second.memlock - first.memlock) / grown if grown else float("nan")
    report.add(
        f"The commands map's kernel memory (memlock in the agent's fdinfo) and the agent's "
        f"RSS, at ready and with {started:,} more processes",
        ["point", "live processes", "map entries", "memlock KiB", "RSS MB"],
        [
            [
                pt.label,
                pt.processes,
                pt.entries,
                f"{pt.memlock / 1024:.0f}",
                f"{pt.rss_kb / MB:.1f}",
            ]
            for pt in points
        ]
        + [
            [
                "difference",
                f"{second.processes - first.processes:+d}",
                f"{grown:+d}",
                f"{(second.memlock - first.memlock) / 1024:+.0f} ({per_entry:.0f} bytes per entry)",
                f"{(second.rss_kb - first.rss_kb) / MB:+.1f}",
            ]
        ],
    )
    fixed = first.memlock - first.entries * per_entry
    report.note(
        f"memlock = {fixed / 1024:.0f} KiB whatever the entries (the hash table and its "
        f"buckets, sized for {first.max_entries:,} entries at most) + {per_entry:.0f} bytes "
        f"per entry: {(fixed + first.max_entries * per_entry) / MB / MB:.1f} MiB when full."
    )
    report.note(
        "'agent CPU': the agent's threads' time on CPU (schedstat) over the loop. Its "
        "proc connector socket is sent a message for every fork, exec and exit."
    )
    report.note(
        f"map entries: keys in the map (bpftool map dump); the agent seeded {seeded} from "
        "/proc at start. Live processes include kernel threads, which have no entry."
    )
    if others > 0:
        report.note(f"{others} BPF programs of other processes were on fork, exec or exit.")
    report.data = {
        "other_tracers": others,
        "counts": counts,
        "rounds": rounds,
        "exec_image": exec_image(),
        "loops": {
            loop: {
                setup: {
                    "ns_per_iteration": common.median(t.ns),
                    "ratio": common.median(t.ratios) if t.ratios else None,
                    "agent_cpu_pct": common.median(t.agent_cpu) if t.agent_cpu else None,
                    "rounds_ns": t.ns,
                    "rounds_ratio": t.ratios,
                }
                for setup, t in by_setup.items()
            }
            for loop, by_setup in results.items()
        },
        "programs": costs,
        "memory": [pt.__dict__ for pt in points],
        "commands_seeded": seeded,
    }
    report.emit(args.json)


if __name__ == "__main__":
    main()
