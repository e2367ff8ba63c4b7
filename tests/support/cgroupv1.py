"""cgroup v1 groups for tests that start many processes at once, and room in the
kernel's task limits for them. Everything made or raised here is undone on exit.

A process started while its parent sits in a group begins in that group, so a
test joins its groups for the moment it starts its processes (:func:`joined`)
and leaves them at once: a frozen group must never hold the test itself.
"""

from __future__ import annotations

import os
import resource
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

PID_MAX_LIMIT = 1 << 22  # the kernel's ceiling for kernel.pid_max on 64-bit
_PID_MAX = Path("/proc/sys/kernel/pid_max")
_THREADS_MAX = Path("/proc/sys/kernel/threads-max")


def v1_root(controller: str) -> Path | None:
    """Where the cgroup v1 hierarchy holding `controller` is mounted, if it is."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fstype, _source, options = right.split()[:3]
            if fstype == "cgroup" and controller in options.split(","):
                return Path(left.split()[4])
    return None


def own_cgroup(controller: str) -> str:
    """This process's group in `controller`'s v1 hierarchy, from its root."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise RuntimeError(f"this process is in no {controller} cgroup")


class V1Group:
    def __init__(self, controller: str, root: Path, path: Path) -> None:
        self.controller = controller
        self.root = root
        self.path = path

    @property
    def cgroup_path(self) -> str:
        """The path as /proc/<pid>/cgroup and oomtrace show it: from the hierarchy root."""
        return "/" + str(self.path.relative_to(self.root))

    def procs(self) -> list[int]:
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def home(self) -> Path:
        """This process's own group in the same hierarchy."""
        return self.root / own_cgroup(self.controller).lstrip("/")

    # -- freezer ---------------------------------------------------------------

    def state(self) -> str:
        return (self.path / "freezer.state").read_text().strip()

    def freeze(self, timeout: float = 30.0) -> None:
        # Never freeze the test itself: nothing could thaw it again.
        assert os.getpid() not in self.procs(), "the test is inside the group it freezes"
        (self.path / "freezer.state").write_text("FROZEN")
        end = time.monotonic() + timeout
        # FREEZING until every task has stopped; writing FROZEN again retries stragglers.
        while self.state() != "FROZEN":
            assert time.monotonic() < end, f"{self.path} still {self.state()}"
            time.sleep(0.05)
            (self.path / "freezer.state").write_text("FROZEN")

    def thaw(self) -> None:
        (self.path / "freezer.state").write_text("THAWED")

    # -- removal ---------------------------------------------------------------

    def remove(self) -> None:
        if self.controller == "freezer":
            self.thaw()  # a frozen task acts on no SIGKILL
        me = os.getpid()
        for _ in range(100):
            pids = [p for p in self.procs() if p != me]
            if not pids:
                break
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                # Busy while the last members finish exiting.
                time.sleep(0.05)
        self.path.rmdir()


@contextmanager
def v1_group(controller: str, prefix: str = "oomtrace-test") -> Iterator[V1Group]:
    """A new group at the top of `controller`'s v1 hierarchy, removed on exit with
    whatever is still in it."""
    root = v1_root(controller)
    if root is None:
        raise RuntimeError(f"no cgroup v1 hierarchy has the {controller} controller")
    path = root / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    group = V1Group(controller, root, path)
    try:
        yield group
    finally:
        group.remove()


@contextmanager
def joined(groups: Sequence[V1Group]) -> Iterator[None]:
    """This process inside `groups` for the block, back in its own groups after it."""
    me = str(os.getpid())
    homes: list[Path] = []
    try:
        for group in groups:
            homes.append(group.home())
            (group.path / "cgroup.procs").write_text(me)
        yield
    finally:
        for home in homes:
            (home / "cgroup.procs").write_text(me)


def _tasks_now() -> int:
    # /proc/loadavg's fourth field is running/total scheduling entities (threads).
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])


@contextmanager
def task_room(n: int, margin: int = 8192) -> Iterator[None]:
    """Room for `n` more processes: kernel.pid_max, kernel.threads-max and
    RLIMIT_NPROC raised where they would not leave it, restored on exit."""
    need = _tasks_now() + n + margin
    saved_sysctls: list[tuple[Path, str]] = []
    saved_nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    try:
        for knob, ceiling in ((_PID_MAX, PID_MAX_LIMIT), (_THREADS_MAX, None)):
            old = knob.read_text().strip()
            if int(old) < need:
                saved_sysctls.append((knob, old))
                knob.write_text(str(need if ceiling is None else min(need, ceiling)))
        soft, hard = saved_nproc
        if soft != resource.RLIM_INFINITY and soft < need:
            try:
                raised = hard if hard == resource.RLIM_INFINITY else max(hard, need)
                resource.setrlimit(resource.RLIMIT_NPROC, (need, raised))
            except (ValueError, OSError):
                # Raising the hard limit takes CAP_SYS_RESOURCE. Without it, go as
                # far as it allows: uid 0 of the initial user namespace is exempt
                # from RLIMIT_NPROC anyway.
                resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NPROC, saved_nproc)
        for knob, old in reversed(saved_sysctls):
            knob.write_text(old)
