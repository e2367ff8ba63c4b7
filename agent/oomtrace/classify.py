"""Why a process died: the cause of every kill, and a plain-words explanation.

Causes (docs/events.md lists them with their evidence):
  oom_kill              the kernel OOM killer; `oom.scope` says at which level
  cgroup_kill           someone wrote cgroup.kill (the kernel sent SIGKILL without a siginfo)
  userspace_oom_killer  systemd-oomd, earlyoom, oomd, ... or a configured name
  runtime_stop          runc, crun, conmon, a containerd or CRI-O shim: the kubelet
                        stopping or evicting a container through the runtime
  manual                the sender chain leads to an interactive session
  kernel                another kernel-generated signal (a fault: SIGSEGV, SIGBUS, ...)
  process               any other process, named in `sender`
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from oomtrace.host.kubepath import parse_kube_cgroup
from oomtrace.kernel.records import INFO_NOINFO

Event = dict[str, Any]

USERSPACE_OOM_KILLERS: Final = frozenset(
    {"systemd-oomd", "earlyoom", "oomd", "nohang", "low-memory-mon", "lmkd"}
)
# comm is at most 15 characters: "containerd-shim-runc-v2" shows as "containerd-shim".
RUNTIMES: Final = frozenset(
    {"runc", "crun", "conmon", "containerd-shim", "containerd", "crio", "youki", "runsc", "kubelet"}
)
# A chain through one of these came from a person at a terminal or over ssh.
INTERACTIVE: Final = frozenset({"sshd", "login", "tmux: server", "tmux", "screen", "SCREEN", "su"})


@dataclass(frozen=True, slots=True)
class Rules:
    """Names that mark a sender; extendable from the configuration."""

    userspace_oom_killers: frozenset[str] = USERSPACE_OOM_KILLERS
    runtimes: frozenset[str] = RUNTIMES
    interactive: frozenset[str] = INTERACTIVE
    extra: dict[str, str] = field(default_factory=dict)


def _chain(sender: Event) -> list[str]:
    return [sender.get("comm") or ""] + [p.get("comm") or "" for p in sender.get("parents") or []]


def _runtime_name(comm: str, rules: Rules) -> bool:
    return comm in rules.runtimes or comm.startswith(("runc:", "containerd-shim"))


def signal_cause(event: Event, rules: Rules, info_kind: int | None) -> str:
    sender = event.get("sender") or {}
    signal = event.get("signal") or {}
    comm = sender.get("comm") or ""
    if signal.get("name") == "SIGKILL" and info_kind == INFO_NOINFO:
        # In-kernel send_sig(SIGKILL, task, 0): cgroup.kill is the one a user
        # reaches; kill(2) always passes a siginfo.
        return "cgroup_kill"
    if signal.get("from_kernel"):
        return "kernel"
    if comm in rules.extra:
        return rules.extra[comm]
    if comm in rules.userspace_oom_killers:
        return "userspace_oom_killer"
    if _runtime_name(comm, rules):
        return "runtime_stop"
    if sender.get("tty") or any(c in rules.interactive for c in _chain(sender)):
        return "manual"
    return "process"


def oom_scope(event: Event, *, node_wide: bool) -> str | None:
    """container, pod, kubepods, node or cgroup: where the limit that was hit sits.
    `node_wide`: the kernel said no memcg limit was involved."""
    oom = event.get("oom") or {}
    memcg = oom.get("memcg")
    if memcg is None:
        return "node" if node_wide else None
    kube = parse_kube_cgroup(memcg)
    if kube is None:
        return "node" if memcg == "/" else "cgroup"
    if kube.role == "container":
        return "container"
    if kube.role in ("pod", "conmon"):
        # CRI-O's conmon runs in its own scope inside the pod's cgroup.
        return "pod"
    return "kubepods"


# -- explanations --------------------------------------------------------------


def _mib(value: object) -> str:
    return f"{value / 1048576:.0f} MiB" if isinstance(value, int) else "?"


def _place(proc: Event) -> str:
    k8s = proc.get("k8s") or {}
    pod = f"{k8s.get('namespace') or '?'}/{k8s.get('pod') or k8s.get('pod_uid') or '?'}"
    if k8s.get("sandbox"):
        return f"The sandbox (pause) process of pod {pod}"
    if k8s and (k8s.get("container") or k8s.get("container_id")):
        name = k8s.get("container") or k8s["container_id"][:12]
        return f"Container {name} (pod {pod})"
    if k8s:
        return f"A process of pod {pod} outside its containers ({proc.get('comm')})"
    return f"Process {proc.get('comm')} (pid {proc.get('pid')}, cgroup {proc.get('cgroup') or '?'})"


def _same_container(a: Event, b: Event) -> bool:
    ka, kb = a.get("k8s") or {}, b.get("k8s") or {}
    if ka and kb:
        return bool(ka.get("container_id")) and ka.get("container_id") == kb.get("container_id")
    return bool(a.get("cgroup")) and a.get("cgroup") == b.get("cgroup")


def _trigger_words(victim: Event, trigger: Event | None) -> str:
    if not trigger:
        return "the allocating task is unknown"
    if trigger.get("pid") == victim.get("pid"):
        return "the allocation came from the victim itself"
    if _same_container(victim, trigger):
        where = "container" if victim.get("k8s") else "cgroup"
        return f"the allocation came from {trigger.get('comm')} in the same {where}"
    k8s = trigger.get("k8s")
    if k8s:
        pod = f"{k8s.get('namespace') or '?'}/{k8s.get('pod') or k8s.get('pod_uid') or '?'}"
        if k8s.get("sandbox"):
            return f"the allocation came from the sandbox of pod {pod}"
        name = k8s.get("container") or (k8s.get("container_id") or "")[:12]
        if name:
            return f"the allocation came from container {name} in pod {pod}"
        return f"the allocation came from {trigger.get('comm')} in pod {pod}"
    return (
        f"the allocation came from host process {trigger.get('comm')} "
        f"(pid {trigger.get('pid')}) in {trigger.get('cgroup') or '?'}"
    )


def _oom_explanation(event: Event) -> str:
    victim = event.get("victim") or {}
    oom = event.get("oom") or {}
    scope = oom.get("scope")
    stat = oom.get("memcg_stat") or {}
    parts = stat.get("stat") or {}
    if scope == "node":
        why = "the node ran out of memory (global OOM)"
    elif oom.get("memcg"):
        limit = stat.get("limit_bytes") or oom.get("limit_bytes")
        why = f"its {scope or 'cgroup'} memcg {oom['memcg']} reached its {_mib(limit)} limit"
        if parts:
            why += f" (anon {_mib(parts.get('anon'))}, file {_mib(parts.get('file'))})"
    else:
        why = "the limit that was hit is unknown"
    head = f"{_place(victim)} was killed by the kernel OOM killer"
    if event.get("group_kill"):
        head += " with the process it chose"
    adj = victim.get("oom_score_adj")
    chosen = f"; oom_score_adj {adj}" if isinstance(adj, int) and adj > 0 else ""
    return f"{head}: {why}; {_trigger_words(victim, event.get('trigger'))}{chosen}."


_CAUSE_WORDS: Final = {
    "cgroup_kill": "by a write to cgroup.kill from {sender}",
    "userspace_oom_killer": "by the userspace OOM killer {sender}",
    "runtime_stop": "by the container runtime ({sender}): the kubelet stopping or evicting it",
    "manual": "by {sender} from an interactive session{tty}",
    "kernel": "by the kernel ({code}), e.g. a fault in the process itself",
    "process": "by {sender}",
}


def _signal_explanation(event: Event, cause: str) -> str:
    victim = event.get("victim") or {}
    sender = event.get("sender") or {}
    signal = event.get("signal") or {}
    who = f"{sender.get('comm')} (pid {sender.get('pid')}, uid {sender.get('uid')})"
    tty = f" on {sender['tty']}" if sender.get("tty") else ""
    how = _CAUSE_WORDS.get(cause, "by {sender}").format(
        sender=who, tty=tty, code=signal.get("code")
    )
    exit_info = victim.get("exit") or {}
    code = f" (exit code {exit_info['code']})" if exit_info.get("observed") else ""
    return f"{_place(victim)} was sent {signal.get('name')}{code} {how}."


def classify(
    event: Event, rules: Rules, *, info_kind: int | None = None, node_wide: bool = False
) -> None:
    """Adds `cause`, `oom.scope` and `explanation` to an oom_kill or signal event."""
    if event["type"] == "oom_kill":
        event["cause"] = "oom_kill"
        event["oom"]["scope"] = oom_scope(event, node_wide=node_wide)
        event["explanation"] = _oom_explanation(event)
    elif event["type"] == "signal":
        cause = signal_cause(event, rules, info_kind)
        event["cause"] = cause
        event["explanation"] = _signal_explanation(event, cause)
