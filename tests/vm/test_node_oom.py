"""Node-wide memory pressure, which only the VM may suffer: a global OOM, and a
userspace OOM killer (earlyoom) acting before the kernel does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
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
time.sleep(600)
"""


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
    idle = subprocess.Popen(
        [sys.executable, "-c", IDLE], preexec_fn=adjusted(1000), stdout=subprocess.PIPE
    )
    assert idle.stdout is not None
    assert idle.stdout.readline().strip() == b"held"
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
        finally:
            hog.kill()
            hog.wait()
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
    assert oom["top_holders"][0]["pid"] == hog.pid, (trigger, oom["top_holders"])
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
