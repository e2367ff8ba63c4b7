"""Start-up: check privileges and the kernel, load the probes, wire the sinks, run."""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Callable
from pathlib import Path

from oomtrace import log, privileges, runtimes
from oomtrace.config import ConfigError, Settings
from oomtrace.cri.resolver import CriResolver
from oomtrace.host import mountinfo
from oomtrace.kernel import features
from oomtrace.kernel import pins as pins_mod
from oomtrace.kernel.probes import LoadError, Plan, Probes, assemble, plan
from oomtrace.metrics import Metrics
from oomtrace.notify import Notifier
from oomtrace.pipeline import Agent
from oomtrace.sinks import Sink
from oomtrace.sinks.fanout import SinkSet
from oomtrace.state import StateFile
from oomtrace.systemd import Lifecycle
from oomtrace.tracing import stop_tracing, under_service_manager
from oomtrace.usage import EXIT_FAILURE, fail


def check_privileges() -> None:
    caps = privileges.effective_caps()
    missing = privileges.missing_for_bpf(caps, privileges.last_cap())
    if missing:
        fail(
            f"missing capabilities {', '.join(missing)}: loading BPF tracing programs needs "
            "them. Run as root (sudo oomtrace --follow) or grant them to the process."
        )
    # The /proc/<pid> files read (stat, status, cmdline, cgroup, oom_score_adj,
    # statm) are world-readable, unless /proc hides other users' processes.
    if hidepid() and not caps & (1 << privileges.CAP_SYS_PTRACE):
        log.get().warning(
            "limited_proc_access",
            missing=[privileges.NAMES[privileges.CAP_SYS_PTRACE]],
            effect="/proc is mounted with hidepid: other users' processes are invisible, "
            "so their command line, tty and parents are missing from events",
        )


def hidepid(path: str = "/proc/self/mountinfo") -> bool:
    """Whether this process's /proc is mounted with hidepid= (other than 0/off)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return False
    procs = [m for m in mountinfo.parse(text, {"proc"}) if m.mount == Path("/proc")]
    if not procs:
        return False
    # The last mount on /proc is the one in effect.
    options = dict(o.partition("=")[::2] for o in procs[-1].super_options)
    return options.get("hidepid", "0") not in ("0", "off")


# What the kubelet and container runtimes give themselves: the OOM killer takes
# anything else on the node first, so the agent survives to report the kill.
SELF_OOM_SCORE_ADJ = -999


def protect_from_oom_killer() -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(SELF_OOM_SCORE_ADJ))
    except OSError as exc:
        log.get().warning(
            "oom_score_adj_unchanged",
            wanted=SELF_OOM_SCORE_ADJ,
            reason=exc.strerror,
            effect="the OOM killer may choose oomtrace itself on this node",
        )


def _probe() -> features.KernelFeatures:
    try:
        tracefs = features.find_tracefs(mount=os.geteuid() == 0)
    except features.TracefsError as exc:
        fail(str(exc))
    return features.probe_kernel(tracefs)


def _plan(settings: Settings) -> tuple[features.KernelFeatures, Plan]:
    """What this kernel offers, and the programs to load on it."""
    kernel = _probe()
    try:
        return kernel, plan(
            kernel,
            tier=settings.tier,
            ringbuf_pages=settings.ringbuf_pages,
            signals=settings.signals,
            stop_signals=runtimes.STOP_SIGNALS,
            stop_senders=runtimes.SIGNALLING_RUNTIMES,
        )
    except (LoadError, ValueError) as exc:
        fail(str(exc))


def print_ebpf(settings: Settings) -> int:
    _kernel, p = _plan(settings)
    sys.stdout.write(assemble(p))
    return 0


def _outputs(settings: Settings) -> tuple[SinkSet, Metrics | None]:
    """Opens the sinks and the metrics endpoint before the slow BPF compile, so a
    file that cannot be written or a port in use stops start-up at once."""
    try:
        sinks = SinkSet.open(settings)
    except ConfigError as exc:
        fail(str(exc))
    if settings.metrics_listen is None:
        return sinks, None
    metrics = Metrics(sinks.stats)
    try:
        metrics.serve(settings.metrics_listen)
    except OSError as exc:
        sinks.close(timeout=0)
        fail(f"metrics_listen: cannot listen on {settings.metrics_listen}: {exc.strerror}")
    return sinks, metrics


def run(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    """``reload`` gives the settings anew on SIGHUP (configfile.load)."""
    logger = log.get()
    # A stuck agent killed by the systemd watchdog (SIGABRT) leaves every
    # thread's Python stack in the journal.
    faulthandler.enable()
    check_privileges()
    sinks, metrics = _outputs(settings)
    protect_from_oom_killer()
    notifier = Notifier()
    lifecycle = Lifecycle(settings, sinks, notifier, reload or (lambda: settings))
    lifecycle.install_reload_handler()
    kernel, p = _plan(settings)
    root = settings.pin_dir or (pins_mod.DEFAULT_ROOT if under_service_manager() else None)
    state = StateFile(settings.state_dir)
    if root is not None and not state.lock():
        # Two agents on one ring buffer would each read half of it.
        p.missing["pins"] = (
            f"another agent holds {state.lock_path}; this one pins nothing and "
            "ends its kernel side with it"
        )
        root = None
    try:
        probes = Probes(p, pin_root=root)
    except LoadError as exc:
        fail(str(exc))
    if probes.compiler_output:
        logger.info("bpf_compiler_output", text=probes.compiler_output)
    for hook, reason in p.missing.items():
        logger.warning("hook_unavailable", hook=hook, reason=reason)
    names = settings.cri_endpoint != "none"
    k8s = CriResolver(settings.cri_endpoint if names else None, names=names)
    outputs: list[Sink] = [sinks] if metrics is None else [sinks, metrics]
    agent = Agent(
        settings,
        probes,
        outputs,
        k8s=k8s,
        vocabulary=kernel.vocabulary,
        on_ready=lifecycle.on_ready,
        on_tick=lifecycle.on_tick,
        on_stopping=lifecycle.on_stopping,
        state=state if root is not None else None,
    )
    lifecycle.attach(agent)
    try:
        status = agent.run()
    except Exception:
        logger.exception("agent_failed")
        return EXIT_FAILURE
    if probes.pinned and not settings.keep_tracing_when_stopped and not under_service_manager():
        # Run by hand: stopping it stops tracing. A service leaves that to its
        # ExecStopPost=, which knows whether a restart follows.
        stop_tracing(settings)
    return status
