"""Records raw ring-buffer records from this machine's kernel for the unit tests.

It loads the real probes as the agent does, with SIGKILL and SIGTERM traced (so
signal_deliver is attached: SIGTERM needs it; a SIGKILL has no deliver record
either way), runs the chosen scenarios and writes
``tests/data/records-<major.minor>.jsonl`` (or PATH), one JSON object per record,
in ring-buffer order:

    {"scenario": "<name>", "hex": "<the record's bytes>"}

Usage (as root, from the top of the source tree):

    record.py [--tier tracepoint|kprobe|auto] [--scenarios a,b,...]
              [--allow-node-oom] [--out PATH]

--tier defaults to the tracepoint tier, the one every kernel has; the kprobe
tier adds an oom_kill record (constraint, totalpages, chosen_points) to each
OOM. --scenarios defaults to oom_hog,holder_allocator,sigkill,sigterm.

Re-recording the files in tests/data:

  records-6.18.jsonl  a 6.18 kernel with the cgroup v1 memory controller; the
                      default scenarios, tracepoint tier. On such a machine:

      sudo .venv/bin/python tests/data/record.py

  records-6.1.jsonl   Debian 12's stock 6.1 kernel in the test VM (cgroup v2,
                      kprobes); kprobe tier, every scenario but holder_allocator
                      (there a second OOM kills the allocator too, right after
                      the holder, so the scenario would not be what it says).
                      The global OOM may only happen in the VM, so it runs
                      through the VM harness, which brings .vm-results/ back:

      sudo vagrant/run-suite -- 'PYTHONPATH=agent:. $OOMTRACE_VENV/bin/python \\
          tests/data/record.py --tier kprobe --allow-node-oom \\
          --scenarios oom_hog,sigkill,sigterm,group_kill,global_oom \\
          --out .vm-results/records-6.1.jsonl'
      cp .vm-results/records-6.1.jsonl tests/data/

Scenarios, each in its own cgroup or with its own processes:
  oom_hog           a Python hog in a 64 MiB memcg, OOM-killed by its own charge
  holder_allocator  an idle holder (oom_score_adj 1000, 36 MiB) and a separate
                    allocator (40 MiB) in one 64 MiB memcg: the holder is the
                    victim, the allocator the trigger
  sigkill           `kill -9` of a sleep
  sigterm           `kill -TERM` of a sleep
  group_kill        (cgroup v2) a 64 MiB memcg with memory.oom.group=1: three idle
                    holders (one at oom_score_adj 1000, 16 MiB; two at 0, 4 MiB)
                    and a growing allocator. The allocator triggers the OOM, the
                    preferred holder is the chosen victim, and the kernel kills
                    every member, the allocator included
  runtime_stop      a container runtime's stop, as runc makes it: kill(1) run under
                    the name `runc` (the OCI runtime's kill command calls kill(2)
                    from a process of that name) sends SIGQUIT, an image's stop
                    signal, to a sleep, which ends on it, and to a shell that
                    ignores it, then SIGKILL to the shell 1 s later. Added to an
                    existing file with --append:

      sudo .venv/bin/python tests/data/record.py --scenarios runtime_stop --append
  global_oom        a node-wide OOM: a hog in a cgroup without a limit grows
                    until the kernel kills it. Only with --allow-node-oom, on a
                    machine that may lose any process to it (the recorder itself
                    is protected with oom_score_adj -1000 meanwhile)

Only records that name a process started here (as target, victim or trigger),
and the cgroup_mkdir records of the cgroups made here, are kept: anything else
the node does meanwhile is left out. In a global OOM the trigger is whichever
task's allocation failed first, so a record may name another task as trigger.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.memcg import Memcg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MiB = 1 << 20

HOG = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
ALLOCATOR = "b = bytearray(40 << 20)\n"

Scenario = Callable[[set[int], set[str]], None]


def _holder(mib: int) -> str:
    return f"import time\nb = bytearray({mib} << 20)\nprint('held', flush=True)\ntime.sleep(120)\n"


def _with_adj(adj: int, code: str) -> list[str]:
    """argv for a Python process at `adj`. argv[0] is a plain "python3" (run with
    executable=sys.executable): the records keep argv, and no path of the
    recording machine belongs in them."""
    prologue = f"open('/proc/self/oom_score_adj', 'w').write('{adj}')\n"
    return ["python3", "-c", prologue + code]


def _start_holder(group: Memcg, adj: int, mib: int) -> subprocess.Popen[bytes]:
    """An idle process that holds `mib` MiB in `group`, returned once it does."""
    holder = subprocess.Popen(
        _with_adj(adj, _holder(mib)),
        executable=sys.executable,
        preexec_fn=group.preexec,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    return holder


@contextmanager
def _unkillable() -> Iterator[None]:
    """A node-wide OOM picks from every process; the recorder must outlive it to
    read the records. Children inherit the value until they set their own."""
    own = Path("/proc/self/oom_score_adj")
    before = own.read_text().strip()
    own.write_text("-1000")
    try:
        yield
    finally:
        own.write_text(before)


class Recorder:
    def __init__(self, tier: str) -> None:
        from oomtrace import runtimes
        from oomtrace.kernel import features, probes

        tracefs = features.find_tracefs(mount=True)
        plan = probes.plan(
            features.probe_kernel(tracefs),
            tier=tier,
            signals=frozenset({signal.SIGKILL, signal.SIGTERM}),
            stop_signals=runtimes.STOP_SIGNALS,
            stop_senders=runtimes.SIGNALLING_RUNTIMES,
        )
        self.probes = probes.Probes(plan)
        print(f"tier {plan.tier}: {', '.join(plan.hooks)}", file=sys.stderr)
        self.raw: list[bytes] = []
        self.probes.open(self.raw.append)

    def poll(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.probes.poll(100)

    def run(self, name: str, scenario: Scenario) -> list[dict[str, str]]:
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
        kinds: list[str] = []
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
                kinds.append(records.KIND_NAMES[int.from_bytes(data[:2], "little")])
        print(f"{name}: {len(kept)} records: {' '.join(kinds)}", file=sys.stderr)
        return kept


def oom_hog(pids: set[int], cgroups: set[str]) -> None:
    from tests.support.memcg import memcg

    with memcg(64 * MiB) as group:
        cgroups.add(group.path.name)
        hog = subprocess.Popen(
            _with_adj(0, HOG), executable=sys.executable, preexec_fn=group.preexec
        )
        pids.add(hog.pid)
        assert hog.wait(timeout=60) == -signal.SIGKILL


def holder_allocator(pids: set[int], cgroups: set[str]) -> None:
    from tests.support.memcg import memcg

    with memcg(64 * MiB) as group:
        cgroups.add(group.path.name)
        holder = _start_holder(group, 1000, 36)
        pids.add(holder.pid)
        allocator = subprocess.Popen(
            _with_adj(0, ALLOCATOR), executable=sys.executable, preexec_fn=group.preexec
        )
        pids.add(allocator.pid)
        assert allocator.wait(timeout=60) == 0
        assert holder.wait(timeout=10) == -signal.SIGKILL


def group_kill(pids: set[int], cgroups: set[str]) -> None:
    from tests.support.memcg import memcg

    with memcg(64 * MiB) as group:
        if group.version != 2:
            raise SystemExit("group_kill needs cgroup v2 (memory.oom.group)")
        cgroups.add(group.path.name)
        (group.path / "memory.oom.group").write_text("1")
        # The adj-1000 holder is the chosen victim whatever the others hold, so
        # the kprobe's victim differs from the trigger; the rest die as members.
        holders = [_start_holder(group, adj, mib) for adj, mib in ((1000, 16), (0, 4), (0, 4))]
        pids.update(h.pid for h in holders)
        allocator = subprocess.Popen(
            _with_adj(0, HOG), executable=sys.executable, preexec_fn=group.preexec
        )
        pids.add(allocator.pid)
        # Slow emulated machines take their time over the OOM report.
        assert allocator.wait(timeout=300) == -signal.SIGKILL
        for holder in holders:
            assert holder.wait(timeout=60) == -signal.SIGKILL


def global_oom(pids: set[int], cgroups: set[str]) -> None:
    from tests.support.memcg import memcg

    # A cgroup without a limit, so the kill is the node's (constraint none, no
    # OOM memcg) while the hog still has a cgroup of its own to be told apart.
    with _unkillable(), memcg(None) as group:
        cgroups.add(group.path.name)
        hog = subprocess.Popen(
            _with_adj(0, HOG), executable=sys.executable, preexec_fn=group.preexec
        )
        pids.add(hog.pid)
        # Filling all of RAM, page cache reclaim first, is slow under emulation.
        assert hog.wait(timeout=900) == -signal.SIGKILL


def _kill_sleep(sig: str, expected: int) -> Scenario:
    def scenario(pids: set[int], _cgroups: set[str]) -> None:
        victim = subprocess.Popen(["sleep", "300"])
        pids.add(victim.pid)
        time.sleep(0.1)
        subprocess.run(["kill", f"-{sig}", str(victim.pid)], check=True)
        assert victim.wait(timeout=10) == -expected

    return scenario


def runtime_stop(pids: set[int], _cgroups: set[str]) -> None:
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runc = Path(tmp) / "runc"
        shutil.copy(shutil.which("kill") or "/bin/kill", runc)
        ends = subprocess.Popen(["sleep", "300"])
        ignores = subprocess.Popen(["sh", "-c", "trap '' QUIT; sleep 300 & wait"])
        pids.update({ends.pid, ignores.pid})
        time.sleep(0.2)
        subprocess.run([str(runc), "-QUIT", str(ends.pid), str(ignores.pid)], check=True)
        assert ends.wait(timeout=10) == -signal.SIGQUIT
        time.sleep(1)
        assert ignores.poll() is None
        subprocess.run([str(runc), "-KILL", str(ignores.pid)], check=True)
        assert ignores.wait(timeout=10) == -signal.SIGKILL


SCENARIOS: dict[str, Scenario] = {
    "oom_hog": oom_hog,
    "holder_allocator": holder_allocator,
    "sigkill": _kill_sleep("KILL", signal.SIGKILL),
    "sigterm": _kill_sleep("TERM", signal.SIGTERM),
    "runtime_stop": runtime_stop,
    "group_kill": group_kill,
    "global_oom": global_oom,
}
DEFAULT_SCENARIOS = ("oom_hog", "holder_allocator", "sigkill", "sigterm")
NODE_WIDE = frozenset({"global_oom"})


def _scenario_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; known: {', '.join(SCENARIOS)}"
        )
    return names


def main() -> None:
    release = ".".join(platform.release().split(".")[:2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=HERE / f"records-{release}.jsonl")
    parser.add_argument("--tier", choices=("tracepoint", "kprobe", "auto"), default="tracepoint")
    parser.add_argument(
        "--scenarios",
        type=_scenario_list,
        default=list(DEFAULT_SCENARIOS),
        help=f"comma-separated, run in this order (default: {','.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--allow-node-oom",
        action="store_true",
        help="required for global_oom, which may kill any process on the machine",
    )
    parser.add_argument("--append", action="store_true", help="add to OUT instead of replacing it")
    args = parser.parse_args()
    node_wide = NODE_WIDE.intersection(args.scenarios)
    if node_wide and not args.allow_node_oom:
        parser.error(
            f"{', '.join(sorted(node_wide))} exhausts the node's memory; "
            "--allow-node-oom where any process may be lost to it"
        )
    if os.geteuid() != 0:
        parser.error("loading the probes and making cgroups needs root")
    sys.path.insert(0, str(ROOT))
    recorder = Recorder(args.tier)
    lines: list[dict[str, str]] = []
    for name in args.scenarios:
        lines += recorder.run(name, SCENARIOS[name])
    recorder.probes.close()
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if args.append and out.exists():
        text = out.read_text() + text
    out.write_text(text)
    print(f"wrote {len(lines)} records to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
