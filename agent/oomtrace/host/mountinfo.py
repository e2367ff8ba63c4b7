"""The mounts of /proc/self/mountinfo: where cgroupfs and procfs are, and how."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo."""

    mount: Path
    # The mount's root inside its filesystem (the 4th field): not "/" for a bind
    # mount or a cgroup namespace.
    root: str
    fstype: str
    super_options: tuple[str, ...]


_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # show_mountinfo escapes space, tab, newline and backslash as \ooo.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str, fstypes: Collection[str] | None = None) -> list[Mount]:
    """The mounts of a mountinfo file (of `fstypes` only, when given), in its order."""
    mounts = []
    # show_mountinfo() escapes only space, tab, newline and backslash in paths, so a mount
    # point may hold "\r", "\x1c" or "\xa0" raw: only "\n" ends a line and only " " ends a
    # field, where splitlines() and split() would break at those too.
    for line in text.split("\n"):
        before, sep, after = line.partition(" - ")
        if not sep:
            continue
        fields = [f for f in before.split(" ") if f]
        tail = [f for f in after.split(" ") if f]
        if len(fields) < 6 or len(tail) < 3:
            continue
        if fstypes is not None and tail[0] not in fstypes:
            continue
        mounts.append(
            Mount(
                mount=Path(_unescape(fields[4])),
                root=_unescape(fields[3]),
                fstype=tail[0],
                super_options=tuple(tail[2].split(",")),
            )
        )
    return mounts
