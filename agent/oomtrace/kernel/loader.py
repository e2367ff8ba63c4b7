"""Compiling in a short-lived child, so the agent never holds LLVM.

bcc links LLVM and clang: importing it maps some 60 MB of libraries into the
process, and compiling grows the heap by 40 MB more, none of which is used once
the programs are loaded. So a child process compiles and attaches the programs
(Compiled, which Probes can also run in the agent itself), then hands the kernel
objects over a unix socket (SCM_RIGHTS): the map fds, and the perf-event and
raw-tracepoint fds that keep each program attached. The kernel objects live as
long as some process holds their fds, so the child may exit; it does so with
os._exit, because bcc's exit handler would first disable the perf events the
agent now shares.

The agent then needs no bcc at all: it reads the ring buffer through mmap and
epoll, and the few map entries it uses with the bpf(2) syscall.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final

from oomtrace.kernel import records
from oomtrace.kernel.syscalls import NR_BPF, bpf_call

# bpf(2) commands (include/uapi/linux/bpf.h)
BPF_MAP_LOOKUP_ELEM: Final = 1
BPF_MAP_UPDATE_ELEM: Final = 2
BPF_OBJ_GET_INFO_BY_FD: Final = 15
BPF_MAP_UPDATE_BATCH: Final = 26
# The kernel's own "operation not supported" (include/linux/errno.h), which
# reaches user space as is: not in Python's errno.
ENOTSUPP: Final = 524

# The ring buffer's record header: u32 length with these two flags, u32 page offset.
RINGBUF_BUSY: Final = 1 << 31
RINGBUF_DISCARD: Final = 1 << 30
RINGBUF_HDR: Final = 8
PAGE: Final = mmap.PAGESIZE  # mmap offsets and the ring buffer layout are in these

MAPS: Final = ("events", "lost_records", "traced_signals")
# Only the agent reads and writes them, for the next agent (kernel/pins.py).
PINNED_MAPS: Final = ("resume", "reported")
# Present only when their program is loaded (commands.bpf.c).
OPTIONAL_MAPS: Final = ("commands", "commands_full")
BPF_NOEXIST: Final = 1  # BPF_MAP_UPDATE_ELEM flag: only insert, never replace
# A compile on a loaded node is slow, but one that takes this long is stuck.
CHILD_TIMEOUT_S: Final = 600.0
MAX_FDS: Final = 64

RawCallback = Callable[[bytes], None]


class LoadError(RuntimeError):
    """The BPF programs could not be compiled or attached."""


class HandoverError(RuntimeError):
    """The child could not compile, attach or hand over the programs."""


def supported() -> bool:
    """Whether this process can drive handed-over maps (bpf(2) is a raw syscall here)."""
    return NR_BPF is not None and bool(sys.executable)


# -- compiling with bcc ---------------------------------------------------------


def _rewound(f: IO[str]) -> str:
    f.seek(0)
    return f.read().strip()


@contextlib.contextmanager
def _captured_stderr() -> Iterator[IO[str]]:
    """Collects what clang and libbcc print on fd 2, so it reaches the structured
    log instead of interleaving raw text with it."""
    sys.stderr.flush()
    with tempfile.TemporaryFile("w+") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _text(name: object) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


class Compiled:
    """The programs compiled, loaded and attached by bcc in this process."""

    def __init__(self, text: str, kernel_source: Path | None, kprobe_symbol: str | None) -> None:
        if kernel_source is not None:
            # bcc only compiles with a kernel tree; tracepoint programs need
            # none of its types, so a stub tree stands in.
            os.environ["BCC_KERNEL_SOURCE"] = str(kernel_source)
        try:
            from bcc import BPF
        except ImportError as exc:
            raise LoadError(
                "the bcc Python module is missing: install the distribution package "
                "(Debian/Ubuntu: python3-bpfcc) and run oomtrace with that Python"
            ) from exc
        with _captured_stderr() as compiler_output:
            try:
                self.bpf: Any = BPF(text=text)
            except Exception as exc:
                detail = _rewound(compiler_output)
                raise LoadError(
                    f"compiling or attaching the BPF programs failed: {exc}"
                    + (f"\n{detail}" if detail else "")
                ) from exc
            self.compiler_output = _rewound(compiler_output)
        # BPF links by hook, once relink() made them (pinnable attachments).
        self.links: dict[str, int] = {}
        self.kprobe_error: str | None = None
        if kprobe_symbol is not None:
            try:
                self.bpf.attach_kprobe(event=kprobe_symbol, fn_name="oomtrace_oom_kill_process")
            except Exception as exc:
                # The kernel may refuse (e.g. the symbol is on its kprobe blacklist).
                self.kprobe_error = f"attaching to {kprobe_symbol} failed: {exc}"

    def relink(self, tracefs: Path | None, kprobe_symbol: str | None) -> dict[str, str]:
        """Turns bcc's perf-event attachments into BPF links (kernel/links.py),
        which can be pinned to outlive the agent. bcc's attachment of a hook is
        closed just before its link is made, so for a few microseconds the hook
        is not traced: this runs only at a fresh load, never while a previous
        agent's programs are the ones tracing. A hook the kernel cannot link
        (BPF_LINK_CREATE on perf events needs v5.15) keeps bcc's attachment and
        is returned with the reason; it ends with the agent."""
        from oomtrace.kernel import links

        unlinked: dict[str, str] = {}
        if tracefs is not None:
            for tp in list(self.bpf.tracepoint_fds):
                hook = _text(tp)
                fn = self.bpf.funcs[b"tracepoint__" + _text(tp).replace(":", "__").encode()]
                try:
                    perf = links.tracepoint_event(tracefs, hook)
                except OSError as exc:
                    unlinked[hook] = f"perf_event_open: {exc}"
                    continue
                try:
                    self.bpf.detach_tracepoint(tp)
                    self.links[hook] = links.link_perf_event(fn.fd, perf)
                except OSError as exc:
                    unlinked[hook] = f"BPF_LINK_CREATE on a perf event: {exc.strerror}"
                    if tp not in self.bpf.tracepoint_fds:
                        self.bpf.attach_tracepoint(tp=tp, fn_name=fn.name)
                finally:
                    os.close(perf)
        # BPF_RAW_TRACEPOINT_OPEN's fd is a link already.
        for tp, fd in self.bpf.raw_tracepoint_fds.items():
            self.links[f"raw_tracepoint:{_text(tp)}"] = fd
        if kprobe_symbol is not None and self.kprobe_error is None:
            hook = f"kprobe:{kprobe_symbol}"
            fn = self.bpf.funcs[b"oomtrace_oom_kill_process"]
            try:
                perf = links.kprobe_event(kprobe_symbol)
            except OSError as exc:
                unlinked[hook] = f"perf_event_open: {exc}"
            else:
                try:
                    self.bpf.detach_kprobe(event=kprobe_symbol, fn_name=fn.name)
                    self.links[hook] = links.link_perf_event(fn.fd, perf)
                except OSError as exc:
                    unlinked[hook] = f"BPF_LINK_CREATE on a perf event: {exc.strerror}"
                    if not self.bpf.kprobe_fds:
                        self.bpf.attach_kprobe(event=kprobe_symbol, fn_name=fn.name)
                finally:
                    os.close(perf)
        return unlinked

    def handover_fds(self, maps: tuple[str, ...]) -> tuple[list[int], list[str]]:
        """The fds that hold the maps and keep each program attached, with names:
        "map:NAME", "link:HOOK" for a BPF link (pinnable), "perf:HOOK" for an
        attachment only an open perf event holds."""
        fds: list[int] = []
        names: list[str] = []
        for name in maps:
            try:
                fd = self.bpf[name].map_fd
            except KeyError:
                if name in OPTIONAL_MAPS:
                    continue
                raise
            names.append(f"map:{name}")
            fds.append(fd)
        linked = self.links
        for hook, fd in linked.items():
            names.append(f"link:{hook}")
            fds.append(fd)
        for table in (self.bpf.tracepoint_fds, self.bpf.raw_tracepoint_fds):
            for hook, fd in table.items():
                if fd not in linked.values():
                    names.append(f"perf:{_text(hook)}")
                    fds.append(fd)
        for event, by_fn in self.bpf.kprobe_fds.items():
            for fn, fd in by_fn.items():
                names.append(f"perf:{_text(event)}:{_text(fn)}")
                fds.append(fd)
        return fds, names

    def set_masks(self, traced: int, stop: int) -> None:
        table = self.bpf["traced_signals"]
        table[ctypes.c_int(0)] = table.Leaf(traced, stop)

    def commands_fds(self) -> tuple[int, int] | None:
        """The commands map and its full counter, when the program is loaded."""
        try:
            return self.bpf["commands"].map_fd, self.bpf["commands_full"].map_fd
        except KeyError:
            return None

    def open(self, callback: RawCallback) -> None:
        def on_record(_ctx: Any, data: Any, size: int) -> int:
            callback(ctypes.string_at(data, size))
            return 0

        # bcc keeps the ctypes callback alive for the buffer's lifetime.
        self.bpf["events"].open_ring_buffer(on_record)

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def lost(self, kind: int) -> int:
        table = self.bpf["lost_records"]
        return int(table.sum(table.Key(kind)).value)

    def ring_peak(self) -> tuple[int, int] | None:
        return None  # bcc's reader does not tell its backlog

    def close(self) -> None:
        self.bpf.cleanup()


# -- the child -------------------------------------------------------------------


def child_main(sock_fd: int) -> None:
    """Reads the request, compiles and attaches, hands over the fds, exits without
    bcc's cleanup. Never returns."""
    sock = socket.socket(fileno=sock_fd)
    try:
        request = json.loads(_read_all(sock))
        source = request["kernel_source"]
        compiled = Compiled(
            request["text"], Path(source) if source else None, request["kprobe_symbol"]
        )
        unlinked: dict[str, str] = {}
        if request.get("link"):
            tracefs = request.get("tracefs")
            unlinked = compiled.relink(Path(tracefs) if tracefs else None, request["kprobe_symbol"])
        fds, names = compiled.handover_fds(MAPS + OPTIONAL_MAPS + PINNED_MAPS)
        meta = {
            "names": names,
            "compiler_output": compiled.compiler_output,
            "kprobe_error": compiled.kprobe_error,
            "unlinked": unlinked,
        }
        socket.send_fds(sock, [json.dumps(meta).encode()], fds)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            sock.sendall(json.dumps({"error": str(exc), "type": type(exc).__name__}).encode())
    finally:
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(0)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


