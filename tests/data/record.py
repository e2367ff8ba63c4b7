"""Records raw ring-buffer records from this machine's kernel for the unit tests.

Re-record (as root, from the top of the source tree; it provokes real OOM kills
inside a 64 MiB memory cgroup, never node-wide):

    sudo .venv/bin/python tests/data/record.py [--out PATH]

It loads the real probes as the agent does, pinned to the tracepoint tier (the
one every kernel has; the kprobe tier would add an oom_kill record before each
OOM's signal), with SIGKILL and SIGTERM traced (so signal_deliver is attached:
SIGTERM needs it; a SIGKILL has no deliver record either way), and writes
``tests/data/records-<major.minor>.jsonl`` (or PATH), one JSON object per record,
in ring-buffer order:

    {"scenario": "<name>", "hex": "<the record's bytes>"}

Scenarios, each in its own cgroup or with its own processes:
  oom_hog           a Python hog in a 64 MiB memcg, OOM-killed by its own charge
  holder_allocator  an idle holder (oom_score_adj 1000, 36 MiB) and a separate
                    allocator (40 MiB) in one 64 MiB memcg: the holder is the
                    victim, the allocator the trigger
  sigkill           `kill -9` of a sleep
  sigterm           `kill -TERM` of a sleep

Only records that name a process started here (as target, victim or trigger),
and the cgroup_mkdir records of the cgroups made here, are kept: anything else
the node does meanwhile is left out.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MiB = 1 << 20

HOG = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
HOLDER = "import time\nb = bytearray(36 << 20)\nprint('held', flush=True)\ntime.sleep(120)\n"
ALLOCATOR = "b = bytearray(40 << 20)\n"


def _with_adj(adj: int, code: str) -> list[str]:
    prologue = f"open('/proc/self/oom_score_adj', 'w').write('{adj}')\n"
    return [sys.executable, "-c", prologue + code]


class Recorder:
    def __init__(self) -> None:
        from oomtrace.kernel import features, probes

        tracefs = features.find_tracefs(mount=True)
        plan = probes.plan(
            features.probe_kernel(tracefs),
            tier="tracepoint",
            signals=frozenset({signal.SIGKILL, signal.SIGTERM}),
        )
        self.probes = probes.Probes(plan)
        self.raw: list[bytes] = []
        self.probes.open(self.raw.append)

    def poll(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.probes.poll(100)

    def run(
        self, name: str, scenario: Callable[[set[int], set[str]], None]
    ) -> list[dict[str, str]]:
        """Runs one scenario; keeps the records naming its pids or its cgroups."""
        from oomtrace.kernel import records

        self.poll(0.3)
        start = len(self.raw)
        pids: set[int] = set()
        cgroups: set[str] = set()
        scenario(pids, cgroups)
        self.poll(1.5)
        decoder = records.RecordDecoder()
        kept = []
        for data in self.raw[start:]:
            rec = decoder.decode(data)
            if isinstance(rec, records.CgroupRecord):
                keep = Path(rec.path).name in cgroups
            elif isinstance(rec, records.SignalRecord):
                keep = rec.target_tid in pids
            elif isinstance(rec, records.MarkVictimRecord):
                keep = rec.victim_tid in pids or rec.trigger.tgid in pids
            elif isinstance(rec, records.OomKillRecord):
                keep = rec.victim_tgid in pids or rec.trigger.tgid in pids
            elif isinstance(rec, records.DeliverRecord | records.ExitRecord):
                keep = rec.victim.tgid in pids
            else:
                keep = False
            if keep:
                kept.append({"scenario": name, "hex": data.hex()})
        print(f"{name}: {len(kept)} records", file=sys.stderr)
        return kept


def oom_hog(pids: set[int], cgroups: set[str]) -> None:
    from tests.support.memcg import memcg

    with memcg(64 * MiB) as group:
        cgroups.add(group.path.name)
        hog = subprocess.Popen(_with_adj(0, HOG), preexec_fn=group.preexec)
        pids.add(hog.pid)
        assert hog.wait(timeout=60) == -signal.SIGKILL


def holder_allocator(pids: set[int], cgroups: set[str]) -> None:
    from tests.support.memcg import memcg

    with memcg(64 * MiB) as group:
        cgroups.add(group.path.name)
        holder = subprocess.Popen(
            _with_adj(1000, HOLDER), preexec_fn=group.preexec, stdout=subprocess.PIPE
        )
        pids.add(holder.pid)
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        allocator = subprocess.Popen(_with_adj(0, ALLOCATOR), preexec_fn=group.preexec)
        pids.add(allocator.pid)
        assert allocator.wait(timeout=60) == 0
        assert holder.wait(timeout=10) == -signal.SIGKILL


def _kill_sleep(sig: str, expected: int) -> Callable[[set[int], set[str]], None]:
    def scenario(pids: set[int], _cgroups: set[str]) -> None:
        victim = subprocess.Popen(["sleep", "300"])
        pids.add(victim.pid)
        time.sleep(0.1)
        subprocess.run(["kill", f"-{sig}", str(victim.pid)], check=True)
        assert victim.wait(timeout=10) == -expected

    return scenario


def main() -> None:
    release = ".".join(platform.release().split(".")[:2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=HERE / f"records-{release}.jsonl")
    out: Path = parser.parse_args().out
    sys.path.insert(0, str(ROOT))
    recorder = Recorder()
    lines: list[dict[str, str]] = []
    lines += recorder.run("oom_hog", oom_hog)
    lines += recorder.run("holder_allocator", holder_allocator)
    lines += recorder.run("sigkill", _kill_sleep("KILL", signal.SIGKILL))
    lines += recorder.run("sigterm", _kill_sleep("TERM", signal.SIGTERM))
    recorder.probes.close()
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"wrote {len(lines)} records to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
