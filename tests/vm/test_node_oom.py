"""Node-wide memory pressure, which only the VM may suffer: a global OOM, and a
userspace OOM killer (earlyoom) acting before the kernel does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, victim_pid

pytestmark = pytest.mark.vm

IDLE = "import sys, time\nb = b'x' * (64 << 20)\nprint('held', flush=True)\ntime.sleep(600)\n"
# Grows until the process given in argv[1] has been sent its SIGKILL, then holds
# what it has: one OOM kill, and the hog still on top when the agent reads /proc.
# It stops at the kill, not at the victim's death: under emulation the victim can
# take long to exit, and a hog still growing meanwhile draws a second OOM, whose
# victim is the hog itself. The kernel's SIGKILL stays in the group's shared
# pending set (ShdPnd, bit 8) from the kill until the process is reaped.
# Stopped at the brink, the node stays there: every page the others fault in
# (the agents, containerd, page cache refaults) draws another OOM, and after the
# spare the next victim is the hog, gone from /proc before the agent reads the
# first OOM's holders. So the hog hands back 128 MiB (each 1 MiB bytearray is
# its own mmap, freed at once) and stays the top holder by far.
HOG_UNTIL = """
import sys, time
def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return False
    if fields["State"].split()[0] in "ZX":
        return False
    return not int(fields["ShdPnd"], 16) & (1 << 8)
x = []
while alive(sys.argv[1]):
    x.append(bytearray(1 << 20))
del x[-128:]
time.sleep(600)
"""


def settle_until_available(wanted: int, timeout: float = 120) -> None:
    """Waits until MemAvailable reaches `wanted` bytes."""
    end = time.monotonic() + timeout
    while (available := _meminfo_kb("MemAvailable") * 1024) < wanted:
        assert time.monotonic() < end, f"only {available >> 20} MiB available"
        time.sleep(1)


def _meminfo_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        if name == field:
            return int(value.split()[0])
    raise LookupError(field)


def _vm_rss_kb(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next((line for line in status.splitlines() if line.startswith("VmRSS")), "?")


def adjusted(adj: int) -> Any:
    def set_adj() -> None:
        Path("/proc/self/oom_score_adj").write_text(str(adj))

    return set_adj


@contextmanager
def runner_protected() -> Iterator[None]:
    """The test runner must never be the victim of the OOMs it provokes."""
    own = Path(f"/proc/{os.getpid()}/oom_score_adj")
    before = own.read_text().strip()
    own.write_text("-1000")
    try:
        yield
    finally:
        own.write_text(before)


def test_host_hog_drives_a_global_oom(agents: dict[str, AgentProcess]) -> None:
    # A BestEffort-like idle process (adj 1000) and a host hog (adj 0) outside
    # any limited cgroup: the kernel kills the idle one first. What the idle one
    # holds satisfies the hog's last allocation once the reaper frees it.
    # The hog must be what fills the node: whatever an earlier test left using
    # memory (an agent still compiling, a container still going) is let go first.
    settle_until_available(1 << 30)
    idle = subprocess.Popen(
        [sys.executable, "-c", IDLE], preexec_fn=adjusted(1000), stdout=subprocess.PIPE
    )
    assert idle.stdout is not None
    assert idle.stdout.readline().strip() == b"held"
    # A second, smaller BestEffort-like process: under emulation the idle one can
    # exit so slowly that the hog's allocation in flight draws a second OOM. That
    # one then takes this spare (also adj 1000), not the hog the event must name.
    spare = subprocess.Popen(
        [sys.executable, "-c", IDLE.replace("64 << 20", "16 << 20")],
        preexec_fn=adjusted(1000), stdout=subprocess.PIPE,
    )  # fmt: skip
    assert spare.stdout is not None
    assert spare.stdout.readline().strip() == b"held"
    with runner_protected():
        hog = subprocess.Popen(
            ["systemd-run", "--scope", "--quiet", "--unit", f"updatedb-{os.getpid()}",
             sys.executable, "-c", HOG_UNTIL, str(idle.pid)],
            preexec_fn=adjusted(0),
        )  # fmt: skip
        try:
            assert idle.wait(timeout=300) == -signal.SIGKILL
            event = agents["kprobe"].wait_for(victim_pid(idle.pid), timeout=60)
            assert hog.poll() is None, "a second OOM took the hog: it grew past the kill"
            hog_rss = _vm_rss_kb(hog.pid)
        finally:
            hog.kill()
            hog.wait()
            spare.kill()
            spare.wait()
    oom = event["oom"]
    assert oom["constraint"] == "global"
    assert oom["scope"] == "node"
    assert oom["memcg"] is None
    assert event["victim"]["oom_score_adj"] == 1000
    # In a global OOM the trigger is whichever task's allocation failed first:
    # mostly the hog, but any busy process (containerd, journald) can draw it.
    trigger = event["trigger"]
    assert trigger["pid"] > 0 and trigger["comm"]
    if trigger["pid"] == hog.pid:
        assert trigger["cgroup"].endswith(f"updatedb-{os.getpid()}.scope")
    # Whoever drew it, the hog is what ate the node, and the event says so.
    assert oom["top_holders"][0]["pid"] == hog.pid, (trigger, oom["top_holders"], hog_rss)
    assert oom["top_holders"][0]["comm"] == Path(sys.executable).name[:15]
    assert "global OOM" in event["explanation"]
    assert event["victim"]["exit"]["code"] == 137
    plain = agents["tracepoint"].wait_for(victim_pid(idle.pid), timeout=60)
    assert plain["oom"]["scope"] == "node"


def test_earlyoom_is_a_userspace_oom_killer(
    agents: dict[str, AgentProcess], tmp_path: Path
) -> None:
    earlyoom = shutil.which("earlyoom")
    assert earlyoom is not None, "earlyoom is not installed in the VM"
    victim_exe = tmp_path / "leaky-worker"
    shutil.copy("/bin/sleep", victim_exe)
    victim = subprocess.Popen([str(victim_exe), "600"], preexec_fn=adjusted(900))
    # Thresholds above what is free: earlyoom acts at once, on the process its
    # --prefer pattern names.
    killer = subprocess.Popen(
        [earlyoom, "-m", "99,98", "-s", "100,99", "-r", "0", "--prefer", "^leaky-worker$",
         "--avoid", "^(python3?|pytest|sshd|systemd.*|bash|sudo)$"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert victim.wait(timeout=60) in (-signal.SIGTERM, -signal.SIGKILL)
    finally:
        killer.kill()
        killer.wait()
    event = agents["kprobe"].wait_for(victim_pid(victim.pid), timeout=30)
    assert event["type"] == "signal"
    assert event["sender"]["comm"] == "earlyoom"
    assert event["cause"] == "userspace_oom_killer"
    assert "userspace OOM killer earlyoom" in event["explanation"]


# One process that keeps its own page cache and grows its heap past its unit's
# MemoryHigh: the kernel throttles it on every return to user space (a memory
# stall, so its cgroup's PSI climbs) and reclaims its file pages (pgscan, which
# systemd-oomd wants to see before it kills). No node-wide pressure is needed.
PRESSURED = """
import os, time
path = "/var/tmp/oomtrace-oomd-cache"
with open(path, "wb") as f:
    f.write(os.urandom(16 << 20))