# -- the agent's side ------------------------------------------------------------


def load_in_child(
    text: str,
    kernel_source: Path | None,
    kprobe_symbol: str | None,
    *,
    tracefs: Path | None = None,
    link: bool = False,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Runs the child; returns the fds by name ("map:events", "link:...") and what it
    said (compiler_output, kprobe_error, unlinked). ``link``: attach with BPF links,
    to be pinned. Raises HandoverError."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # The directory that holds the oomtrace package: this file is oomtrace/kernel/loader.py.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as stderr, parent:
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from oomtrace.kernel.loader import child_main; "
                    "child_main(int(sys.argv[1]))",
                    str(child.fileno()),
                ],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env=env,
                close_fds=True,
            )
        finally:
            child.close()
        try:
            request = {
                "text": text,
                "kernel_source": kernel_source,
                "kprobe_symbol": kprobe_symbol,
                "tracefs": tracefs,
                "link": link,
            }
            parent.sendall(json.dumps(request, default=str).encode())
            parent.shutdown(socket.SHUT_WR)
            parent.settimeout(CHILD_TIMEOUT_S)
            first, fds, _flags, _addr = socket.recv_fds(parent, 1 << 16, MAX_FDS)
            for fd in fds:
                # Received without close-on-exec: no later child may keep a probe attached.
                os.set_inheritable(fd, False)
            message = first + (_read_all(parent) if first else b"")
        except (OSError, TimeoutError) as exc:
            proc.kill()
            raise HandoverError(f"the loader child did not answer: {exc}") from exc
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not message:
            _close_all(fds)
            stderr.seek(0)
            tail = stderr.read()[-2000:].decode(errors="replace").strip()
            raise HandoverError(
                f"the loader child exited ({proc.returncode}) without an answer"
                + (f": {tail}" if tail else "")
            )
    meta: dict[str, Any] = json.loads(message)
    if "error" in meta:
        _close_all(fds)
        raise HandoverError(meta["error"])
    names: list[str] = meta.pop("names")
    if len(names) != len(fds):
        _close_all(fds)
        raise HandoverError(f"the loader child sent {len(fds)} fds for {len(names)} names")
    return dict(zip(names, fds, strict=True)), meta


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


