"""A burst of 20 000 SIGKILLs, every one captured before any completes: each must
come out as one event, and no field that capture read may be null.

Capture reads /proc when a kill's record arrives; the event is built later, when
the victim exits. Evidence set aside between the two in a bounded cache, looked
up again at build time, is gone once more kills than the cache holds have been
captured in between, and the field it would fill is silently null. Here the first
kills wait for 19 999 others, more than any such cache holds. Nor may a kill's
way to its exit rest on a table smaller than the burst: every victim's exit must
be observed.

How a kill is held: the victims sit in a cgroup v1 freezer group, frozen before
they are killed. The kernel fact relied on: a task frozen by the v1 freezer does
not act on SIGKILL until its group is thawed. The kill is generated (the signal
tracepoint fires, SIGKILL shows pending in /proc/<pid>/status) while the task
stays alive and readable in /proc; it exits only after the thaw. The v2 freezer
lets a fatal signal through at once, so it cannot hold a kill.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, Event
from tests.support.cgroupv1 import V1Group, joined, own_cgroup, task_room, v1_group

pytestmark = pytest.mark.kernel

N = 20_000
# Measured: a busybox sleep costs the kernel about 125 kB (kernel stack, page
# tables, its few private pages, slab); the rest is a margin for the agent.
MEMORY_NEEDED_KB = N * 200 + (1 << 20)
# The most the agent accepts, and longer than the whole test: a kill must
# complete by its exit, never by timing out.
EXIT_WAIT_S = 300
# 32 MiB of ring buffer holds every signal record of the burst and every exit
# record after the thaw even if the agent read none of them in the meantime; the
# queues behind it hold all of them too.
AGENT_ARGS = (
    "--exit-wait",
    str(EXIT_WAIT_S),
    "--ring-buffer-pages",
    "8192",
    "--record-queue-size",
    str(8 * N),
    "--sink-queue-size",
    str(4 * N),
    "--stats-interval",
    "0.25",
)
SIGKILL_BIT = 1 << (signal.SIGKILL - 1)
# Victims' stdio: they must not hold the test runner's output open.
DEVNULL = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    (os.POSIX_SPAWN_DUP2, 1, 2),
]


class Victims:
    """The processes this test started, each reaped once: a reaped pid may be
    reused by another process and must never be signalled again."""

    def __init__(self) -> None:
        self.argv: dict[int, list[str]] = {}
        self.status: dict[int, int] = {}

    def spawn(self, path: str, argv: list[str]) -> None:
        pid = os.posix_spawn(path, argv, {}, file_actions=DEVNULL)
        self.argv[pid] = argv

    def kill_all(self) -> None:
        for pid in self.argv:
            if pid not in self.status:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def reap_all(self) -> None:
        for pid in self.argv:
            if pid not in self.status:
                try:
                    self.status[pid] = os.waitpid(pid, 0)[1]
                except ChildProcessError:
                    self.status[pid] = -1

    def cleanup(self, freezer: V1Group) -> None:
        self.kill_all()
        freezer.thaw()
        self.reap_all()


def _mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status; empty once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _cmdline(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except FileNotFoundError:
        return None


def _spawn(victims: Victims, busybox: str, groups: list[V1Group], agent: AgentProcess) -> None:
    with joined(groups):
        for i in range(N):
            # A distinct argv per victim: its event must carry its own command line.
            victims.spawn(busybox, [busybox, "sleep", str(100_000 + i)])
            if i % 1000 == 0:
                agent.collect(0.001)  # its stats lines must never fill the stderr pipe


def _assert_alive_and_readable(victims: Victims) -> None:
    wrong = [pid for pid, argv in victims.argv.items() if _cmdline(pid) != argv]
    assert not wrong, f"{len(wrong)} victims do not read as started, e.g. {wrong[:5]}"


def _wait_all_captured(agent: AgentProcess, timeout: float = 120.0) -> Event:
    """The agent's stats once it holds every kill as pending and has read nothing
    new between two stats lines: every signal record is captured."""
    end = time.monotonic() + timeout
    seen = 0
    last: Event | None = None
    while time.monotonic() < end:
        agent.collect(0.3)
        for log in agent.logs[seen:]:
            if log.get("event") != "stats":
                continue
            if last is not None and log["pending"] >= N and log["records"] == last["records"]:
                return log
            last = log
        seen = len(agent.logs)
    raise AssertionError(f"the agent did not capture {N} kills in {timeout} s: {agent.logs[-3:]}")


def _assert_kills_held(victims: Victims, freezer: V1Group) -> None:
    """Every victim is still alive with its SIGKILL pending: no kill has completed."""
    assert freezer.state() == "FROZEN"
    not_held = []
    for pid in victims.argv:
        status = _status(pid)
        alive = status.get("State", "Z").startswith(("R", "S", "D", "T", "t"))
        if not alive or not int(status["ShdPnd"], 16) & SIGKILL_BIT:
            not_held.append(pid)
    assert not not_held, f"{len(not_held)} kills not held, e.g. {not_held[:5]}"


def _wait_events(agent: AgentProcess, pids: set[int], quiet: float = 15.0) -> None:
    """Until every victim has its event, or the agent has emitted nothing for
    `quiet` s: a kill still pending then waits for an exit that is not coming."""
    got: set[int] = set()
    scanned = 0
    last = time.monotonic()
    while len(got) < len(pids) and time.monotonic() - last < quiet:
        agent.collect(0.3)
        if len(agent.events) > scanned:
            last = time.monotonic()
        for event in agent.events[scanned:]:
            if event["type"] == "signal" and event["victim"]["pid"] in pids:
                got.add(event["victim"]["pid"])
        scanned = len(agent.events)


@dataclass(frozen=True)
class Sender:
    """This test as /proc shows it: it sends every kill."""

    pid: int
    cmdline: list[str] | None
    cgroup: str
    ppid: int


def _check(event: Event, argv: list[str], sender: Sender, cgroup: str) -> list[str]:
    """The fields of one event that capture must fill, wrong or null. Each comes
    from what capture read: the victim's command line from its /proc snapshot at
    the kill, its cgroup from the memcg the kernel named (resolved by capture,
    else /proc's), the sender's command line and parent chain from its /proc
    snapshot, and the exit from the kill still pending when the victim died."""
    victim, sent_by = event["victim"], event["sender"]
    parents = sent_by.get("parents") or []
    checks = {
        "victim.cmdline": victim["cmdline"] == argv,
        "victim.cgroup": victim["cgroup"] == cgroup,
        "victim.exit.observed": (victim["exit"] or {}).get("observed") is True,
        "sender.cmdline": sent_by["cmdline"] == sender.cmdline,
        "sender.cgroup": sent_by["cgroup"] == sender.cgroup,
        "sender.parents": bool(parents) and parents[0]["pid"] == sender.ppid,
    }
    return [name for name, ok in checks.items() if not ok]


def test_burst_of_20000_held_sigkills_keeps_every_captured_field() -> None:
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox (static) is needed for cheap victims"
    available = _mem_available_kb()
    assert available > MEMORY_NEEDED_KB, f"{available} kB available, {MEMORY_NEEDED_KB} needed"
    victims = Victims()
    with ExitStack() as stack:
        stack.enter_context(task_room(N))
        freezer = stack.enter_context(v1_group("freezer", "oomtrace-burst"))
        memory = stack.enter_context(v1_group("memory", "oomtrace-burst"))
        # A pids group of its own at the top: no task limit of the runner's applies.
        pids = stack.enter_context(v1_group("pids", "oomtrace-burst"))
        agent = AgentProcess(*AGENT_ARGS)
        stack.callback(agent.stop)
        # Runs first on the way out: victims killed, thawed and reaped before
        # the agent stops and their groups are removed.
        stack.callback(victims.cleanup, freezer)
        agent.wait_ready()

        _spawn(victims, busybox, [freezer, memory, pids], agent)
        freezer.freeze()
        _assert_alive_and_readable(victims)
        for pid in victims.argv:
            os.kill(pid, signal.SIGKILL)
        held = _wait_all_captured(agent)
        _assert_kills_held(victims, freezer)
        early = [e for e in agent.events if (e.get("victim") or {}).get("pid") in victims.argv]
        assert not early, f"{len(early)} kills completed before the thaw"

        freezer.thaw()
        victims.reap_all()
        assert all(
            os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGKILL for s in victims.status.values()
        )
        _wait_events(agent, set(victims.argv))
        assert agent.stop() == 0, agent.logs[-5:]
    stats = agent.stats()
    lost = [e["lost"] for e in agent.events if e["type"] == "lost"]
    assert not lost, lost
    assert stats["kernel_lost"] == stats["queue_dropped"] == stats["evicted"] == 0, stats

    sender = Sender(os.getpid(), _cmdline(os.getpid()), own_cgroup("memory"), os.getppid())
    ours = [
        e
        for e in agent.events
        if e["type"] == "signal"
        and e["victim"]["pid"] in victims.argv
        and e["sender"]["pid"] == sender.pid
    ]
    assert len(ours) == N, f"{len(ours)} events for {N} kills; before the thaw: {held}"
    assert {e["victim"]["pid"] for e in ours} == set(victims.argv)
    wrong: Counter[str] = Counter()
    example: dict[str, Event] = {}
    for event in ours:
        for name in _check(event, victims.argv[event["victim"]["pid"]], sender, memory.cgroup_path):
            wrong[name] += 1
            example.setdefault(name, event)
    assert not wrong, f"events with a field wrong or null, of {N}: {dict(wrong)}; e.g. {example}"
