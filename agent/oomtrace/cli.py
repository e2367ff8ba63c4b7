"""Command line: `oomtrace --follow` and friends. Exit 2 for anything the user can fix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from oomtrace import __version__, log
from oomtrace.config import FORMATS, LOG_FORMATS, LOG_LEVELS, TIERS, ConfigError, Settings
from oomtrace.sigdefs import parse_signal_list

EXIT_USAGE = 2

DESCRIPTION = """\
oomtrace tells who killed a process, and why. It traces the kernel's OOM killer
and every SIGKILL on this node with eBPF, and prints one event per kill: the
victim with its cgroup and oom_score_adj, the task that triggered the OOM or the
process that sent the signal, and the memory cgroup's counters at that moment.
"""

EPILOG = """\
output:
  Events go to stdout: JSON lines (schema oomtrace.event/v1, see docs/events.md)
  when stdout is not a terminal or with --format json; a readable block per
  event on a terminal or with --format text. Diagnostic logs go to stderr.
  A `ready` log line says which hooks are live once the probes are attached.

examples:
  sudo oomtrace --follow
      stream every OOM kill and SIGKILL until Ctrl-C
  sudo oomtrace --follow --signals KILL,TERM,SEGV
      also report SIGTERM (exit 143) and SIGSEGV (exit 139)
  sudo oomtrace --follow --format json | jq 'select(.type=="oom_kill")'
      feed a JSON processor or a log shipper
  sudo oomtrace --follow --cgroup /kubepods --output /var/log/oomtrace.jsonl
      only kills involving pods, also appended to a file
  sudo oomtrace --duration 60 --pid 4242
      watch one process for a minute

exit status:
  0 stopped by SIGINT/SIGTERM, --duration or --count; 1 runtime failure;
  2 bad flags, missing privileges, or a kernel that cannot be traced.
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _signals(text: str) -> frozenset[int]:
    try:
        return parse_signal_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oomtrace",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_argument_group("what to run")
    mode.add_argument(
        "-f", "--follow", action="store_true", help="stream events until SIGINT/SIGTERM"
    )
    mode.add_argument(
        "--duration", type=_positive_float, metavar="SECONDS", help="stop after SECONDS"
    )
    mode.add_argument("--count", type=_positive_int, metavar="N", help="stop after N events")

    what = parser.add_argument_group("what to report")
    what.add_argument(
        "--signals",
        type=_signals,
        default=None,
        metavar="LIST",
        help="signals to trace, by name or number (default: KILL). Filtered in the kernel, "
        "so untraced signals cost nearly nothing. Example: KILL,TERM,SEGV",
    )
    what.add_argument(
        "--pid",
        type=_positive_int,
        action="append",
        default=[],
        metavar="PID",
        help="only events whose victim, sender or trigger is this process (repeatable)",
    )
    what.add_argument(
        "--cgroup",
        action="append",
        default=[],
        metavar="PATH",
        help="only events whose victim, sender or trigger is in this cgroup or below, "
        "e.g. /kubepods (repeatable)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="event format on stdout (auto: text on a terminal, else json)",
    )
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="also append JSON lines to PATH (repeatable)",
    )
    out.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    out.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="stderr logs (auto: console on a terminal, else JSON lines)",
    )

    kube = parser.add_argument_group("kubernetes")
    kube.add_argument(
        "--cri-endpoint",
        metavar="URL",
        default=None,
        help="the container runtime's CRI socket, e.g. unix:///run/containerd/containerd.sock "
        "(default: containerd's or CRI-O's, whichever answers; 'none' to turn names off; "
        "pod UID and container ID still come from cgroup paths)",
    )

    tuning = parser.add_argument_group("kernel and tuning")
    tuning.add_argument(
        "--tier",
        choices=TIERS,
        default="auto",
        help="tracepoint: tracepoints only; kprobe: also oom_kill_process (adds the OOM "
        "memcg, constraint and limit); auto: the best this kernel offers",
    )
    tuning.add_argument(
        "--exit-wait",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for a victim to exit before reporting it as not exited",
    )
    tuning.add_argument(
        "--ring-buffer-pages",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="kernel ring buffer size in pages, a power of two (default 1024 = 4 MiB)",
    )
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"oomtrace {__version__}")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    kwargs: dict[str, object] = {
        "format": args.format,
        "outputs": tuple(args.output),
        "pids": frozenset(args.pid),
        "cgroups": tuple(args.cgroup),
        "tier": args.tier,
        "duration": args.duration,
        "count": args.count,
        "exit_wait": args.exit_wait,
        "ringbuf_pages": args.ring_buffer_pages,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "cri_endpoint": args.cri_endpoint,
    }
    if args.signals is not None:
        kwargs["signals"] = args.signals
    return Settings(**kwargs).validate()  # type: ignore[arg-type]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    print(f"oomtrace: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.follow or args.duration or args.count or args.ebpf):
        parser.error("nothing to do: pass --follow to stream events (or --duration / --count)")
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        fail(str(exc))
    log.configure(settings.log_level, settings.log_format)

    from oomtrace import runner

    if args.ebpf:
        return runner.print_ebpf(settings)
    return runner.run(settings)
