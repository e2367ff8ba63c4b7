"""Attachments that outlive the process that made them: BPF links.

A program attached the way bcc does it (perf_event_open, then the
PERF_EVENT_IOC_SET_BPF ioctl) stays attached only while some process holds
the perf event's fd. A BPF link holds the attachment itself, and a link can
be pinned in bpffs, so the attachment survives the agent (kernel/pins.py):
  - a raw tracepoint is attached with BPF_RAW_TRACEPOINT_OPEN, whose fd is
    already a link (a bpf_raw_tp_link, since v5.7);
  - a tracepoint or a kprobe is a perf event, which BPF_LINK_CREATE wraps in
    a link with attach type BPF_PERF_EVENT (a bpf_perf_link, since v5.15).
The link keeps its own reference to the perf event's file, so the fd that
opened it can be closed.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from pathlib import Path
from typing import Final

from oomtrace.kernel.syscalls import bpf_call, perf_event_open

BPF_OBJ_PIN: Final = 6
BPF_OBJ_GET: Final = 7
BPF_LINK_CREATE: Final = 28
BPF_PERF_EVENT: Final = 41  # enum bpf_attach_type

PERF_TYPE_TRACEPOINT: Final = 2
PERF_FLAG_FD_CLOEXEC: Final = 1 << 3
PERF_EVENT_IOC_ENABLE: Final = 0x2400


class PerfEventAttr(ctypes.Structure):
    # struct perf_event_attr up to config2: PERF_ATTR_SIZE_VER1 (72 bytes),
    # which every later kernel still accepts.
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
    )


class _LinkCreateAttr(ctypes.Structure):
    # union bpf_attr, BPF_LINK_CREATE; the perf_event member (bpf_cookie) stays 0.
    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cookie", ctypes.c_uint64),
    )


class _ObjAttr(ctypes.Structure):
    # union bpf_attr, BPF_OBJ_PIN / BPF_OBJ_GET
    _fields_ = (
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    )


def _perf_event_open(attr: PerfEventAttr) -> int:
    # pid -1, cpu 0: a tracepoint's or kprobe's program runs on every CPU
    # whichever CPU the event is opened on (it hangs off the trace event).
    return perf_event_open(attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)


def tracepoint_event(tracefs: Path, hook: str) -> int:
    """A perf event on tracepoint ``hook`` ("signal:signal_generate")."""
    category, name = hook.split(":", 1)
    event_id = int((tracefs / "events" / category / name / "id").read_text())
    attr = PerfEventAttr(
        type=PERF_TYPE_TRACEPOINT,
        size=ctypes.sizeof(PerfEventAttr),
        config=event_id,
        sample_period=1,
        wakeup_events=1,
    )
    return _perf_event_open(attr)


def kprobe_event(symbol: str) -> int:
    """A perf event on a kprobe at ``symbol``'s entry, through the kprobe PMU
    (no kprobe_events file is written, so nothing is left in tracefs)."""
    pmu = int(Path("/sys/bus/event_source/devices/kprobe/type").read_text())
    name = ctypes.create_string_buffer(symbol.encode())
    attr = PerfEventAttr(
        type=pmu,
        size=ctypes.sizeof(PerfEventAttr),
        sample_period=1,
        wakeup_events=1,
        config1=ctypes.addressof(name),
        config2=0,
    )
    return _perf_event_open(attr)


def link_perf_event(prog_fd: int, perf_fd: int) -> int:
    """A link attaching ``prog_fd`` to the perf event, enabled."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_fd=perf_fd, attach_type=BPF_PERF_EVENT)
    fd = bpf_call(BPF_LINK_CREATE, attr)
    try:
        fcntl.ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def pin(fd: int, path: Path) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    bpf_call(BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(name), bpf_fd=fd))


def get(path: Path) -> int:
    """An fd of the map or link pinned at ``path`` (close-on-exec)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return bpf_call(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(name)))
