"""The classifier's decisions, table by table: each signal's cause, each OOM's scope, and the
plain-words explanation, on events shaped like the ones docs/events.md describes."""

from __future__ import annotations

from typing import Any

import pytest

from oomtrace import classify as classifier
from oomtrace.build import facts, with_verdict
from oomtrace.classify import Rules, oom_scope, signal_cause
from oomtrace.kernel.records import INFO_NOINFO, INFO_PRIV, INFO_SIGINFO
from oomtrace.schema import Cause

Event = dict[str, Any]
MiB = 1 << 20

UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
UID_ = UID.replace("-", "_")
CID = "4f9c1e5ad2b7c8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708"
CID_OTHER = "9a8b7c6d5e4f30211203f4e5d6c7b8a90123456789abcdef0123456789abcdef"
SANDBOX_ID = "e" * 64

POD_CGROUP = f"/kubepods/burstable/pod{UID}"
CONTAINER_CGROUP = f"{POD_CGROUP}/{CID}"
OTHER_CGROUP = f"{POD_CGROUP}/{CID_OTHER}"
SYSTEMD_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
SESSION = "/user.slice/user-1000.slice/session-3.scope"
SYSTEMD = {"pid": 1, "comm": "systemd"}


def classify(
    event: Event, rules: Rules, *, info_kind: int | None = None, node_wide: bool = False
) -> None:
    """The pipeline's classify step: facts from the event, the verdict written back."""
    with_verdict(
        event, classifier.classify(facts(event, info_kind=info_kind, node_wide=node_wide), rules)
    )


# -- event builders ------------------------------------------------------------------


def k8s(container: str | None, container_id: str, *, sandbox: bool = False) -> Event:
    """The victim/trigger/sender `k8s` object as the CRI resolver fills it."""
    return {
        "namespace": "shop",
        "pod": "web-7d9",
        "pod_uid": UID,
        "container": None if sandbox else container,
        "container_id": container_id,
        "image": None if sandbox else "registry.example/web:1.4",
        "qos_class": "Burstable",
        "runtime": "containerd",
        "attempt": 0,
        "sandbox": sandbox,
    }


def exited(code: int = 137, *, observed: bool = True) -> Event:
    return {
        "observed": observed,
        "status": code - 128,
        "signal": code - 128,
        "code": code,
        "kill_to_exit_ms": 0.25,
    }


def sender(
    comm: str,
    *,
    pid: int = 4300,
    tty: str | None = None,
    parents: list[Event] | None = None,
    cgroup: str = SESSION,
    kube: Event | None = None,
) -> Event:
    return {
        "pid": pid,
        "tid": pid,
        "comm": comm,
        "uid": 0,
        "ppid": (parents or [SYSTEMD])[0]["pid"],
        "oom_score_adj": 0,
        "cgroup": cgroup,
        "cmdline": None,
        "parents": [SYSTEMD] if parents is None else parents,
        "k8s": kube,
        "tty": tty,
    }


def signal_event(
    snd: Event,
    *,
    name: str = "SIGKILL",
    code: str = "SI_USER",
    from_kernel: bool = False,
    victim_k8s: Event | None = None,
    exit_info: Event | None = None,
) -> Event:
    number = {"SIGKILL": 9, "SIGTERM": 15, "SIGSEGV": 11}[name]
    return {
        "schema": "oomtrace.event/v1",
        "type": "signal",
        "time": "2026-11-24T18:36:36.693689046Z",
        "ktime_ns": 7615775242265,
        "node": {"hostname": "node-1"},
        "signal": {
            "number": number,
            "name": name,
            "code": code,
            "from_kernel": from_kernel,
            "errno": 0,
            "group": True,
            "result": "delivered",
        },
        "sender": snd,
        "victim": {
            "pid": 4242,
            "tid": 4242,
            "comm": "sleep",
            "uid": 1000,
            "ppid": 4000,
            "oom_score_adj": 0,
            "cgroup": CONTAINER_CGROUP if victim_k8s else SESSION,
            "cmdline": ["sleep", "300"],
            "k8s": victim_k8s,
            "exit": exited(128 + number) if exit_info is None else exit_info,
        },
        "enrichment": {"errors": []},
    }


