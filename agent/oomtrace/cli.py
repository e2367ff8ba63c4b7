"""Command line: `oomtrace --follow` and friends, `oomtrace config ...`.
Exit 2 for anything the user can fix."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from oomtrace import __version__, configfile, log
from oomtrace.config import (
    FORMATS,
    LOG_FORMATS,
    LOG_LEVELS,
    METRICS_DEFAULT_HOST,
    OVERFLOW_POLICIES,
    TIERS,
    ConfigError,
    Endpoint,
    parse_endpoint,
)
from oomtrace.sigdefs import parse_signal_list
from oomtrace.sinks.kinds import SINK_KINDS
from oomtrace.usage import fail

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
  event on a terminal or with --format text. They can go to files, a log
  shipper's unix socket and TCP port as well, all at once: each sink has its own
  queue, so none can hold up the kernel reader, and what a sink had to drop is
  reported in a `lost` event. Diagnostic logs go to stderr.
  A `ready` log line says which hooks are live once the probes are attached.

configuration:
  Defaults < the TOML file (--config or $OOMTRACE_CONFIG) < OOMTRACE_*
  environment variables < flags. Every setting has one name: `sink_queue_size`
  in the file, OOMTRACE_SINK_QUEUE_SIZE, --sink-queue-size. SIGHUP re-reads the
  file and reopens output files.
    oomtrace config default          print the commented default file
    oomtrace config check [FILE]     validate a file (exit 2 with the reason)
    oomtrace config show [FILE]      the settings that file and the environment give

examples:
  sudo oomtrace --follow
      stream every OOM kill and SIGKILL until Ctrl-C
  sudo oomtrace --follow --signals KILL,TERM,SEGV
      also report SIGTERM (exit 143) and SIGSEGV (exit 139)
  sudo oomtrace --follow --format json | jq 'select(.type=="oom_kill")'
      feed a JSON processor
  sudo oomtrace --follow --cgroup /kubepods --output /var/log/oomtrace.jsonl
      only kills involving pods, also appended to a file
  sudo oomtrace --follow --no-stdout --tcp 127.0.0.1:5140 --metrics-listen 9808
      to a log shipper on this node, with Prometheus metrics on 127.0.0.1:9808
  sudo oomtrace --duration 60 --pid 4242
      watch one process for a minute

exit status:
  0 stopped by SIGINT/SIGTERM, --duration or --count; 1 runtime failure;
  2 bad flags or configuration, missing privileges, or a kernel that cannot be traced.
"""

CONFIG_DESCRIPTION = """\
Work with oomtrace's configuration file (TOML).

  oomtrace config default          print the commented default file (what
                                   scripts/install writes to /etc/oomtrace/oomtrace.toml)
  oomtrace config check [FILE]     validate FILE: unknown keys, wrong types, bad
                                   values, output files that cannot be written,
                                   socket paths that cannot work. Exit 0 when
                                   valid, 2 with one line naming the problem.
  oomtrace config show [FILE]      the effective settings from FILE and the
                                   OOMTRACE_* environment, as TOML

FILE defaults to $OOMTRACE_CONFIG, else /etc/oomtrace/oomtrace.toml.
"""


T = TypeVar("T")
N = TypeVar("N", int, float)