heap = []
while True:
    heap.append(bytearray(1 << 20))
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
"""
OOMD_CONF = Path("/run/systemd/oomd.conf.d/oomtrace-test.conf")


def test_systemd_oomd_is_a_userspace_oom_killer(agents: dict[str, AgentProcess]) -> None:
    """Scenario 6 of the Kubernetes node: systemd-oomd kills a unit held under
    memory pressure (ManagedOOMMemoryPressure=kill), with kill(2) to each of its
    processes."""
    OOMD_CONF.parent.mkdir(parents=True, exist_ok=True)
    # The pressure must last this long above the unit's limit (30 s by default).
    OOMD_CONF.write_text("[OOM]\nDefaultMemoryPressureDurationSec=2s\n")
    unit = "oomtrace-pressured"
    try:
        subprocess.run(["systemctl", "restart", "systemd-oomd"], check=True)
        subprocess.run(
            ["systemd-run", "--unit", unit, "-p", "MemoryHigh=48M", "-p", "MemoryMax=160M",
             "-p", "MemorySwapMax=0", "-p", "ManagedOOMMemoryPressure=kill",
             "-p", "ManagedOOMMemoryPressureLimit=10%",
             sys.executable, "-c", PRESSURED],
            check=True, capture_output=True,
        )  # fmt: skip
        show = ["systemctl", "show", "-P", "MainPID", unit]
        main_pid = int(subprocess.run(show, check=True, capture_output=True, text=True).stdout)
        assert main_pid > 0
        event = agents["kprobe"].wait_for(victim_pid(main_pid), timeout=180)
        assert event["type"] == "signal", event
        assert event["sender"]["comm"] == "systemd-oomd", event["sender"]
        assert event["cause"] == "userspace_oom_killer", event
        assert "userspace OOM killer systemd-oomd" in event["explanation"]
        assert event["victim"]["cgroup"] == f"/system.slice/{unit}.service"
        other = agents["tracepoint"].wait_for(victim_pid(main_pid), timeout=30)
        assert other["cause"] == "userspace_oom_killer"
    finally:
        subprocess.run(["systemctl", "stop", "systemd-oomd"], check=False)
        subprocess.run(["systemctl", "stop", unit], capture_output=True, check=False)
        subprocess.run(["systemctl", "reset-failed", unit], capture_output=True, check=False)
        OOMD_CONF.unlink(missing_ok=True)
        Path("/var/tmp/oomtrace-oomd-cache").unlink(missing_ok=True)
