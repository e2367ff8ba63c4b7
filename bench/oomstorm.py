"""OOM storm: N memory-limited cgroups, one allocating process in each, all started
at once, so N memcg OOM kills come in quick succession. Every kill must come out as
an `oom_kill` event naming the right cgroup. The kernel log of the same run is read
too (/dev/kmsg): its OOM report is rate limited, so it names the memcg of only some.

Only memcg OOMs: each hog is confined to its own limited cgroup before it allocates.

    sudo .venv/bin/python -m bench.oomstorm [--short]
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass

from tests.support.memcg import memcg

from bench import common

MiB = 1 << 20
LIMIT = 16 * MiB


class Kmsg:
    """The kernel log from now on, read from /dev/kmsg."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def read(self) -> list[str]:
        lines = []
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # overwritten while we read: go on with the next
                continue
            if not record:
                break
            text = record.decode(errors="replace")
            lines.append(text.split(";", 1)[-1].rstrip("\n"))
        os.close(self.fd)
        return lines


@dataclass
class OomResult:
    cgroups: int
    hogs_killed: int
    storm_s: float
    events: int
    right_cgroup: int
    right_memcg: int
    lost: int
    dmesg_killed: int
    dmesg_memcg_named: int
    dmesg_suppressed: int
    cpu_percent: float
    stats: common.Json


def run(n: int) -> OomResult:
    with common.workdir() as work, memcg(None, "oomtrace-bench-oom") as top:
        groups = []
        for i in range(n):
            group = top.child(f"c{i:03d}")
            group.set_limit(LIMIT)
            groups.append(group)
        listing = work / "cgroups.txt"
        listing.write_text("".join(f"{g.path / 'cgroup.procs'}\n" for g in groups))
        agent = common.Agent(work)
        agent.wait_ready()
        kmsg = Kmsg()
        ticks0 = common.cpu_ticks(agent.pid)
        t0 = time.monotonic()
        try:
            out = work / "hogs.txt"
            common.run_stormer("oomstorm", listing, out, timeout=600)
            storm_s = time.monotonic() - t0
            # Each victim's event waits for its exit record; then the agent goes quiet.
            deadline = time.monotonic() + 120
            last, seen = time.monotonic(), agent.lines_read()
            while time.monotonic() - last < 6 and time.monotonic() < deadline:
                time.sleep(0.1)
                if agent.lines_read() != seen:
                    last, seen = time.monotonic(), agent.lines_read()
            busy_s = last - t0
            ticks = common.cpu_ticks(agent.pid) - ticks0
        finally:
            stats = agent.stop()
        dmesg = kmsg.read()
        hogs: dict[int, str] = {}
        killed = 0
        for line in out.read_text().splitlines():
            index, pid, status = (int(x) for x in line.split())
            hogs[pid] = groups[index].cgroup_path
            killed += os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
        events = right = right_memcg = lost = 0
        for _, event in agent.events():
            if event["type"] == "lost":
                lost += event["lost"]["count"]
            victim = event.get("victim") or {}
            if event["type"] != "oom_kill" or victim.get("pid") not in hogs:
                continue
            events += 1
            right += victim.get("cgroup") == hogs[victim["pid"]]
            right_memcg += (event.get("oom") or {}).get("memcg") == hogs[victim["pid"]]
    pids = {str(p) for p in hogs}
    killed_lines = [m for m in (_KILLED.search(line) for line in dmesg) if m]
    named = [m for m in (_SUMMARY.search(line) for line in dmesg) if m]
    suppressed = sum(int(m.group(1)) for m in (_SUPPRESSED.search(line) for line in dmesg) if m)
    with contextlib.suppress(ZeroDivisionError):
        cpu = 100.0 * ticks / common.CLK_TCK / busy_s
    return OomResult(
        cgroups=n,
        hogs_killed=killed,
        storm_s=storm_s,
        events=events,
        right_cgroup=right,
        right_memcg=right_memcg,
        lost=lost,
        dmesg_killed=sum(1 for m in killed_lines if m.group(1) in pids),
        dmesg_memcg_named=sum(1 for m in named if "oomtrace-bench-oom" in m.group(1)),
        dmesg_suppressed=suppressed,
        cpu_percent=cpu,
        stats=stats,
    )


# mm/oom_kill.c: __oom_kill_process() (not rate limited) and dump_oom_summary(), which
# dump_header() prints under the oom_rs rate limit (10 per 5 s).
_KILLED = re.compile(r"Memory cgroup out of memory: Killed process (\d+)")
_SUMMARY = re.compile(r"oom-kill:constraint=CONSTRAINT_MEMCG.*?oom_memcg=(\S+?),")
_SUPPRESSED = re.compile(r"oom_kill_process: (\d+) callbacks suppressed")


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.require_root()
    n = 20 if args.short else 200
    r = run(n)
    report = common.Report("OOM storm (bench.oomstorm)")
    report.add(
        f"{n} memcg OOM kills ({LIMIT // MiB} MiB cgroups, all hogs started at once): "
        "oomtrace vs the kernel log",
        ["source", "OOM kills reported", "with the right cgroup", "memcg named", "note"],
        [
            [
                "oomtrace",
                f"{r.events} / {r.hogs_killed}",
                f"{r.right_cgroup}",
                f"{r.right_memcg}",
                f"lost events: {r.lost}; agent CPU {r.cpu_percent:.0f}% of a core",
            ],
            [
                "kernel log (dmesg)",
                f"{r.dmesg_killed} / {r.hogs_killed}",
                "-",
                f"{r.dmesg_memcg_named}",
                f"{r.hogs_killed - r.dmesg_memcg_named} OOM reports dropped by the rate limit"
                + (f" ({r.dmesg_suppressed} said suppressed)" if r.dmesg_suppressed else ""),
            ],
        ],
    )
    report.note(
        f"the {r.hogs_killed} hogs were started and OOM-killed within {r.storm_s:.1f} s; "
        "dmesg's 'Killed process' line is not rate limited, but the report that names the "
        "memcg (oom-kill:constraint=...,oom_memcg=...) is, 10 per 5 s. The kernel logs how "
        "many it dropped ('callbacks suppressed') only with its next report after that window."
    )
    report.data = dict(vars(r))
    report.emit(args.json)


if __name__ == "__main__":
    main()