def process(comm: str, pid: int, cgroup: str | None, kube: Event | None) -> Event:
    return {
        "pid": pid,
        "tid": pid,
        "comm": comm,
        "uid": 0,
        "ppid": 10280,
        "oom_score_adj": 0,
        "cgroup": cgroup,
        "cmdline": None,
        "parents": [{"pid": 10280, "comm": "containerd-shim"}, SYSTEMD],
        "k8s": kube,
    }


def oom_event(
    *,
    memcg: str | None = CONTAINER_CGROUP,
    victim_k8s: Event | None = None,
    victim_cgroup: str = CONTAINER_CGROUP,
    trigger: Event | None = None,
    memcg_stat: Event | None = None,
    group_kill: bool = False,
    oom_score_adj: int = 0,
) -> Event:
    if memcg_stat is None and memcg is not None:
        memcg_stat = {
            "path": memcg,
            "limit_bytes": 32 * MiB,
            "usage_bytes": 32 * MiB,
            "usage_source": "kernel_at_kill",
            "working_set_bytes": 31 * MiB,
            "stat": {"anon": 30 * MiB, "file": 1 * MiB, "inactive_file": MiB // 2},
            "events": {"oom": 1, "oom_kill": 1},
        }
    return {
        "schema": "oomtrace.event/v1",
        "type": "oom_kill",
        "time": "2026-11-24T18:36:36.693689046Z",
        "ktime_ns": 7615775242265,
        "node": {"hostname": "node-1"},
        "group_kill": group_kill,
        "victim": {
            "pid": 10287,
            "tid": 10287,
            "comm": "python3",
            "uid": 0,
            "ppid": 10280,
            "oom_score_adj": oom_score_adj,
            "cgroup": victim_cgroup,
            "cmdline": None,
            "k8s": victim_k8s,
            "memory": {
                "total_vm_kb": 76660,
                "anon_rss_kb": 65152,
                "file_rss_kb": 5364,
                "shmem_rss_kb": 0,
                "pgtables_kb": 188,
                "source": "mark_victim",
            },
            "exit": exited(),
        },
        "signal": {
            "number": 9,
            "name": "SIGKILL",
            "code": "SI_KERNEL",
            "from_kernel": True,
            "errno": 0,
            "group": True,
            "result": "delivered",
        },
        "trigger": trigger,
        "oom": {
            "context_id": "10287-7615775284969",
            "tier": "tracepoint",
            "memcg": memcg,
            "memcg_source": "kernel_counters" if memcg else None,
            "memcg_stat": memcg_stat,
        },
        "enrichment": {"errors": []},
    }


WEB = k8s("web", CID)
VICTIM_ITSELF = process("python3", 10287, CONTAINER_CGROUP, WEB)


# -- signal causes -------------------------------------------------------------------

CRON_SH = sender(
    "sh", parents=[{"pid": 812, "comm": "cron"}, {"pid": 640, "comm": "cron"}, SYSTEMD]
)
SHIM = {"pid": 3100, "comm": "containerd-shim"}

SIGNAL_CASES = [
    pytest.param(
        signal_event(sender("python3", parents=[{"pid": 900, "comm": "pytest"}, SYSTEMD])),
        INFO_NOINFO,
        Rules(),
        "cgroup_kill",
        id="sigkill-noinfo-is-cgroup-kill",
    ),
    pytest.param(
        signal_event(sender("python3", parents=[{"pid": 900, "comm": "pytest"}, SYSTEMD])),
        INFO_SIGINFO,
        Rules(),
        "process",
        id="sigkill-with-siginfo-is-not-cgroup-kill",
    ),
    pytest.param(
        signal_event(
            sender("python3", parents=[{"pid": 900, "comm": "pytest"}, SYSTEMD]), name="SIGTERM"
        ),
        INFO_NOINFO,
        Rules(),
        "process",
        id="sigterm-noinfo-is-not-cgroup-kill",
    ),
    pytest.param(
        signal_event(sender("sleep", pid=4242), code="SI_KERNEL", from_kernel=True),
        INFO_PRIV,
        Rules(),
        "kernel",
        id="kernel-si-kernel",
    ),
    pytest.param(
        signal_event(
            sender("python3", pid=4242), name="SIGSEGV", code="SEGV_MAPERR", from_kernel=True
        ),
        INFO_SIGINFO,
        Rules(),
        "kernel",
        id="kernel-segv-maperr",
    ),
    pytest.param(
        signal_event(sender("earlyoom")),
        INFO_SIGINFO,
        Rules(),
        "userspace_oom_killer",
        id="userspace-earlyoom",
    ),
    pytest.param(
        signal_event(sender("systemd-oomd", cgroup="/system.slice/systemd-oomd.service")),
        INFO_SIGINFO,
        Rules(),
        "userspace_oom_killer",
        id="userspace-systemd-oomd",
    ),
    pytest.param(
        signal_event(sender("oomd", cgroup="/system.slice/oomd.service")),
        INFO_SIGINFO,
        Rules(),
        "userspace_oom_killer",
        id="userspace-oomd",
    ),
    pytest.param(
        signal_event(sender("runc", parents=[SHIM, SYSTEMD]), victim_k8s=WEB),
        INFO_SIGINFO,
        Rules(),
        "runtime_stop",
        id="runtime-runc",
    ),
    pytest.param(
        signal_event(sender("crun", parents=[{"pid": 3000, "comm": "conmon"}]), victim_k8s=WEB),
        INFO_SIGINFO,
        Rules(),
        "runtime_stop",
        id="runtime-crun",
    ),
    pytest.param(
        signal_event(sender("conmon"), victim_k8s=WEB),
        INFO_SIGINFO,
        Rules(),
        "runtime_stop",
        id="runtime-conmon",
    ),
    pytest.param(
        signal_event(sender("containerd-shim", pid=3100), victim_k8s=WEB),
        INFO_SIGINFO,
        Rules(),
        "runtime_stop",
        id="runtime-containerd-shim",
    ),
    pytest.param(
        signal_event(sender("runc:[2:INIT]", parents=[SHIM, SYSTEMD]), victim_k8s=WEB),
        INFO_SIGINFO,
        Rules(),
        "runtime_stop",
        id="runtime-runc-init",
    ),
    pytest.param(
        signal_event(
            sender("bash", tty="pts/5", parents=[{"pid": 3000, "comm": "script"}, SYSTEMD])
        ),
        INFO_SIGINFO,
        Rules(),
        "manual",
        id="manual-tty",
    ),
    pytest.param(
        signal_event(
            sender(
                "kill",
                parents=[{"pid": 4100, "comm": "bash"}, {"pid": 900, "comm": "sshd"}, SYSTEMD],
            )
        ),
        INFO_SIGINFO,
        Rules(),
        "manual",
        id="manual-sshd-in-chain-no-tty",
    ),
    pytest.param(
        signal_event(
            sender(
                "bash",
                parents=[{"pid": 2100, "comm": "tmux: server"}, SYSTEMD],
            )
        ),
        INFO_SIGINFO,
        Rules(),
        "manual",
        id="manual-tmux-in-chain-no-tty",
    ),
    pytest.param(
        signal_event(CRON_SH),
        INFO_SIGINFO,
        Rules(),
        "process",
        id="process-cron-sh",
    ),
    pytest.param(
        signal_event(sender("my-killer", cgroup="/system.slice/my-killer.service")),
        INFO_SIGINFO,
        Rules(configured={"my-killer": Cause.USERSPACE_OOM_KILLER}),
        "userspace_oom_killer",
        id="configured-extra-name",
    ),
    pytest.param(
        signal_event(sender("my-killer", cgroup="/system.slice/my-killer.service")),
        INFO_SIGINFO,
        Rules(),
        "process",
        id="configured-name-unknown-by-default",
    ),
    pytest.param(
        # runc kill --all on cgroup v2 writes cgroup.kill.
        signal_event(sender("runc", parents=[SHIM, SYSTEMD]), victim_k8s=WEB),
        INFO_NOINFO,
        Rules(),
        "cgroup_kill",
        id="precedence-cgroup-kill-beats-runtime-name",
    ),
    pytest.param(
        signal_event(
            sender("runc", pid=4242, parents=[SHIM, SYSTEMD]),
            name="SIGSEGV",
            code="SEGV_MAPERR",
            from_kernel=True,
        ),
        INFO_SIGINFO,
        Rules(),
        "kernel",
        id="precedence-from-kernel-beats-runtime-name",
    ),
    pytest.param(
        signal_event(
            sender("earlyoom", pid=4242), name="SIGSEGV", code="SEGV_MAPERR", from_kernel=True
        ),
        INFO_SIGINFO,
        Rules(),
        "kernel",
        id="precedence-from-kernel-beats-userspace-killer-name",
    ),
    pytest.param(
        signal_event(
            sender("python3", pid=4242, tty="pts/3", parents=[{"pid": 900, "comm": "sshd"}]),
            name="SIGSEGV",
            code="SEGV_MAPERR",
            from_kernel=True,
        ),
        INFO_SIGINFO,
        Rules(),
        "kernel",
        id="precedence-from-kernel-beats-tty",
    ),
]


@pytest.mark.parametrize(("event", "info_kind", "rules", "cause"), SIGNAL_CASES)
def test_signal_cause(event: Event, info_kind: int, rules: Rules, cause: str) -> None:
    assert signal_cause(facts(event, info_kind=info_kind, node_wide=False), rules) == cause
    classify(event, rules, info_kind=info_kind)
    assert event["cause"] == cause
    assert "oom" not in event


# -- OOM scopes ----------------------------------------------------------------------

SCOPE_CASES = [
    pytest.param(CONTAINER_CGROUP, False, "container", id="cgroupfs-container"),
    pytest.param(
        f"/kubepods/burstable/pod{UID}/crio-{CID}", False, "container", id="cgroupfs-crio"
    ),
    pytest.param(POD_CGROUP, False, "pod", id="cgroupfs-pod"),
    pytest.param(f"/kubepods/pod{UID}", False, "pod", id="cgroupfs-guaranteed-pod"),
    pytest.param("/kubepods", False, "kubepods", id="cgroupfs-kubepods"),
    pytest.param("/kubepods/besteffort", False, "kubepods", id="cgroupfs-qos-besteffort"),
    pytest.param(
        f"{SYSTEMD_POD}/cri-containerd-{CID}.scope", False, "container", id="systemd-container"
    ),
    pytest.param(SYSTEMD_POD, False, "pod", id="systemd-pod"),
    pytest.param("/kubepods.slice/kubepods-burstable.slice", False, "kubepods", id="systemd-qos"),
    pytest.param("/kubepods.slice", False, "kubepods", id="systemd-kubepods"),
    pytest.param("/system.slice/foo.service", False, "cgroup", id="host-service"),
    pytest.param("/", False, "node", id="root-memcg"),
    pytest.param(None, True, "node", id="no-memcg-node-wide"),
    pytest.param(None, False, None, id="no-memcg-unknown"),
]


@pytest.mark.parametrize(("memcg", "node_wide", "scope"), SCOPE_CASES)
def test_oom_scope(memcg: str | None, node_wide: bool, scope: str | None) -> None:
    event = oom_event(memcg=memcg, victim_k8s=WEB, trigger=VICTIM_ITSELF)
    assert oom_scope(facts(event, info_kind=INFO_PRIV, node_wide=node_wide)) == scope
    classify(event, Rules(), info_kind=INFO_PRIV, node_wide=node_wide)
    assert event["cause"] == "oom_kill"
    assert event["oom"]["scope"] == scope


# -- explanations --------------------------------------------------------------------

DOC_STAT = {  # the memcg of the example in docs/events.md
    "path": "/oomsmoke",
    "limit_bytes": 67108864,
    "usage_bytes": 67108864,
    "usage_source": "kernel_at_kill",
    "working_set_bytes": 67100672,
    "stat": {"anon": 55373824, "file": 8192, "inactive_file": 8192, "active_file": 0},
    "events": {"oom_kill": 1, "under_oom": 0, "oom_kill_disable": 0, "failcnt": 412},
}
NODE = "/oomtrace-node-3f2a1b"
CRON_PYTHON = process("python", 4711, f"{NODE}/system.slice/cron.service", None)

EXPLANATION_CASES = [
    pytest.param(
        oom_event(victim_k8s=WEB, trigger=VICTIM_ITSELF),
        False,
        (
            "Container web (pod shop/web-7d9) was killed by the kernel OOM killer: ",
            f"its container memcg {CONTAINER_CGROUP} reached its 32 MiB limit "
            "(anon 30 MiB, file 1 MiB)",
            "; the allocation came from the victim itself.",
        ),
        ("with the process it chose", "exit code"),
        id="oom-pod-victim-itself",
    ),
    pytest.param(
        oom_event(victim_k8s=WEB, trigger=process("sh", 10290, CONTAINER_CGROUP, k8s("web", CID))),
        False,
        ("the allocation came from sh in the same container",),
        ("victim itself", "in pod"),
        id="oom-trigger-same-container",
    ),
    pytest.param(
        oom_event(
            memcg=POD_CGROUP,
            victim_k8s=k8s("sidecar", CID),
            trigger=process("dd", 10301, OTHER_CGROUP, k8s("app", CID_OTHER)),
            oom_score_adj=1000,
        ),
        False,
        (
            "Container sidecar (pod shop/web-7d9)",
            f"its pod memcg {POD_CGROUP} reached its 32 MiB limit",
            "the allocation came from container app in pod shop/web-7d9",
            "; oom_score_adj 1000.",
        ),
        ("same container",),
        id="oom-trigger-other-container-in-pod",
    ),
    pytest.param(
        oom_event(
            memcg=NODE,
            victim_k8s=WEB,
            victim_cgroup=f"{NODE}/kubepods/besteffort/pod{UID}/{CID}",
            trigger=CRON_PYTHON,
            oom_score_adj=-997,
        ),
        False,
        (
            f"its cgroup memcg {NODE} reached",
            "the allocation came from host process python (pid 4711) in "
            f"{NODE}/system.slice/cron.service.",
        ),
        ("oom_score_adj", "same container"),
        id="oom-trigger-host-process",
    ),
    pytest.param(
        oom_event(
            memcg="/oomsmoke",
            victim_cgroup="/oomsmoke",
            trigger=process("python3", 10287, "/oomsmoke", None),
            memcg_stat=DOC_STAT,
        ),
        False,
        (
            "Process python3 (pid 10287, cgroup /oomsmoke) was killed by the kernel OOM killer",
            "its cgroup memcg /oomsmoke reached its 64 MiB limit (anon 53 MiB, file 0 MiB)",
            "the allocation came from the victim itself",
        ),
        ("Container", "pod"),
        id="oom-host-victim",
    ),
    pytest.param(
        oom_event(
            memcg="/oomsmoke",
            victim_cgroup="/oomsmoke",
            trigger=process("bash", 10280, "/oomsmoke", None),
            memcg_stat=DOC_STAT,
        ),
        False,
        ("the allocation came from bash in the same cgroup",),
        ("host process",),
        id="oom-host-trigger-same-cgroup",
    ),
    pytest.param(
        oom_event(
            memcg=POD_CGROUP,
            victim_k8s=k8s(None, SANDBOX_ID, sandbox=True),
            victim_cgroup=f"{POD_CGROUP}/{SANDBOX_ID}",
            trigger=process("dd", 10301, OTHER_CGROUP, k8s("app", CID_OTHER)),
        ),
        False,
        ("The sandbox (pause) process of pod shop/web-7d9 was killed by the kernel OOM killer",),
        ("Container",),
        id="oom-sandbox-victim",
    ),
    pytest.param(
        oom_event(memcg=None, victim_k8s=WEB, trigger=CRON_PYTHON),
        True,
        ("the node ran out of memory (global OOM)",),
        ("memcg", "limit"),
        id="oom-node-scope",
    ),
    pytest.param(
        oom_event(memcg=None, victim_k8s=WEB, trigger=None),
        False,
        ("the limit that was hit is unknown", "the allocating task is unknown"),
        ("global OOM",),
        id="oom-scope-and-trigger-unknown",
    ),
    pytest.param(
        {
            **oom_event(victim_k8s=WEB, trigger=VICTIM_ITSELF),
            "oom": {
                "context_id": "10287-7615775284969",
                "tier": "kprobe",
                "memcg": CONTAINER_CGROUP,
                "memcg_source": "kprobe",
                "memcg_stat": None,
                "limit_bytes": 48 * MiB,
            },
        },
        False,
        ("reached its 48 MiB limit; the allocation",),
        ("anon ?",),
        id="oom-limit-without-memcg-stat",
    ),
    pytest.param(
        oom_event(
            victim_k8s=WEB,
            trigger=process("sh", 10290, CONTAINER_CGROUP, k8s("web", CID)),
            group_kill=True,
        ),
        False,
        (
            "Container web (pod shop/web-7d9) was killed by the kernel OOM killer with the process "
            "it chose: ",
        ),
        (),
        id="oom-group-kill",
    ),
    pytest.param(
        oom_event(
            victim_k8s=WEB | {"container_pid": 10280},
            trigger=process("sh", 10290, CONTAINER_CGROUP, k8s("web", CID)),
            group_kill=True,
        )
        | {"group_kill_via": "pid_namespace_exit"},
        False,
        (
            "Container web (pod shop/web-7d9) was killed by the kernel OOM killer with the process "
            "it chose: its container's main process (pid 10280) was killed, and the kernel ends "
            "every process of a pid namespace when its init dies: ",
        ),
        (),
        id="oom-group-kill-via-pid-namespace-exit",
    ),
    pytest.param(
        signal_event(CRON_SH),
        False,
        (
            "Process sleep (pid 4242, cgroup /user.slice/user-1000.slice/session-3.scope) was "
            "sent SIGKILL (exit code 137) by sh (pid 4300, uid 0).",
        ),
        (),
        id="signal-exit-observed",
    ),
    pytest.param(
        signal_event(CRON_SH, exit_info=exited(observed=False)),
        False,
        ("was sent SIGKILL by sh (pid 4300, uid 0).",),
        ("exit code",),
        id="signal-exit-not-observed",
    ),
    pytest.param(
        signal_event(CRON_SH, name="SIGTERM"),
        False,
        ("was sent SIGTERM (exit code 143) by sh",),
        ("137",),
        id="signal-sigterm-exit-143",
    ),
    pytest.param(
        signal_event(sender("runc", parents=[SHIM, SYSTEMD]), victim_k8s=WEB),
        False,
        (
            "Container web (pod shop/web-7d9) was sent SIGKILL (exit code 137) by the container "
            "runtime (runc (pid 4300, uid 0)): the kubelet stopping or evicting it.",
        ),
        (),
        id="signal-runtime-stop-pod-victim",
    ),
    pytest.param(
        signal_event(sender("bash", tty="pts/5", parents=[{"pid": 3000, "comm": "script"}])),
        False,
        ("by bash (pid 4300, uid 0) from an interactive session on pts/5.",),
        (),
        id="signal-manual-tty",
    ),
]


@pytest.mark.parametrize(("event", "node_wide", "expected", "absent"), EXPLANATION_CASES)
def test_explanation(
    event: Event, node_wide: bool, expected: tuple[str, ...], absent: tuple[str, ...]
) -> None:
    info_kind = INFO_PRIV if event["type"] == "oom_kill" else INFO_SIGINFO
    classify(event, Rules(), info_kind=info_kind, node_wide=node_wide)
    text = event["explanation"]
    for part in expected:
        assert part in text
    for part in absent:
        assert part not in text
