"""Why a process died: the cause of every kill, and a plain-words explanation.

Causes (docs/events.md lists them with their evidence):
  oom_kill              the kernel OOM killer; `oom.scope` says at which level
  cgroup_kill           someone wrote cgroup.kill (the kernel sent SIGKILL without a siginfo)
  userspace_oom_killer  systemd-oomd, earlyoom, oomd, ... or a configured name
  eviction              a runtime stop of the whole pod while node memory was below a
                        kubelet eviction threshold (stops.py says both)
  runtime_stop          runc, crun, conmon, a containerd or CRI-O shim: the kubelet
                        stopping a container through the runtime (a deletion, a
                        probe restart, ...)
  manual                the sender chain leads to an interactive session
  kernel                another kernel-generated signal (a fault: SIGSEGV, SIGBUS, ...)
  process               any other process, named in `sender`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from oomtrace.display import printable
from oomtrace.host.kubepath import parse_kube_cgroup
from oomtrace.kernel.records import INFO_NOINFO
from oomtrace.runtimes import RUNTIMES, is_runtime
from oomtrace.schema import Cause, container_label, duration, mib, pod_label

USERSPACE_OOM_KILLERS: Final = frozenset(
    {"systemd-oomd", "earlyoom", "oomd", "nohang", "low-memory-mon", "lmkd"}
)
# A chain through one of these came from a person at a terminal or over ssh.
INTERACTIVE: Final = frozenset({"sshd", "login", "tmux: server", "tmux", "screen", "SCREEN", "su"})


@dataclass(frozen=True, slots=True)
class Rules:
    """Names that mark a sender. `configured` is the configuration's [causes]
    table (sender comm -> cause), which is consulted before the built-in names."""

    userspace_oom_killers: frozenset[str] = USERSPACE_OOM_KILLERS
    runtimes: frozenset[str] = RUNTIMES
    interactive: frozenset[str] = INTERACTIVE
    configured: Mapping[str, Cause] = field(default_factory=dict)


class Party(NamedTuple):
    """A process in one role of a kill, as the classifier needs it."""

    pid: int | None
    comm: str | None
    uid: int | None = None
    cgroup: str | None = None
    # The `k8s` object (docs/events.md), or None for a host process.
    k8s: Mapping[str, Any] | None = None
    tty: str | None = None
    # The comms of its parents, nearest first.
    parents: tuple[str, ...] = ()


class Facts(NamedTuple):
    """What the classifier decides from: the kill's roles and the kernel's evidence."""

    kind: str  # "oom_kill" | "signal"
    victim: Party
    sender: Party | None = None
    trigger: Party | None = None
    signal: str | None = None  # SIGKILL, ...
    signal_code: str | None = None  # SI_USER, SEGV_MAPERR, ...
    from_kernel: bool = False
    # How the kernel passed the siginfo (records.INFO_*); SEND_SIG_NOINFO is cgroup.kill's.
    info_kind: int | None = None
    victim_oom_score_adj: int | None = None
    exit_code: int | None = None  # the victim's, when its exit was observed
    group_kill: bool = False
    group_kill_via: str | None = None  # "oom_killer" | "pid_namespace_exit"
    # The kernel said no memcg limit was involved (a global OOM).
    node_wide: bool = False
    memcg: str | None = None  # the memcg whose limit was hit
    limit_bytes: int | None = None
    memcg_stat: Mapping[str, Any] | None = None  # memory.stat of that memcg
    # How long the victim had lived at the kill: a leak kills late, a limit too
    # small for start-up (or a crash loop) at once.
    victim_age_s: float | None = None
    # A runtime stop (the event's `stop`): "pod" or "container", the grace from
    # the first stop signal to the SIGKILL, that signal's name, and the node's
    # memory pressure then (stops.py's `stop.pressure`).
    stop_kind: str | None = None
    stop_grace_s: float | None = None
    stop_signal: str | None = None
    stop_pressure: Mapping[str, Any] | None = None


class Verdict(NamedTuple):
    cause: Cause
    explanation: str
    scope: str | None = None  # an OOM's `oom.scope`


def _chain(sender: Party) -> list[str]:
    return [sender.comm or "", *sender.parents]


def _runtime_name(comm: str, rules: Rules) -> bool:
    return is_runtime(comm, rules.runtimes)


def signal_cause(facts: Facts, rules: Rules) -> Cause:
    sender = facts.sender or Party(pid=None, comm=None)
    comm = sender.comm or ""
    if facts.signal == "SIGKILL" and facts.info_kind == INFO_NOINFO:
        # In-kernel send_sig(SIGKILL, task, 0): cgroup.kill is the one a user
        # reaches; kill(2) always passes a siginfo.
        return Cause.CGROUP_KILL
    if facts.from_kernel:
        return Cause.KERNEL
    if comm in rules.configured:
        return rules.configured[comm]
    if comm in rules.userspace_oom_killers:
        return Cause.USERSPACE_OOM_KILLER
    if _runtime_name(comm, rules):
        if facts.stop_kind == "pod" and facts.stop_pressure:
            return Cause.EVICTION
        return Cause.RUNTIME_STOP
    if sender.tty or any(c in rules.interactive for c in _chain(sender)):
        return Cause.MANUAL
    return Cause.PROCESS


def oom_scope(facts: Facts) -> str | None:
    """container, pod, kubepods, node or cgroup: where the limit that was hit sits."""
    if facts.memcg is None:
        return "node" if facts.node_wide else None
    kube = parse_kube_cgroup(facts.memcg)
    if kube is None:
        return "node" if facts.memcg == "/" else "cgroup"
    if kube.role == "container":
        return "container"
    if kube.role in ("pod", "conmon"):
        # CRI-O's conmon runs in its own scope inside the pod's cgroup.
        return "pod"
    return "kubepods"


# -- explanations --------------------------------------------------------------


def _place(proc: Party) -> str:
    k8s = proc.k8s
    if k8s:
        pod = pod_label(dict(k8s))
        if k8s.get("sandbox"):
            return f"The sandbox (pause) process of pod {_name(pod)}"
        if k8s.get("container") or k8s.get("container_id"):
            return f"Container {_name(container_label(dict(k8s)))} (pod {_name(pod)})"
        return f"A process of pod {_name(pod)} outside its containers ({_name(proc.comm)})"
    return f"Process {_name(proc.comm)} (pid {proc.pid}, cgroup {_name(proc.cgroup or '?')})"


def _same_container(a: Party, b: Party) -> bool:
    if a.k8s and b.k8s:
        cid = a.k8s.get("container_id")
        return bool(cid) and cid == b.k8s.get("container_id")
    return bool(a.cgroup) and a.cgroup == b.cgroup


def _trigger_words(victim: Party, trigger: Party | None) -> str:
    if trigger is None:
        return "the allocating task is unknown"
    if trigger.pid == victim.pid:
        return "the allocation came from the victim itself"
    if _same_container(victim, trigger):
        where = "container" if victim.k8s else "cgroup"
        return f"the allocation came from {_name(trigger.comm)} in the same {where}"
    k8s = trigger.k8s
    if k8s:
        pod = pod_label(dict(k8s))
        if k8s.get("sandbox"):
            return f"the allocation came from the sandbox of pod {_name(pod)}"
        name = container_label(dict(k8s))
        if name:
            return f"the allocation came from container {_name(name)} in pod {_name(pod)}"
        return f"the allocation came from {_name(trigger.comm)} in pod {_name(pod)}"
    return (
        f"the allocation came from host process {_name(trigger.comm)} "
        f"(pid {trigger.pid}) in {_name(trigger.cgroup or '?')}"
    )


def _oom_explanation(facts: Facts, scope: str | None) -> str:
    parts = (facts.memcg_stat or {}).get("stat") or {}
    if scope == "node":
        why = "the node ran out of memory (global OOM)"
    elif facts.memcg:
        limit = mib(facts.limit_bytes, 0)
        why = f"its {scope or 'cgroup'} memcg {_name(facts.memcg)} reached its {limit} limit"
        if parts:
            why += f" (anon {mib(parts.get('anon'), 0)}, file {mib(parts.get('file'), 0)})"
    else:
        why = "the limit that was hit is unknown"
    head = f"{_place(facts.victim)} was killed by the kernel OOM killer{_age(facts)}"
    if facts.group_kill_via == "pid_namespace_exit":
        main = (facts.victim.k8s or {}).get("container_pid")
        init = f"its container's main process (pid {main})" if main else "its pid namespace's init"
        head += (
            f" with the process it chose: {init} was killed, and the kernel ends every "
            "process of a pid namespace when its init dies"
        )
    elif facts.group_kill:
        head += " with the process it chose"
    adj = facts.victim_oom_score_adj
    chosen = f"; oom_score_adj {adj}" if isinstance(adj, int) and adj > 0 else ""
    trigger = _trigger_words(facts.victim, facts.trigger)
    return f"{head}: {why}; {trigger}{chosen}{_lives_on(facts.victim)}."


_CAUSE_WORDS: Final = {
    Cause.CGROUP_KILL: "by a write to cgroup.kill from {sender}",
    Cause.USERSPACE_OOM_KILLER: "by the userspace OOM killer {sender}",
    Cause.RUNTIME_STOP: "by the container runtime ({sender}): the kubelet stopping or evicting it",
    Cause.EVICTION: "by the container runtime ({sender}): the kubelet evicting its pod",
    Cause.MANUAL: "by {sender} from an interactive session{tty}",
    Cause.KERNEL: "by the kernel ({code}), e.g. a fault in the process itself",
    Cause.PROCESS: "by {sender}",
}


def _container_init(proc: Party) -> bool:
    """The process is its container's main process: pid 1 of the container's pid
    namespace, whose exit makes the kernel kill every other process in it."""
    k8s = proc.k8s or {}
    return proc.pid is not None and k8s.get("container_pid") == proc.pid


def _lives_on(victim: Party) -> str:
    """A container's child killed while its main process runs on: the container
    did not die, whatever its runtime later reports."""
    k8s = victim.k8s or {}
    if k8s.get("main_process") is False and k8s.get("main_process_lives"):
        main = k8s.get("container_pid")
        return (
            f"; it was a child process ({_name(victim.comm)}): the container's main process "
            f"(pid {main}) lives on"
        )
    return ""


def _age(facts: Facts) -> str:
    age = facts.victim_age_s
    return f" {duration(age)} after it started" if age is not None else ""


def _signal_explanation(facts: Facts, cause: Cause) -> str:
    sender = facts.sender or Party(pid=None, comm=None)
    who = f"{_name(sender.comm)} (pid {sender.pid}, uid {sender.uid})"
    tty = f" on {_name(sender.tty)}" if sender.tty else ""
    how = _CAUSE_WORDS.get(cause, "by {sender}").format(sender=who, tty=tty, code=facts.signal_code)
    if cause is Cause.KERNEL and facts.signal == "SIGKILL" and _container_init(sender):
        # zap_pid_ns_processes(): a dying pid namespace init takes the namespace along.
        how = (
            f"by the kernel as the container's main process {who} ended: its processes end with it"
        )
    code = f" (exit code {facts.exit_code})" if facts.exit_code is not None else ""
    lives = _lives_on(facts.victim)
    return f"{_place(facts.victim)} was sent {facts.signal}{code}{_age(facts)} {how}{lives}."


# The eviction manager overrides a hard eviction's grace to 1 s. Older kubelets
# passed it to StopContainer as it is; the current killContainer raises it to its
# 2 s minimum after the override. A stop's grace is measured between two records,
# so a little more than either is still one of them.
HARD_EVICTION_GRACE_S: Final = (0.5, 3.0)


def _threshold_words(threshold: Mapping[str, Any]) -> str:
    kind = "evictionSoft" if threshold.get("kind") == "soft" else "evictionHard"
    return f"{kind} {_name(threshold.get('signal'))}<{_name(threshold.get('quantity'))}"


def _stop_how(facts: Facts, runtime: str) -> str:
    """How the runtime stopped it: the grace it was given, or the stop signal it
    exited on."""
    if facts.signal != "SIGKILL":
        return f"by {runtime} with {facts.signal}, on which it exited"
    if facts.stop_grace_s is None:
        return f"by {runtime} with SIGKILL at once"
    first = facts.stop_signal or "its stop signal"
    return f"by {runtime} with {duration(facts.stop_grace_s)} grace ({first}, then SIGKILL)"


def _stop_explanation(facts: Facts, cause: Cause) -> str:
    sender = facts.sender or Party(pid=None, comm=None)
    runtime = _name(sender.comm)
    how = _stop_how(facts, runtime)
    code = f" (exit code {facts.exit_code})" if facts.exit_code is not None else ""
    place = _place(facts.victim)
    pressure = facts.stop_pressure or {}
    threshold = pressure.get("threshold") or {}
    signal = _name(threshold.get("signal") or "memory.available")
    if cause is Cause.EVICTION:
        before = pressure.get("seconds_before_stop") or 0
        grace = facts.stop_grace_s
        low, high = HARD_EVICTION_GRACE_S
        odd_grace = grace is not None and not low <= grace <= high
        odd_grace = odd_grace and threshold.get("kind") == "hard"
        likely = " likely" if before > 0 or odd_grace else ""
        when = "while" if before == 0 else f"{duration(before)} after"
        return (
            f"{place} was{likely} evicted by the kubelet{code}: its whole pod was stopped "
            f"{how} {when} node {signal} was {mib(pressure.get('available_bytes'), 0)}, "
            f"below {_threshold_words(threshold)}"
        )
    if not facts.victim.k8s:
        return f"{place} was stopped{code} {how}: a container runtime stopping its container"
    if facts.stop_kind == "pod":
        return (
            f"{place} was stopped{code} with its whole pod {how}: the pod was deleted, "
            "preempted or scaled down, not evicted (no kubelet memory eviction threshold "
            "was crossed)"
        )
    return (
        f"{place} alone was stopped{code} {how}, and its pod lives on: likely the kubelet "
        "restarting it after a failed liveness or startup probe, or a container kill "
        "through the CRI"
    )


def classify(facts: Facts, rules: Rules) -> Verdict:
    """The cause of a kill, an OOM's scope, and the explanation in plain words.
    A new cause is a member of schema.Cause, decided in signal_cause() and worded
    in _CAUSE_WORDS, with its case in tests/unit/test_classify.py."""
    if facts.kind == "oom_kill":
        scope = oom_scope(facts)
        return Verdict(Cause.OOM_KILL, _sentence(_oom_explanation(facts, scope)), scope)
    cause = signal_cause(facts, rules)
    if facts.stop_kind is not None and cause in (Cause.EVICTION, Cause.RUNTIME_STOP):
        return Verdict(cause, _sentence(_stop_explanation(facts, cause) + "."))
    return Verdict(cause, _sentence(_signal_explanation(facts, cause)))


# The explanation is meant to be printed (a chat alert, `jq -r`): it names
# processes, cgroups and pods whose names anyone may have chosen.
NAME_LIMIT: Final = 256
EXPLANATION_LIMIT: Final = 4096


def _name(value: object) -> str:
    return printable(value, NAME_LIMIT)


def _sentence(text: str) -> str:
    return printable(text, EXPLANATION_LIMIT)
