"""The kernel side kept in bpffs, so that it outlives the agent.

When the agent exits, every fd it held closes: a program attached through a
perf event is detached, and a map nothing else holds is freed, ring buffer and
all. Pinned in bpffs, a map or a BPF link (kernel/links.py) lives on until its
pin is removed, so the programs keep recording into the ring buffer while the
agent restarts, and the next agent reads on from where the last one stopped:
a BPF ring buffer's consumer and producer positions live in the map itself.

Layout of the pins:

    <root>/<layout version>/<programs digest>/map-events, map-resume, ...
                                              link-signal-signal_generate, ...

  - the layout version (OOMTRACE_LAYOUT_VERSION in bpf/oomtrace.h) names what
    an agent reads from another agent's kernel side: records, ring buffer, the
    maps' values. Another version's ring buffer can only be counted.
  - the digest names the exact programs (their C text and kprobe target): the
    same programs are resumed as they are; others (a configuration that traces
    other signals, an upgrade that kept the layout) are loaded fresh, and the
    old ring buffer is read to its end first.
  - a set is pinned under a temporary name and renamed into place, so an agent
    never resumes a half-pinned set.
  - no name has a dot: bpffs refuses them (EPERM), keeping them for its own
    files (maps.debug, progs.debug).

Nothing but an explicit stop (`oomtrace --stop-tracing`, the service's stop,
scripts/uninstall) removes the pins: a restart, a crash or an upgrade leaves
them for the next agent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from oomtrace.host import mountinfo
from oomtrace.kernel import links
from oomtrace.kernel.records import LAYOUT_VERSION

DEFAULT_ROOT: Final = Path("/sys/fs/bpf/oomtrace")
MOUNTINFO: Final = Path("/proc/self/mountinfo")
MAP_PREFIX: Final = "map-"
LINK_PREFIX: Final = "link-"
STAGING_PREFIX: Final = "staging-"


class PinError(RuntimeError):
    """Pins could not be made or read."""


@dataclass(frozen=True, slots=True)
class PinSet:
    path: Path
    layout: int
    digest: str

    def entries(self) -> list[str]:
        try:
            return sorted(os.listdir(self.path))
        except OSError:
            return []


def bpffs_problem(root: Path) -> str | None:
    """Why ``root`` cannot hold pins, or None. bpffs is normally mounted at
    /sys/fs/bpf (systemd does it at boot; a container needs it mounted in)."""
    try:
        text = MOUNTINFO.read_text()
    except OSError as exc:
        return f"{MOUNTINFO}: {exc.strerror}"
    # The mount that holds ``root``: the deepest one above it, the last of
    # those on one point (a later mount hides an earlier one).
    path = root.resolve()
    above = [m for m in mountinfo.parse(text) if m.mount == path or m.mount in path.parents]
    holder = max(reversed(above), key=lambda m: len(m.mount.parts), default=None)
    if holder is None or holder.fstype != "bpf":
        return f"no bpffs mounted at {root.parent} (mount -t bpf bpf {root.parent})"
    return None


def digest(text: str, kprobe_symbol: str | None) -> str:
    h = hashlib.sha256(text.encode())
    h.update(b"\0" + (kprobe_symbol or "").encode())
    return h.hexdigest()[:16]


def find(root: Path) -> list[PinSet]:
    """Every complete pin set under ``root``, of any layout version."""
    found: list[PinSet] = []
    try:
        versions = sorted(os.listdir(root))
    except OSError:
        return []
    for version in versions:
        if not version.isdigit():
            continue
        try:
            names = sorted(os.listdir(root / version))
        except OSError:
            continue
        for name in names:
            if not name.startswith(STAGING_PREFIX):
                found.append(PinSet(root / version / name, int(version), name))
    return found


def entry_name(name: str) -> str:
    """A handed-over fd's name as a file name: "map:events" -> "map-events",
    "link:signal:signal_generate" -> "link-signal-signal_generate"."""
    return "".join("-" if c in ":/." else c for c in name)


def pin(root: Path, fds: dict[str, int], programs: str) -> PinSet:
    """Pins the maps and links in ``fds`` as the set of programs ``programs``
    (a digest). A set of the same name already there is replaced."""
    version_dir = root / str(LAYOUT_VERSION)
    final = version_dir / programs
    staging = version_dir / f"{STAGING_PREFIX}{programs}-{os.getpid()}"
    try:
        version_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _remove_dir(staging)
        staging.mkdir(mode=0o700)
        for name, fd in fds.items():
            if name.startswith(("map:", "link:")):
                links.pin(fd, staging / entry_name(name))
        if final.exists():
            _remove_dir(final)
        staging.rename(final)
    except OSError as exc:
        _remove_dir(staging)
        raise PinError(f"pinning in {version_dir}: {exc.strerror or exc}") from exc
    return PinSet(final, LAYOUT_VERSION, programs)


def open_maps(pins: PinSet) -> dict[str, int]:
    """fds of the pinned maps, named as the loader names them ("map:events"), and
    of the links ("link:" and the entry): held by the agent as well, a link stays
    attached until the agent exits even if its pin is removed meanwhile."""
    fds: dict[str, int] = {}
    try:
        for entry in pins.entries():
            if entry.startswith(MAP_PREFIX):
                fds["map:" + entry[len(MAP_PREFIX) :]] = links.get(pins.path / entry)
            elif entry.startswith(LINK_PREFIX):
                fds["link:" + entry[len(LINK_PREFIX) :]] = links.get(pins.path / entry)
    except OSError as exc:
        for fd in fds.values():
            os.close(fd)
        raise PinError(f"opening {pins.path}: {exc.strerror or exc}") from exc
    return fds


def linked(pins: PinSet) -> list[str]:
    """The pinned links' entries ("link-kprobe-oom_kill_process", ...)."""
    return [e for e in pins.entries() if e.startswith(LINK_PREFIX)]


def unlink_programs(pins: PinSet) -> None:
    """Removes the link pins: each program is detached as its last reference
    goes (no agent holds them), while the maps stay readable."""
    for entry in pins.entries():
        if entry.startswith(LINK_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pins.path / entry)


def remove(pins: PinSet) -> None:
    _remove_dir(pins.path)
    with contextlib.suppress(OSError):
        pins.path.parent.rmdir()


def remove_all(root: Path) -> int:
    """Removes every pin set under ``root`` (any version, and the staging
    directories of an agent that died while pinning); how many sets there were."""
    count = len(find(root))
    with contextlib.suppress(OSError):
        for version in os.listdir(root):
            for name in os.listdir(root / version):
                _remove_dir(root / version / name)
            with contextlib.suppress(OSError):
                (root / version).rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()
    return count


def _remove_dir(path: Path) -> None:
    # bpffs directories hold only pins; unlinking a pin drops its reference.
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
