"""bpf(2) and perf_event_open(2) as raw system calls: the agent drives maps,
links and perf events without bcc (glibc wraps neither)."""

from __future__ import annotations

import ctypes
import os
from typing import Final

_MACHINE: Final = os.uname().machine
NR_BPF: Final = {"x86_64": 321, "aarch64": 280}.get(_MACHINE)
NR_PERF_EVENT_OPEN: Final = {"x86_64": 298, "aarch64": 241}.get(_MACHINE)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfSyscallError(RuntimeError):
    """A system call has no known number on this architecture."""


def _syscall(name: str, nr: int | None, *args: int) -> int:
    if nr is None:
        raise BpfSyscallError(f"{name} has no known syscall number on {_MACHINE}")
    # syscall(2) is variadic and reads longs: pass longs, not C ints.
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def bpf_call(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(2); its return value (an fd for the commands that make one)."""
    return _syscall("bpf(2)", NR_BPF, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))


def perf_event_open(attr: ctypes.Structure, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """perf_event_open(2): the event's fd."""
    return _syscall(
        "perf_event_open(2)", NR_PERF_EVENT_OPEN, ctypes.addressof(attr), pid, cpu, group_fd, flags
    )