class _BatchAttr(ctypes.Structure):
    # union bpf_attr, BPF_MAP_*_BATCH (v5.6)
    _fields_ = (
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class _ElemAttr(ctypes.Structure):
    # union bpf_attr, BPF_MAP_*_ELEM
    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class _InfoAttr(ctypes.Structure):
    # union bpf_attr, BPF_OBJ_GET_INFO_BY_FD
    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info: all that is needed to size keys and values."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    )


def _bpf(cmd: int, attr: ctypes.Structure) -> None:
    bpf_call(cmd, attr)


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def possible_cpus() -> int:
    """What the kernel sizes per-CPU map values by: every possible CPU, online or not."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class BpfMap:
    """An array map driven through bpf(2): u32 keys, fixed-size values."""

    def __init__(self, fd: int, *, per_cpu: bool = False) -> None:
        self.fd = fd
        info = map_info(fd)
        if info.key_size != 4:
            raise HandoverError(f"map {info.name!r}: key of {info.key_size} bytes, not u32")
        self.value_size = info.value_size
        # Per-CPU values come as one slot per possible CPU, each 8-byte aligned.
        self.slot = (info.value_size + 7) & ~7 if per_cpu else info.value_size
        self.slots = possible_cpus() if per_cpu else 1

    def lookup(self, key: int) -> bytes:
        k = ctypes.c_uint32(key)
        value = ctypes.create_string_buffer(self.slot * self.slots)
        _bpf(
            BPF_MAP_LOOKUP_ELEM,
            _ElemAttr(map_fd=self.fd, key=ctypes.addressof(k), value=ctypes.addressof(value)),
        )
        return value.raw

    def sum_u64(self, key: int) -> int:
        raw = self.lookup(key)
        return sum(struct.unpack_from("<Q", raw, n * self.slot)[0] for n in range(self.slots))

    def update(self, key: int, value: bytes, *, flags: int = 0) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"value of {len(value)} bytes for a map of {self.value_size}")
        k = ctypes.c_uint32(key)
        v = ctypes.create_string_buffer(value, len(value))
        _bpf(
            BPF_MAP_UPDATE_ELEM,
            _ElemAttr(
                map_fd=self.fd, key=ctypes.addressof(k), value=ctypes.addressof(v), flags=flags
            ),
        )


class Commands:
    """The commands map (bpf/common.bpf.h) as the agent uses it: seeded with the
    processes that exec'd before the programs were attached, and its count of
    processes left out because it was full."""

    def __init__(self, fds: tuple[int, int]) -> None:
        self._map = BpfMap(fds[0])
        self._full = BpfMap(fds[1], per_cpu=True)

    def seed(self, tgid: int, value: bytes) -> bool:
        """Adds ``tgid``'s entry unless the kernel has one (an exec since the
        attach is newer than anything /proc said before). False when full."""
        try:
            self._map.update(tgid, value, flags=BPF_NOEXIST)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return True
            if exc.errno == errno.E2BIG:
                return False
            raise
        return True

    def full(self) -> int:
        return self._full.sum_u64(0)


class RingBuffer:
    """A BPF ring buffer read through mmap, as libbpf reads it: the consumer page
    (read-write), then the producer page and the data pages, which the kernel maps
    twice in a row so that a record that wraps reads as one slice.

    The positions are read and written through memoryview casts, which move a
    whole word at once, as the kernel does. struct packs and unpacks a u64 byte
    by byte, so each side could see the other's position half updated, and the
    kernel refused reservations with the ring nearly empty (measured with
    struct: 19 to 76 records lost per 100 000 kills at 5 000/s while the backlog
    never passed 13 KiB of 4 MiB; with the casts, none)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        size = map_info(fd).max_entries
        self.size = size
        self.mask = size - 1
        # The largest backlog a read found: how close the ring came to full.
        self.peak = 0
        self._cons = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._data = mmap.mmap(fd, PAGE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE)
        self._epoll = select.epoll()
        # Level-triggered: the kernel reports readable while consumer != producer.
        self._epoll.register(fd, select.EPOLLIN)
        self._consumer_pos = memoryview(self._cons).cast("Q")
        self._producer_pos = memoryview(self._data).cast("Q")
        # Record headers: u32 words, 8-byte aligned in the data pages.
        self._words = memoryview(self._data).cast("I")
        # The position just past the record being handed to the callback: what
        # the agent may commit once that record's kill is written out.
        self.record_end = self._consumer_pos[0]

    @property
    def consumer(self) -> int:
        return int(self._consumer_pos[0])

    @property
    def producer(self) -> int:
        return int(self._producer_pos[0])

    def rewind(self, to: int) -> bool:
        """Moves the consumer position back to ``to``, so the records from there on
        are read again, when the kernel has not yet reused their room. The kernel
        reserves only while producer - consumer stays within the ring, so once
        the consumer is back at ``to`` nothing past ``to + size`` can be written;
        a producer beyond that after the move means it was reused before."""
        cons = self._consumer_pos[0]
        if to >= cons:
            return to == cons
        if self._producer_pos[0] - to > self.size:
            return False
        self._consumer_pos[0] = to
        if self._producer_pos[0] - to > self.size:
            self._consumer_pos[0] = cons
            return False
        self.record_end = to
        return True

    def unread(self) -> tuple[int, int]:
        """(records, bytes) between the consumer and the producer, counted from
        the ring's own headers: this needs no knowledge of the records' layout.
        A record still being written (busy) counts as one."""
        cons, prod = self._consumer_pos[0], self._producer_pos[0]
        records = 0
        at = cons
        while at < prod:
            head = self._words[(PAGE + (at & self.mask)) // 4]
            if not head & RINGBUF_DISCARD:
                records += 1
            if head & RINGBUF_BUSY:
                break
            at += ((head & ~(RINGBUF_BUSY | RINGBUF_DISCARD)) + RINGBUF_HDR + 7) & ~7
        return records, prod - cons

    def consume(self, callback: RawCallback) -> int:
        data, words = self._data, self._words
        cons = self._consumer_pos[0]
        done = 0
        while True:
            prod = self._producer_pos[0]
            if cons >= prod:
                return done
            self.peak = max(self.peak, prod - cons)
            while cons < prod:
                at = PAGE + (cons & self.mask)
                head = words[at // 4]
                if head & RINGBUF_BUSY:
                    # Reserved but not yet committed: the commit wakes epoll again.
                    return done
                length = head & ~(RINGBUF_BUSY | RINGBUF_DISCARD)
                cons += (length + RINGBUF_HDR + 7) & ~7
                if not head & RINGBUF_DISCARD:
                    self.record_end = cons
                    callback(data[at + RINGBUF_HDR : at + RINGBUF_HDR + length])
                    done += 1
                # Released record by record, so the kernel can reuse the room at once.
                self._consumer_pos[0] = cons

    def poll(self, callback: RawCallback, timeout_ms: int) -> int:
        done = self.consume(callback)
        if done:
            return done
        try:
            self._epoll.poll(timeout_ms / 1000)
        except InterruptedError:
            return 0
        return self.consume(callback)

    def close(self) -> None:
        self._epoll.close()
        # The views hold the maps' buffers: mmap.close() refuses while they live.
        for view in (self._consumer_pos, self._producer_pos, self._words):
            view.release()
        self._cons.close()
        self._data.close()


class Handed:
    """The loaded programs as fds handed over by the child: the same operations as
    Compiled, without bcc."""

    def __init__(self, fds: dict[str, int], meta: dict[str, Any]) -> None:
        self.fds = fds
        self.compiler_output: str = meta.get("compiler_output") or ""
        self.kprobe_error: str | None = meta.get("kprobe_error")
        try:
            self._signals = BpfMap(fds["map:traced_signals"])
            self._lost = BpfMap(fds["map:lost_records"], per_cpu=True)
            self._ring = RingBuffer(fds["map:events"])
        except (KeyError, OSError, HandoverError) as exc:
            self.close()
            raise HandoverError(f"the handed-over maps cannot be used: {exc}") from exc
        self._callback: RawCallback | None = None
        # Hooks attached without a link (an older kernel): they end with the agent.
        self.unlinked: dict[str, str] = meta.get("unlinked") or {}
        resume, reported = fds.get("map:resume"), fds.get("map:reported")
        self._resume = BpfMap(resume) if resume is not None else None
        self._reported = reported
        self._batch_marks = True

    @property
    def ring(self) -> RingBuffer:
        return self._ring

    def read_resume(self) -> records.RawResume | None:
        if self._resume is None:
            return None
        return records.RawResume.from_buffer_copy(self._resume.lookup(0))

    def write_resume(self, value: records.RawResume) -> None:
        if self._resume is not None:
            self._resume.update(0, bytes(value))

    def mark_reported(self, kills: list[tuple[int, int]]) -> None:
        """Marks kills (ktime_ns, victim tid) written out. One BPF_MAP_UPDATE_BATCH
        for them all: the time between a sink's write and this mark is when a
        SIGKILL of the agent makes the next one report them again, so it is kept
        to one system call. Kernels before v5.6 lack the command: one call each."""
        if self._reported is None or not kills:
            return
        keys = (records.RawReportedKey * len(kills))(
            *(records.RawReportedKey(ktime_ns=t, victim_tid=tid) for t, tid in kills)
        )
        ones = (ctypes.c_uint8 * len(kills))(*([1] * len(kills)))
        if self._batch_marks:
            attr = _BatchAttr(
                keys=ctypes.addressof(keys),
                values=ctypes.addressof(ones),
                count=len(kills),
                map_fd=self._reported,
            )
            try:
                _bpf(BPF_MAP_UPDATE_BATCH, attr)
                return
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP):
                    raise
                self._batch_marks = False
        for key in keys:
            _bpf(
                BPF_MAP_UPDATE_ELEM,
                _ElemAttr(
                    map_fd=self._reported, key=ctypes.addressof(key), value=ctypes.addressof(ones)
                ),
            )

    def was_reported(self, ktime_ns: int, tid: int) -> bool:
        if self._reported is None:
            return False
        key = records.RawReportedKey(ktime_ns=ktime_ns, victim_tid=tid)
        value = ctypes.c_uint8(0)
        try:
            _bpf(
                BPF_MAP_LOOKUP_ELEM,
                _ElemAttr(
                    map_fd=self._reported, key=ctypes.addressof(key), value=ctypes.addressof(value)
                ),
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def set_masks(self, traced: int, stop: int) -> None:
        # struct oomtrace_signal_masks (records.RawSignalMasks)
        self._signals.update(0, struct.pack("=QQ", traced, stop))

    def commands_fds(self) -> tuple[int, int] | None:
        """The commands map and its full counter, when the program is loaded."""
        fd, full = self.fds.get("map:commands"), self.fds.get("map:commands_full")
        return (fd, full) if fd is not None and full is not None else None

    def open(self, callback: RawCallback) -> None:
        self._callback = callback

    def poll(self, timeout_ms: int) -> None:
        if self._callback is None:
            raise RuntimeError("poll before open")
        self._ring.poll(self._callback, timeout_ms)

    def lost(self, kind: int) -> int:
        return self._lost.sum_u64(kind)

    def ring_peak(self) -> tuple[int, int] | None:
        return self._ring.peak, self._ring.size

    def close(self) -> None:
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
        # The last fd of each perf event closes it, which detaches its program.
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}
