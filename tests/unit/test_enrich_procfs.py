"""oomtrace.host.procfs against this test process and children it starts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oomtrace.host import procfs
from oomtrace.host.procfs import Parent

# Above PID_MAX_LIMIT (4 * 1024 * 1024): no process ever has it.
NO_SUCH_PID = 4 * 1024 * 1024 + 1

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts children in their own session; kills and reaps them afterwards."""
    children: list[subprocess.Popen[bytes]] = []

    def start(
        argv: list[str],
        stdin: int | None = None,
    ) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, start_new_session=True, stdin=stdin)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def comm_of(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def test_snapshot_of_this_process() -> None:
    snap = procfs.snapshot(os.getpid())
    assert snap is not None
    assert snap.tgid == os.getpid()
    assert snap.ppid == os.getppid()
    assert snap.comm == comm_of(os.getpid())
    assert snap.uid == os.getuid()
    assert snap.start_ticks == procfs.start_ticks(os.getpid())
    assert snap.cmdline is not None
    assert snap.cmdline == Path("/proc/self/cmdline").read_bytes().decode().split("\0")[:-1]
    assert snap.oom_score_adj == int(Path("/proc/self/oom_score_adj").read_text())
    assert {"VmSize", "VmRSS", "RssAnon", "RssFile", "VmPTE"} <= snap.memory_kb.keys()
    assert snap.memory_kb["VmRSS"] > 0
    assert snap.parents[0] == Parent(os.getppid(), comm_of(os.getppid()))
    assert snap.parents[-1].pid == 1
    assert len(snap.parents) <= procfs.MAX_PARENTS
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    unified = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    assert snap.unified_cgroup == (unified[0] if unified else None)
    memory = [line.split(":", 2)[2] for line in lines if "memory" in line.split(":")[1].split(",")]
    assert snap.memory_cgroup == (memory[0] if memory else snap.unified_cgroup)


def test_snapshot_without_parents() -> None:
    snap = procfs.snapshot(os.getpid(), with_parents=False)
    assert snap is not None
    assert snap.parents == ()
    assert snap.ppid == os.getppid()


def test_snapshot_of_a_child(spawn: Spawn) -> None:
    child = spawn(["sleep", "30"])
    Path(f"/proc/{child.pid}/oom_score_adj").write_text("500")
    wait_for(lambda: comm_of(child.pid) == "sleep")
    snap = procfs.snapshot(child.pid)
    assert snap is not None
    assert snap.tgid == child.pid
    assert snap.comm == "sleep"
    assert snap.cmdline == ["sleep", "30"]
    assert snap.ppid == os.getpid()
    assert snap.parents[0] == Parent(os.getpid(), comm_of(os.getpid()))
    assert snap.parents[1].pid == os.getppid()
    assert snap.parents[-1].pid == 1
    assert snap.tty is None  # a new session has no controlling terminal
    assert snap.oom_score_adj == 500
    assert snap.uid == os.getuid()
    assert snap.memory_kb["VmRSS"] > 0
    assert snap.unified_cgroup == procfs.snapshot(os.getpid()).unified_cgroup  # type: ignore[union-attr]


def test_snapshot_checks_start_ticks(spawn: Spawn) -> None:
    child = spawn(["sleep", "30"])
    ticks = procfs.start_ticks(child.pid)
    assert ticks is not None
    assert procfs.snapshot(child.pid, expect_start_ticks=ticks) is not None
    # What a record about an earlier process with the same pid would carry.
    assert procfs.snapshot(child.pid, expect_start_ticks=ticks - 1) is None


def test_gone_process() -> None:
    assert procfs.snapshot(NO_SUCH_PID) is None
    assert procfs.start_ticks(NO_SUCH_PID) is None
    assert procfs.tgid_of(NO_SUCH_PID) is None
    assert procfs.snapshot(0) is None
    assert procfs.snapshot(-1) is None


def test_reaped_child_is_gone(spawn: Spawn) -> None:
    child = spawn(["sleep", "30"])
    child.kill()
    child.wait()
    assert procfs.snapshot(child.pid) is None
    assert procfs.start_ticks(child.pid) is None


def test_zombie(spawn: Spawn) -> None:
    child = spawn(["sleep", "30"])
    ticks = procfs.start_ticks(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().split()[2] == "Z")
    snap = procfs.snapshot(child.pid, expect_start_ticks=ticks)
    assert snap is not None
    assert snap.cmdline == []  # the mm is gone
    assert "VmRSS" not in snap.memory_kb
    assert snap.ppid == os.getpid()


def test_tgid_of_a_thread() -> None:
    started, stop = threading.Event(), threading.Event()
    tids: list[int] = []

    def run() -> None:
        tids.append(threading.get_native_id())
        started.set()
        stop.wait(30)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        started.wait(10)
        assert tids[0] != os.getpid()
        assert procfs.tgid_of(tids[0]) == os.getpid()
        assert procfs.tgid_of(os.getpid()) == os.getpid()
        snap = procfs.snapshot(tids[0], with_parents=False)
        assert snap is not None
        assert snap.tgid == os.getpid()
    finally:
        stop.set()
        thread.join()


def test_comm_with_spaces_and_parentheses(spawn: Spawn, tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    odd = tmp_path / "a b) (c"
    shutil.copy(sleep, odd)
    child = spawn([str(odd), "30"])
    wait_for(lambda: comm_of(child.pid) == "a b) (c")
    snap = procfs.snapshot(child.pid)
    assert snap is not None
    assert snap.comm == "a b) (c"
    assert snap.ppid == os.getpid()
    assert snap.cmdline == [str(odd), "30"]
    fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert procfs.start_ticks(child.pid) == int(fields[19])


def test_controlling_terminal(spawn: Spawn) -> None:
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        assert name.startswith("/dev/pts/")
        # The child, a session leader with no terminal, takes its stdin as one, then
        # becomes sleep under the same pid.
        take_terminal = (
            "import fcntl, os, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
            "os.execvp('sleep', ['sleep', '30'])"
        )
        child = spawn([sys.executable, "-c", take_terminal], stdin=slave)
        wait_for(lambda: comm_of(child.pid) == "sleep")
        snap = procfs.snapshot(child.pid)
        assert snap is not None
        assert snap.tty == name.removeprefix("/dev/")
    finally:
        os.close(master)
        os.close(slave)


def tty_nr(major: int, minor: int) -> int:
    """new_encode_dev() as the kernel fills stat's tty_nr."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


@pytest.mark.parametrize(
    ("major", "minor", "name"),
    [
        (136, 0, "pts/0"),
        (136, 5, "pts/5"),
        (136, 255, "pts/255"),
        (137, 0, "pts/256"),
        (143, 255, "pts/2047"),
        (136, 300, "pts/300"),  # minors above 255 use the high bits of tty_nr
        (4, 0, "tty0"),
        (4, 1, "tty1"),
        (4, 63, "tty63"),
        (4, 64, "ttyS0"),
        (4, 65, "ttyS1"),
        (5, 0, "tty"),
        (5, 1, "console"),
        (5, 2, "ptmx"),
        (3, 4, "ttyp4"),
        (188, 0, "ttyUSB0"),
        (166, 1, "ttyACM1"),
        (204, 64, "ttyAMA0"),
        (229, 7, "229:7"),
    ],
)
def test_tty_name(major: int, minor: int, name: str) -> None:
    assert procfs.tty_name(tty_nr(major, minor)) == name


def test_no_tty() -> None:
    assert procfs.tty_name(0) is None


def test_kernel_start_to_ticks_arithmetic() -> None:
    tick_ns = 1_000_000_000 // procfs.CLK_TCK
    assert procfs.kernel_start_to_ticks(0) == 0
    assert procfs.kernel_start_to_ticks(tick_ns - 1) == 0
    assert procfs.kernel_start_to_ticks(tick_ns) == 1
    assert procfs.kernel_start_to_ticks(123 * 1_000_000_000 + 1) == 123 * procfs.CLK_TCK
    # Past 2**64 / CLK_TCK ns (about 5.8 years at 100 Hz): no overflow in Python either way.
    assert procfs.kernel_start_to_ticks(10**18) == 10**9 * procfs.CLK_TCK


def test_kernel_start_to_ticks_matches_proc(spawn: Spawn) -> None:
    # The kernel stamps start_boottime with CLOCK_BOOTTIME in copy_process(), between
    # these two readings; /proc/<pid>/stat shows it as nsec_to_clock_t().
    before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    child = spawn(["sleep", "30"])
    after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    ticks = procfs.start_ticks(child.pid)
    assert ticks is not None
    assert procfs.kernel_start_to_ticks(before) <= ticks <= procfs.kernel_start_to_ticks(after)


def test_top_memory_holders(spawn: Spawn) -> None:
    child = spawn(["sleep", "30"])
    holders = procfs.top_memory_holders([child.pid, os.getpid(), NO_SUCH_PID], 5)
    assert [h.pid for h in holders] == [os.getpid(), child.pid]
    assert holders[0].rss_kb > holders[1].rss_kb > 0
    assert holders[1].comm == "sleep"
    assert [h.pid for h in procfs.top_memory_holders([child.pid, os.getpid()], 1)] == [os.getpid()]