def _flag(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser whose ValueError says what is wrong."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _positive(kind: type[N]) -> Callable[[str], N]:
    what = "a whole number" if kind is int else "a number"

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {what}") from None
        if value <= 0:
            raise ValueError(f"{text!r} must be positive")
        return value

    return _flag(parse)


def _listen(text: str) -> Endpoint | str:
    if text in ("", "off"):
        return ""  # explicitly off (None means the flag was not given)
    return parse_endpoint(text, default_host=METRICS_DEFAULT_HOST)


def build_parser() -> argparse.ArgumentParser:
    # Every setting defaults to None here: a flag only overrides what it names,
    # and the file and environment fill the rest (configfile.py).
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
        "--duration", type=_positive(float), metavar="SECONDS", help="stop after SECONDS"
    )
    mode.add_argument("--count", type=_positive(int), metavar="N", help="stop after N events")
    mode.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="read settings from this TOML file (default: $OOMTRACE_CONFIG, else none; "
        "the systemd unit uses /etc/oomtrace/oomtrace.toml)",
    )

    what = parser.add_argument_group("what to report")
    what.add_argument(
        "--signals",
        type=_flag(parse_signal_list),
        metavar="LIST",
        help="signals to trace, by name or number (default: KILL). Filtered in the kernel, "
        "so untraced signals cost nearly nothing; a signal other than KILL, which a "
        "handler may catch, also hooks the delivery of every signal (a little more per "
        "signal on the node). Example: KILL,TERM,SEGV",
    )
    what.add_argument(
        "--pid",
        type=_positive(int),
        action="append",
        metavar="PID",
        help="only events whose victim, sender or trigger is this process (repeatable)",
    )
    what.add_argument(
        "--cgroup",
        action="append",
        metavar="PATH",
        help="only events whose victim, sender or trigger is in this cgroup or below, "
        "e.g. /kubepods (repeatable)",
    )

    out = parser.add_argument_group("where events go (any number of sinks at once)")
    out.add_argument(
        "--format",
        choices=FORMATS,
        help="event format on stdout (default auto: text on a terminal, else json)",
    )
    out.add_argument(
        "--stdout",
        action=argparse.BooleanOptionalAction,
        help="events on stdout, the journal under systemd (default: on)",
    )
    for kind in SINK_KINDS:
        out.add_argument(
            *([kind.short_flag] if kind.short_flag else []),
            kind.flag,
            type=_flag(kind.parse),
            action="append",
            metavar=kind.metavar,
            help=kind.help,
        )
    out.add_argument(
        "--sink-queue-size",
        type=_positive(int),
        metavar="N",
        help="events each sink may hold while its consumer is slow or away (default 4096)",
    )
    out.add_argument(
        "--sink-overflow",
        choices=OVERFLOW_POLICIES,
        help="what a full sink queue drops, counted and reported (default drop_oldest)",
    )
    out.add_argument(
        "--metrics-listen",
        type=_flag(_listen),
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics, e.g. 9808 (127.0.0.1 unless a host is given; "
        "'off' to turn off what the file or environment set; default: off)",
    )
    out.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    out.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="stderr logs (default auto: console on a terminal, else JSON lines)",
    )
    out.add_argument(
        "--stats-interval",
        type=_positive(float),
        metavar="SECONDS",
        help="seconds between `stats` log lines (default 60)",
    )

    kube = parser.add_argument_group("kubernetes")
    kube.add_argument(
        "--cri-endpoint",
        metavar="URL",
        help="the container runtime's CRI socket, e.g. unix:///run/containerd/containerd.sock "
        "(default: containerd's or CRI-O's, whichever answers; 'none' to turn names off; "
        "pod UID and container ID still come from cgroup paths)",
    )
    kube.add_argument(
        "--node-name",
        metavar="NAME",
        help="the Kubernetes node's name, written as node.name in every event (a "
        "DaemonSet passes spec.nodeName as OOMTRACE_NODE_NAME; default: none, "
        "node.hostname is always there)",
    )
    kube.add_argument(
        "--kubelet-config",
        type=_flag(configfile.file_path),
        metavar="PATH",
        help="the kubelet's KubeletConfiguration file (its --config), whose memory eviction "
        "thresholds (evictionHard, evictionSoft, e.g. memory.available<100Mi) node.memory is "
        "held against, to tell an eviction from another stop (default "
        "/var/lib/kubelet/config.yaml, where kubeadm writes it; read again when it changes; "
        "absent at the default path, as on a node without a kubelet: no thresholds, said "
        "once; unreadable or invalid: no thresholds, with a warning)",
    )

    tuning = parser.add_argument_group("kernel and tuning")
    tuning.add_argument(
        "--tier",
        choices=TIERS,
        help="tracepoint: tracepoints only; kprobe: also oom_kill_process (adds the OOM "
        "memcg, constraint and limit); auto (default): the best this kernel offers",
    )
    tuning.add_argument(
        "--exit-wait",
        type=_positive(float),
        metavar="SECONDS",
        help="how long to wait for a victim to exit before reporting it as not exited (default 5)",
    )
    tuning.add_argument(
        "--ring-buffer-pages",
        type=_positive(int),
        metavar="N",
        help="kernel ring buffer size in pages, a power of two (default 1024 = 4 MiB). "
        "The stats log lines give the largest backlog seen (ring_buffer_peak_bytes): "
        "raise this if it comes near the size",
    )
    tuning.add_argument(
        "--record-queue-size",
        type=_positive(int),
        metavar="N",
        help="records held between the kernel reader and the pipeline (default 65536)",
    )
    parser.add_argument(
        "--stop-tracing",
        action="store_true",
        help="remove the kernel side a service left pinned (/sys/fs/bpf/oomtrace), so "
        "nothing stays attached, and exit; the service's stop runs it",
    )
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"oomtrace {__version__}")
    return parser


