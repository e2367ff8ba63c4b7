"""The commands map's start: the processes that exec'd before the agent.

commands.bpf.c keeps a process's argv from its exec, so a process started before
the programs were attached has none. At start-up the agent reads each live
process's /proc/<pid>/cmdline once and inserts it, marked ``proc``; the kernel's
own entries (an exec or fork since the attach) are never replaced. A process
forked after /proc was listed from a parent not yet seeded has no entry: its
victim event falls back to /proc, as without the program.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import NamedTuple

from oomtrace.host import procfs
from oomtrace.kernel.loader import Commands
from oomtrace.kernel.records import ARGV_LEN, ARGV_PROC, RawArgv


class Seeded(NamedTuple):
    inserted: int  # entries added, or already there from an exec
    full: int  # processes left out: the map was full


def entry(cmdline: bytes) -> bytes:
    """A map value for a command line read from /proc (NUL-separated, as the kernel keeps it)."""
    value = RawArgv(size=len(cmdline), source=ARGV_PROC)
    head = cmdline[:ARGV_LEN]
    ctypes.memmove(value.args, head, len(head))
    return bytes(value)


def seed(commands: Commands, pids: Iterable[int]) -> Seeded:
    inserted = full = 0
    for pid in pids:
        cmdline = procfs.raw_cmdline(pid)
        if not cmdline:
            continue  # a kernel thread, a zombie, or gone
        if commands.seed(pid, entry(cmdline)):
            inserted += 1
        else:
            full += 1
    return Seeded(inserted, full)
