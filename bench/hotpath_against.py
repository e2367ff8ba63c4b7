"""The whole pipeline per event, this tree against another revision, side by side
in one run: each round runs the same measurement once in a checkout of REV and
once in this tree, in turn, so the machine's drift falls on both alike.

The measurement is the agent's own `Agent._process` on one SIGKILL's two records
(signal, exit), sink included, with the victim gone (the storm case: /proc reads
fail fast) and alive (its /proc is read), built by each tree's own test helper:
as instructions under valgrind's callgrind, which a busy or throttled machine
does not change, and as wall time.

    .venv/bin/python -m bench.hotpath_against REV [--rounds 7]   (no root needed)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from bench import common

ROOT = Path(__file__).resolve().parent.parent

# Runs inside one tree (its agent/ and tests/ first on sys.path): the names that
# moved between revisions are looked up in both places.
CHILD = r"""
import io, json, subprocess, sys, time, types
from tests.unit.test_hot_path import GONE_PID, kill_records, _start_ns
from oomtrace.config import Settings
try:
    from oomtrace.pipeline import Agent
except ImportError:
    from oomtrace.service import Agent
from oomtrace.sinks.stream import StreamSink

seconds = float(sys.argv[1])
probes = types.SimpleNamespace(plan=types.SimpleNamespace(tier="tracepoint"), commands=lambda: None)

def per_event_us(victim, start_ns):
    agent = Agent(Settings(), probes, [StreamSink(io.BytesIO(), fmt="json")])
    batches = [kill_records(victim, start_ns) for _ in range(2048)]
    for raw in batches[0]:  # warm: the sender's snapshot is read once
        agent._process(raw)
    n, runs = 0, []
    for _ in range(5):
        begin, end = time.perf_counter(), time.perf_counter() + seconds / 5
        count = 0
        while time.perf_counter() < end:
            for raw in batches[n % len(batches)]:
                agent._process(raw)
            n += 1
            count += 1
        runs.append((time.perf_counter() - begin) / count * 1e6)
    assert agent.counters.events >= n, "the pipeline did not emit every event"
    return sorted(runs)[2]

sleeper = subprocess.Popen(["sleep", "300"])
try:
    alive = per_event_us(sleeper.pid, _start_ns(sleeper.pid))
finally:
    sleeper.kill()
    sleeper.wait()
gone = per_event_us(GONE_PID, 12345 * 10**7)
print(json.dumps({"gone": gone, "alive": alive}))
"""


# Processes N kills of one case, for an instruction count: callgrind's total for
# N = 1200 less that for N = 200 is 1000 kills, start-up and imports cancelled.
COUNT_CHILD = r"""
import io, subprocess, sys, time, types
from tests.unit.test_hot_path import GONE_PID, kill_records, _start_ns
from oomtrace.config import Settings
try:
    from oomtrace.pipeline import Agent
except ImportError:
    from oomtrace.service import Agent
from oomtrace.sinks.stream import StreamSink

case, n = sys.argv[1], int(sys.argv[2])
sleeper = None
if case == "alive":
    sleeper = subprocess.Popen(["sleep", "300"])
    time.sleep(0.2)
    victim, start_ns = sleeper.pid, _start_ns(sleeper.pid)
else:
    victim, start_ns = GONE_PID, 12345 * 10**7
probes = types.SimpleNamespace(plan=types.SimpleNamespace(tier="tracepoint"), commands=lambda: None)
agent = Agent(Settings(), probes, [StreamSink(io.BytesIO(), fmt="json")])
for batch in [kill_records(victim, start_ns) for _ in range(n)]:
    for raw in batch:
        agent._process(raw)
if sleeper is not None:
    sleeper.kill()
"""
COUNT_RUNS = (200, 1200)
CALLGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")


def instructions(tree: Path, case: str) -> float:
    """Instructions per kill under callgrind: the same for the same code, whatever
    else the machine does."""
    totals = []
    for n in COUNT_RUNS:
        done = subprocess.run(
            [*CALLGRIND, sys.executable, "-c", COUNT_CHILD, case, str(n)],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": f"{tree / 'agent'}{os.pathsep}{tree}"},
            capture_output=True,
            text=True,
            check=True,
            timeout=1200,
        )
        collected = [line for line in done.stderr.splitlines() if "Collected :" in line]
        totals.append(int(collected[-1].rsplit(":", 1)[1]))
    return (totals[1] - totals[0]) / (COUNT_RUNS[1] - COUNT_RUNS[0])


def measure(tree: Path, seconds: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'agent'}{os.pathsep}{tree}"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(seconds)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("rev", help="the revision to compare with, e.g. HEAD~1 or a commit")
    p.add_argument("--rounds", type=int, default=7, help="rounds of both trees (default 7)")
    args = p.parse_args()
    rounds = 1 if args.short else args.rounds
    seconds = 0.5 if args.short else 3.0
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.rev],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="oomtrace-against-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(base), rev], cwd=ROOT, check=True
        )
        try:
            counted = {
                name: {case: instructions(tree, case) for case in ("gone", "alive")}
                for name, tree in ((rev, base), ("this tree", ROOT))
            }
            results: dict[str, list[dict[str, float]]] = {rev: [], "this tree": []}
            for r in range(rounds):
                # ABAB, then BABA: neither tree always runs first.
                order = [(rev, base), ("this tree", ROOT)]
                for name, tree in order if r % 2 == 0 else reversed(order):
                    results[name].append(measure(tree, seconds))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False
            )
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for case in ("gone", "alive"):
        old = common.median([x[case] for x in results[rev]])
        new = common.median([x[case] for x in results["this tree"]])
        summary[case] = {"before_us": old, "after_us": new, "ratio": new / old}
        rows.append(
            [f"victim {case}", f"{old:.1f}", f"{new:.1f}", f"{(new / old - 1) * 100:+.1f}%"]
        )
    counts = []
    for case in ("gone", "alive"):
        old, new = counted[rev][case], counted["this tree"][case]
        summary[case] |= {"before_instructions": old, "after_instructions": new}
        counts.append(
            [f"victim {case}", f"{old:,.0f}", f"{new:,.0f}", f"{(new / old - 1) * 100:+.1f}%"]
        )
    report = common.Report("Hot path against a revision (bench.hotpath_against)")
    report.add(
        "Instructions per SIGKILL under callgrind (deterministic; 1000 kills)",
        ["case", f"{rev} (before)", f"{head} + working tree (after)", "after vs before"],
        counts,
    )
    report.add(
        f"Agent._process per SIGKILL (2 records -> 1 JSON line), us, median of {rounds} rounds",
        ["case", f"{rev} (before)", f"{head} + working tree (after)", "after vs before"],
        rows,
    )
    report.note(f"rounds alternate the trees' order; each round runs {seconds:.1f} s per case")
    report.data = {"rev": rev, "head": head, "rounds": rounds, "cases": summary}
    report.emit(args.json)


if __name__ == "__main__":
    main()