def flag_values(args: argparse.Namespace) -> dict[str, object]:
    """The settings the command line gave, by configfile key name."""
    values: dict[str, object] = {}
    for name in (*configfile.KEYS, *configfile.FLAG_ONLY):
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(value, list):
            value = frozenset(value) if name == "pid" else tuple(value)
        if name == "metrics_listen" and value == "":
            value = None  # --metrics-listen off: overrides the file and environment
        values[name] = value
    return values


def load_settings(args: argparse.Namespace) -> configfile.Loaded:
    path = configfile.config_path(args.config, os.environ)
    return configfile.load(flag_values(args), config=path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["config"]:
        return config_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.follow or args.duration or args.count or args.ebpf or args.stop_tracing):
        parser.error("nothing to do: pass --follow to stream events (or --duration / --count)")
    if args.stop_tracing:
        from oomtrace import tracing

        return tracing.stop_tracing_main(lambda: load_settings(args).settings)
    try:
        loaded = load_settings(args)
    except ConfigError as exc:
        fail(str(exc))
    settings = loaded.settings
    log.configure(settings.log_level, settings.log_format)
    for warning in loaded.warnings:
        log.get().warning("configuration", note=warning)

    # Imported here: the BPF side is not needed for `config` or a usage error.
    from oomtrace import startup

    if args.ebpf:
        return startup.print_ebpf(settings)
    return startup.run(settings, reload=lambda: load_settings(args).settings)


def config_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oomtrace config",
        description=CONFIG_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("check", "show", "default"))
    parser.add_argument("file", nargs="?", type=Path, help="the TOML file")
    args = parser.parse_args(argv)
    if args.action == "default":
        if args.file is not None:
            parser.error("`config default` takes no file")
        sys.stdout.write(configfile.default_text())
        return 0
    path = args.file or configfile.config_path(None, os.environ) or configfile.DEFAULT_PATH
    try:
        # check: the file alone (what it says on any machine); show: with the
        # OOMTRACE_* environment of this shell, as the agent would see it.
        loaded = configfile.load({}, config=path, use_environment=args.action == "show")
    except ConfigError as exc:
        fail(str(exc))
    if args.action == "show":
        sys.stdout.write(configfile.render(loaded.settings))
        return 0
    from oomtrace.sinks.fanout import specs

    sinks = ", ".join(s.name for s in specs(loaded.settings, stdout_is_tty=False)) or "none"
    metrics = loaded.settings.metrics_listen
    print(f"{path}: valid (sinks: {sinks}; metrics: {metrics or 'off'})")
    return 0
