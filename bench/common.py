"""What every benchmark shares: the C load generator, the agent and peer tracers as
subprocesses, /proc readings, statistics and the results table.

Benchmarks run as root on the machine they measure. Setups that are compared run
alternately in the same invocation, several times, and medians are reported, so
that a noisy neighbour slows every setup alike instead of one of them.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
CSRC = Path(__file__).resolve().parent / "csrc" / "stormer.c"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
READY_TIMEOUT = 120.0
F_SETPIPE_SZ = 1031

Json = dict[str, Any]


# -- command line and environment ------------------------------------------------


def _exit_on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def parser(description: str) -> argparse.ArgumentParser:
    # A bench stopped with SIGTERM unwinds, so its agents and tracers are stopped too.
    signal.signal(signal.SIGTERM, _exit_on_term)
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--short",
        action="store_true",
        help="a quick pass for CI: small counts, one round; checks the bench works, "
        "its timings mean little",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    return p


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark loads BPF programs and makes cgroups: run it as root")


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Linux {platform.release()}, {platform.machine()}"


def stormer() -> Path:
    """The C load generator, compiled once per source version into the temp dir."""
    source = CSRC.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"oomtrace-bench-{digest}" / "stormer"
    if out.exists():
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("a C compiler (cc) is needed to build bench/csrc/stormer.c")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(CSRC)], check=True)
    tmp.rename(out)
    return out


def run_stormer(*args: str | int | float | Path, timeout: float = 600.0) -> Json:
    done = subprocess.run(
        [str(stormer()), *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result: Json = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def stub_kernel_tree(workdir: Path) -> Path:
    """The repo's stub headers plus linux/sched.h (TASK_COMM_LEN), which bcc's own
    tools include: enough for them to compile on a kernel without headers."""
    tree = workdir / "kernel-stub"
    if not tree.exists():
        shutil.copytree(ROOT / "bpf" / "include", tree)
        (tree / "include" / "linux" / "sched.h").write_text(
            "#ifndef _LINUX_SCHED_H\n#define _LINUX_SCHED_H\n#define TASK_COMM_LEN 16\n#endif\n"
        )
    return tree


def kernel_has_kprobes() -> bool:
    return any(
        Path(base, "kprobe_events").exists()
        for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    )


# -- /proc -----------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of all threads of a process, in clock ticks."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


def smaps_by_mapping(pid: int, top: int = 8) -> list[tuple[str, int, int]]:
    """(mapping, Rss kB, Anonymous kB) of the largest mappings of a process."""
    rss: dict[str, int] = {}
    anon: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):
            parts = line.split()
            name = parts[5] if len(parts) > 5 else "[anon]"
            name = Path(name).name if name.startswith("/") else name
        elif head == "Rss:":
            rss[name] = rss.get(name, 0) + int(line.split()[1])
        elif head == "Anonymous:":
            anon[name] = anon.get(name, 0) + int(line.split()[1])
    ranked = sorted(rss.items(), key=lambda kv: -kv[1])[:top]
    return [(n, kb, anon.get(n, 0)) for n, kb in ranked]


def other_signal_tracers() -> int:
    """BPF programs on signal tracepoints that this run did not load (another agent,
    a test suite): they tax every setup alike and are reported with the results."""
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return -1
    try:
        out = subprocess.run(
            [bpftool, "-j", "perf"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        links = json.loads(out or "[]")
    except (subprocess.SubprocessError, ValueError):
        return -1
    return sum(1 for link in links if str(link.get("tracepoint", "")).startswith("signal_"))


# -- statistics and tables -------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, as it is pasted into docs/performance.md."""
    cells = [[str(c) for c in header], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"### {title}", ""]
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


@dataclass
class Report:
    """What one bench prints: tables, then notes."""

    name: str
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: Json = field(default_factory=dict)

    def add(self, title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.tables.append(table(title, header, rows))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        out = [f"## {self.name}", "", f"machine: {machine()}", ""]
        out += self.tables
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def emit(self, json_path: Path | None) -> None:
        sys.stdout.write(self.render())
        sys.stdout.flush()
        if json_path is not None:
            json_path.write_bytes(orjson.dumps({"name": self.name, **self.data}))


# -- the agent -------------------------------------------------------------------


class Agent:
    """`python -m oomtrace --follow` with JSON logs on stderr, read by a thread, and
    JSON lines on stdout, written to a file by another thread that notes when each
    line was read (CLOCK_MONOTONIC ns). The stdout pipe is enlarged so that a busy
    bench never makes the agent wait on its writes."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        module: str = "oomtrace",
        env: dict[str, str] | None = None,
    ) -> None:
        self.out_path = workdir / f"agent-{time.monotonic_ns()}.jsonl"
        cmd = [sys.executable, "-m", module, "--follow", "--format", "json"]
        cmd += ["--log-format", "json", *args]
        self.started_ns = time.monotonic_ns()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )
        self.logs: list[Json] = []
        self.read_ns = array.array("q")  # when each stdout line was read
        self.ready_ns: int | None = None
        self._ready = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_logs, daemon=True),
            threading.Thread(target=self._read_lines, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_logs(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                entry = {"event": "raw", "line": line.decode(errors="replace").rstrip()}
            self.logs.append(entry)
            if entry.get("event") == "ready":
                self.ready_ns = time.monotonic_ns()
                self._ready.set()

    def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
        with self.out_path.open("wb") as out:
            while chunk := os.read(fd, 1 << 20):
                now = time.monotonic_ns()
                out.write(chunk)
                out.flush()
                self.read_ns.extend([now] * chunk.count(b"\n"))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds from start to the `ready` log."""
        end = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"agent not ready: {self.logs[-5:]}")
        assert self.ready_ns is not None
        return (self.ready_ns - self.started_ns) / 1e9

    def stop(self, timeout: float = 60.0) -> Json:
        """Stops the agent; returns its `stopped` stats log ({} if it had none)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(10)
        return next((e for e in reversed(self.logs) if e.get("event") == "stopped"), {})

    def lines_read(self) -> int:
        return len(self.read_ns)

    def events(self) -> Iterator[tuple[int, Json]]:
        """(when it was read, event) for each line on stdout so far."""
        with self.out_path.open("rb") as f:
            for n, line in enumerate(f):
                if line.strip() and n < len(self.read_ns):
                    yield self.read_ns[n], orjson.loads(line)


# -- peer tracers ----------------------------------------------------------------


class Tracer:
    """A peer tool (bcc's, bpftrace) run with its output to a file; ready once a
    marker shows in that output."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        cmd: list[str],
        ready: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.path = workdir / f"{name}-{time.monotonic_ns()}.out"
        self._file = self.path.open("wb")
        self.ready_marker = ready.encode()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        end = time.monotonic() + timeout
        while True:
            head = self.path.read_bytes()[:65536]
            if self.ready_marker in head:
                return
            if self.proc.poll() is not None or time.monotonic() > end:
                tail = self.path.read_bytes()[-600:].decode(errors="replace").strip()
                self.stop()
                raise RuntimeError(tail.splitlines()[-1] if tail else "exited without output")
            time.sleep(0.05)

    def stop(self) -> int:
        """Stops the tool (SIGINT, as Ctrl-C); returns the lines it wrote."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._file.close()
        with self.path.open("rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        self.path.unlink()
        return lines


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="oomtrace-bench-") as d:
        yield Path(d)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
