"""The agent as a service: readiness, watchdog, status, and SIGHUP reloads.

Signal handlers only set flags; the work happens in the pipeline thread's event
loop (Agent's on_tick), between events, where nothing else touches the sinks or
the filter. The watchdog keepalive comes from that loop too, and only while the
kernel reader thread is alive, so systemd restarts an agent that stopped
reading or stopped processing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

from oomtrace import configfile, log
from oomtrace.config import ConfigError, Settings
from oomtrace.notify import Notifier
from oomtrace.pipeline import Agent, EventFilter, rules_of
from oomtrace.sinks.fanout import SinkSet

STATUS_S: Final = 10.0

Reload = Callable[[], Settings]


class Lifecycle:
    def __init__(
        self, settings: Settings, sinks: SinkSet, notifier: Notifier, reload: Reload
    ) -> None:
        self.settings = settings
        self.sinks = sinks
        self.notifier = notifier
        self._reload = reload
        self._agent: Agent | None = None
        self._reload_requested = False
        self._next_status = 0.0
        self._log = log.get()
        self.reloads = 0

    def attach(self, agent: Agent) -> None:
        """From here on SIGINT/SIGTERM stop the agent cleanly (before, during the
        BPF compile, they simply end the process)."""
        self._agent = agent
        signal.signal(signal.SIGINT, self.on_stop_signal)
        signal.signal(signal.SIGTERM, self.on_stop_signal)

    # -- signal handlers (set flags only) ---------------------------------------

    def on_sighup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True

    def on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._agent is not None:
            self._agent.request_stop(signum, frame)

    def install_reload_handler(self) -> None:
        """Early, because SIGHUP's default action ends the process: a logrotate
        during start-up must not. The reload runs once the event loop turns."""
        signal.signal(signal.SIGHUP, self.on_sighup)

    # -- agent hooks (pipeline thread) -------------------------------------------

    def on_ready(self) -> None:
        self.notifier.ready(self.status_line())
        self._next_status = time.monotonic() + STATUS_S

    def on_stopping(self) -> None:
        self.notifier.stopping()

    def on_tick(self) -> None:
        now = time.monotonic()
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        if self._agent is not None and self._agent.healthy():
            self.notifier.keepalive(now)
        if now >= self._next_status and self.notifier.enabled:
            self._next_status = now + STATUS_S
            self.notifier.status(self.status_line())

    # -- work --------------------------------------------------------------------

    def reload(self) -> None:
        """Re-reads the configuration; applies what can change live, reopens the
        output files. A bad file changes nothing: the running settings stay."""
        self.notifier.reloading()
        try:
            new = self._reload()
            changes = self.sinks.reconfigure(new)
        except ConfigError as exc:
            self._log.error("reload_failed", error=str(exc), effect="kept the running settings")
            self.notifier.ready(f"reload failed, running as before: {exc}")
            return
        self.sinks.reopen()
        if self._agent is not None:
            self._agent.filter = EventFilter(new.pids, new.cgroups)
            self._agent.rules = rules_of(new)
        changed = configfile.changed_keys(self.settings, new)
        later = [k for k in changed if k not in configfile.live_keys()]
        if later:
            self._log.warning(
                "restart_required", keys=later, effect="these keep their old values until restart"
            )
        self.settings = new
        self.reloads += 1
        self._log.info("reloaded", changed=changed, sinks=self.sinks.names, **changes)
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        parts = []
        if self._agent is not None:
            plan = self._agent.probes.plan
            parts.append(f"tracing ({plan.tier} tier, {len(plan.hooks)} hooks)")
            parts.append(f"{self._agent.counters.events} events")
        sinks = []
        for name, s in self.sinks.stats().items():
            state = "" if s.get("connected") else " (down)"
            dropped = f" {s['dropped']} dropped" if s.get("dropped") else ""
            sinks.append(f"{name}{state}{dropped}")
        parts.append("sinks: " + (", ".join(sinks) or "none"))
        return "; ".join(parts)
