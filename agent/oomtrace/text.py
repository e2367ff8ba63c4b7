"""The human view of an event: one block per event, for --follow on a terminal.

It leads with what an operator asks first: which pod and container, then what
killed it and why. Every value comes from the JSON event, so both views agree.
Every line passes through display.printable(): a name a process chose cannot
move the cursor, clear the screen or forge a line of its own.
"""

from __future__ import annotations

import sys

from oomtrace.display import printable
from oomtrace.schema import Event, duration, mib, pod_label


def _value(value: object) -> str:
    return "?" if value is None else str(value)


def _kb(value: object) -> str:
    return f"{value} kB" if isinstance(value, int) else "?"


def _who(proc: Event | None) -> str:
    if not proc:
        return "unknown"
    pid = proc.get("pid")
    comm = proc.get("comm") or "?"
    return f"{comm} (pid {pid})"


def _k8s(proc: Event | None) -> str | None:
    k8s = (proc or {}).get("k8s")
    if not k8s:
        return None
    pod = pod_label(k8s)
    if k8s.get("sandbox"):
        return f"pod {pod}, sandbox (pause) process"
    return f"pod {pod}, container {k8s.get('container') or k8s.get('container_id') or '?'}"


def _place(proc: Event | None) -> str:
    return _k8s(proc) or f"cgroup {printable((proc or {}).get('cgroup') or '?')}"


def _exit(victim: Event) -> str | None:
    ex = victim.get("exit")
    if ex is None:
        return None
    if not ex.get("observed"):
        return "not observed within the wait: the victim may be stuck"
    return f"exit code {ex.get('code')} after {ex.get('kill_to_exit_ms')} ms"


def _command(proc: Event) -> list[str]:
    """The process's command line, and for a victim when it started."""
    lines = []
    if proc.get("cmdline"):
        cut = " (cut)" if proc.get("cmdline_truncated") else ""
        lines.append(f"           cmdline {printable(' '.join(proc['cmdline']))}{cut}")
    age = proc.get("age_s")
    if age is not None:
        lines.append(f"           started {proc.get('started')} ({duration(age)} before the kill)")
    return lines


def _oom_lines(event: Event) -> list[str]:
    victim = event.get("victim") or {}
    oom = event.get("oom") or {}
    mem = victim.get("memory") or {}
    lines = [
        f"  victim   {_who(victim)}  oom_score_adj {_value(victim.get('oom_score_adj'))}  "
        f"anon {_kb(mem.get('anon_rss_kb'))}  file {_kb(mem.get('file_rss_kb'))}  "
        f"shmem {_kb(mem.get('shmem_rss_kb'))}",
        f"           cgroup {printable(victim.get('cgroup') or '?')}",
        *_command(victim),
    ]
    trigger = event.get("trigger")
    if trigger:
        lines.append(f"  trigger  {_who(trigger)}  in {_place(trigger)}")
        lines.extend(_command(trigger))
    stat = oom.get("memcg_stat") or {}
    if oom.get("memcg") or stat:
        parts = stat.get("stat") or {}
        lines.append(
            f"  memcg    {oom.get('memcg') or stat.get('path') or '?'}  "
            f"limit {mib(stat.get('limit_bytes'))}  usage {mib(stat.get('usage_bytes'))}  "
            f"working set {mib(stat.get('working_set_bytes'))}  "
            f"(anon {mib(parts.get('anon'))}, file {mib(parts.get('file'))})"
        )
    if event.get("group_kill"):
        via = (
            ", as its pid namespace's init died"
            if event.get("group_kill_via") == "pid_namespace_exit"
            else ""
        )
        lines.append(f"  killed with the chosen victim{via} (OOM context {oom.get('context_id')})")
    return lines


def _signal_lines(event: Event) -> list[str]:
    victim = event.get("victim") or {}
    sender = event.get("sender") or {}
    chain = " <- ".join(f"{p.get('comm')}({p.get('pid')})" for p in sender.get("parents") or [])
    lines = [
        f"  victim   {_who(victim)}  cgroup {printable(victim.get('cgroup') or '?')}",
        *_command(victim),
        f"  sender   {_who(sender)}  uid {sender.get('uid')}  tty {sender.get('tty') or '-'}  "
        f"in {_place(sender)}",
        *_command(sender),
    ]
    if chain:
        lines.append(f"           parents {chain}")
    stop = event.get("stop")
    if stop:
        steps = ", ".join(
            f"{s.get('signal')} from {(s.get('sender') or {}).get('comm')}"
            f"({(s.get('sender') or {}).get('pid')})"
            for s in stop.get("signals") or []
        )
        grace = stop.get("grace_s")
        lines.append(
            f"  stop     {stop.get('kind') or '?'}: {steps}"
            + (f"; SIGKILL after {duration(grace)}" if grace is not None else "")
        )
    return lines


def render(event: Event) -> str:
    kind = event.get("type")
    if kind == "lost":
        lost = event.get("lost") or {}
        line = f"{event.get('time')}  LOST {lost.get('count')} records ({lost.get('source')})"
        return printable(line, sys.maxsize) + "\n\n"
    victim = event.get("victim") or {}
    signal = event.get("signal") or {}
    title = "OOM KILL" if kind == "oom_kill" else f"{signal.get('name')} ({signal.get('code')})"
    head = f"{event.get('time')}  {title}  {_place(victim)}  {_who(victim)}"
    lines = [head]
    if event.get("explanation"):
        lines.append(f"  {event['explanation']}")
    lines.extend(_oom_lines(event) if kind == "oom_kill" else _signal_lines(event))
    ended = _exit(victim)
    if ended:
        lines.append(f"  exit     {ended}")
    errors = (event.get("enrichment") or {}).get("errors") or []
    lines.extend(f"  note     {e}" for e in errors)
    # Values were cut where they can be long; this pass escapes, never cuts.
    return "\n".join(printable(line, sys.maxsize) for line in lines) + "\n\n"
