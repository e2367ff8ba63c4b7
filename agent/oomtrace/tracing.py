"""Whether the kernel side outlives the agent: `oomtrace --stop-tracing`.

Kept apart from start-up so that the service's ExecStopPost=, which runs after
every stop, imports little and returns at once.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from oomtrace import log
from oomtrace.config import ConfigError, Settings
from oomtrace.kernel import pins as pins_mod
from oomtrace.state import StateFile


def under_service_manager() -> bool:
    """Run as a systemd service: its stop (ExecStopPost=oomtrace --stop-tracing)
    decides whether the kernel side goes, since only systemd knows whether a
    start follows."""
    return bool(os.environ.get("INVOCATION_ID"))


def restart_follows(environ: dict[str, str] | None = None) -> str | None:
    """Run by a unit's ExecStopPost=: why a start follows this stop, or None.

    systemd gives ExecStopPost= the way the service ended ($SERVICE_RESULT,
    $EXIT_STATUS) but not the job that stopped it. A failure (a crash, a
    SIGKILL, the watchdog's abort) is restarted by Restart=on-failure, except
    exit status 2 (RestartPreventExitStatus=2: a configuration it cannot use).
    A clean exit is either `systemctl stop` or `systemctl restart`: during a
    restart the unit's job, listed by `systemctl list-jobs` while this runs,
    is of type restart."""
    env = os.environ if environ is None else environ
    result = env.get("SERVICE_RESULT")
    if result is None:
        return None
    if result != "success":
        return None if env.get("EXIT_STATUS") == "2" else f"service result {result}"
    unit = _own_unit()
    try:
        out = subprocess.run(
            ["systemctl", "list-jobs", "--no-legend", "--plain", "--no-pager"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == unit and "restart" in fields[2]:
            return f"{unit} job {fields[2]}"
    return None


def _own_unit() -> str:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return "oomtrace.service"
    for line in text.splitlines():
        for part in reversed(line.rpartition(":")[2].split("/")):
            if part.endswith(".service"):
                return part
    return "oomtrace.service"


def stop_tracing(settings: Settings) -> int:
    """`oomtrace --stop-tracing`: removes the pinned kernel side, so that no
    program stays attached. As a unit's ExecStopPost= it keeps it when a start
    follows (a restart: the next agent reads on) or when the configuration says
    to keep tracing while stopped."""
    logger = log.get()
    root = settings.pin_dir or pins_mod.DEFAULT_ROOT
    restart = restart_follows()
    if restart is not None:
        logger.info("tracing_kept", reason=f"a restart follows ({restart})", pins=str(root))
        return 0
    if os.environ.get("SERVICE_RESULT") is not None and settings.keep_tracing_when_stopped:
        logger.info("tracing_kept", reason="keep_tracing_when_stopped", pins=str(root))
        return 0
    removed = pins_mod.remove_all(root)
    if removed:
        StateFile(settings.state_dir).stopped()
        logger.info("tracing_stopped", pin_sets_removed=removed, pins=str(root))
    return 0


def stop_tracing_main(load: Callable[[], Settings]) -> int:
    """`oomtrace --stop-tracing`. A configuration it cannot read does not stop it
    from removing the pins (a service that could not start has already said why,
    once): the defaults stand in, so only keep_tracing_when_stopped is lost."""
    try:
        settings = load()
    except ConfigError:
        settings = Settings()
    log.configure(settings.log_level, settings.log_format)
    return stop_tracing(settings)
