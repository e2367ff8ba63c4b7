"""oomtrace's DaemonSet pod run as the kubelet runs it: the pod template read from
deploy/kubernetes/ and turned into the kubelet's CRI calls against the harness's containerd.

Nothing of the pod is written here a second time: host namespaces, volumes, environment,
capabilities, security context and resources all come from the manifest, converted field by
field as the kubelet converts them (pkg/kubelet/kuberuntime; each function below names its
counterpart). What a node would supply and a test node has not is passed in as a `Node`: its
name and address (the downward API's spec.nodeName and, for a host-network pod,
status.podIP), and where its containerd keeps its sockets.

Left out, as the agent uses none of them: the /etc/hosts and /dev/termination-log files the
kubelet mounts into every container, the cluster's service variables (the manifest turns
them off), image pulls (the image is imported) and the probes' schedule (a test calls the
liveness probe's endpoint itself).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from oomtrace.cri import api_pb2
from tests.support.agent import repo_root
from tests.support.memcg import memory_root

from .harness import CTR, K8S_NAMESPACE, Container, Containerd, Pod, unavailable_reason

MANIFESTS = repo_root() / "deploy" / "kubernetes"
Manifest = dict[str, Any]

# pkg/kubelet/qos/policy.go: what GetContainerOOMScoreAdjust gives a node-critical pod.
NODE_CRITICAL_OOM_SCORE_ADJ = -997
NODE_CRITICAL_CLASS = "system-node-critical"
# pkg/kubelet/cm: the CFS period the kubelet passes with every container (100 ms).
CPU_PERIOD_US = 100_000
_NAMESPACE_MODE = {True: api_pb2.NODE, False: api_pb2.POD}
_PROPAGATION = {
    None: api_pb2.PROPAGATION_PRIVATE,
    "None": api_pb2.PROPAGATION_PRIVATE,
    "HostToContainer": api_pb2.PROPAGATION_HOST_TO_CONTAINER,
    "Bidirectional": api_pb2.PROPAGATION_BIDIRECTIONAL,
}
_SECCOMP = {
    "RuntimeDefault": api_pb2.SecurityProfile.RuntimeDefault,
    "Unconfined": api_pb2.SecurityProfile.Unconfined,
    "Localhost": api_pb2.SecurityProfile.Localhost,
}
# The API server's generateName suffix: 5 characters from this alphabet
# (k8s.io/apiserver/pkg/storage/names, SimpleNameGenerator).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def manifests(directory: Path = MANIFESTS) -> list[Manifest]:
    """Every object in the directory, in the order `kubectl apply -f` takes the files."""
    objects: list[Manifest] = []
    for path in sorted(directory.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def find(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(matches) == 1, f"{len(matches)} {kind} objects named {name!r} in the manifests"
    return matches[0]


@dataclass
class Node:
    """What the kubelet knows of its node and a test node has to say."""

    name: str
    # A host-network pod's status.podIP is the node's address.
    ip: str
    # Host paths of the manifest that are elsewhere on this node (the test containerd's
    # socket directory stands in for /run/containerd).
    host_paths: Mapping[str, Path] = field(default_factory=dict)


@dataclass
class AgentPod:
    pod: Pod
    container: Container
    log: Path  # the container's CRI log file
    spec: Manifest  # the pod spec as the manifest gives it
    env: dict[str, str]  # the container's environment as the kubelet resolved it

    def lines(self) -> Iterator[tuple[str, str, str]]:
        """(time, stream, line) of the CRI log file, with partial lines joined: containerd
        writes "<RFC 3339 time> <stdout|stderr> <P|F> <text>" and cuts lines longer than
        16 KiB into P parts ended by an F."""
        if not self.log.exists():
            return
        pending: dict[str, str] = {}
        for raw in self.log.read_text(errors="replace").splitlines():
            stamp, stream, tag, text = [*raw.split(" ", 3), "", "", ""][:4]
            pending[stream] = pending.get(stream, "") + text
            if tag == "F":
                yield stamp, stream, pending.pop(stream)

    def json_lines(self, stream: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for stamp, name, text in self.lines():
            if name != stream:
                continue
            try:
                out.append((stamp, json.loads(text)))
            except json.JSONDecodeError:
                if stream == "stdout":
                    raise  # the event stream must be JSON lines only
        return out

    def events(self) -> list[dict[str, Any]]:
        return [event for _stamp, event in self.json_lines("stdout")]

    def logs(self) -> list[dict[str, Any]]:
        return [entry for _stamp, entry in self.json_lines("stderr")]

    def wait_log(self, event: str, timeout: float) -> tuple[str, dict[str, Any]]:
        """The first log entry named `event`, with the CRI log's time of it."""
        end = time.monotonic() + timeout
        while True:
            for stamp, entry in self.json_lines("stderr"):
                if entry.get("event") == event:
                    return stamp, entry
            assert time.monotonic() < end, f"no {event!r} log in {timeout} s: {self.tail()}"
            time.sleep(0.2)

    def tail(self, n: int = 8) -> list[str]:
        return [f"{stream}: {text[:300]}" for _t, stream, text in list(self.lines())[-n:]]


def run_daemonset_pod(
    containerd: Containerd, node: Node, objects: list[Manifest] | None = None
) -> AgentPod:
    """Runs the DaemonSet's pod on the harness's containerd as the kubelet would once the
    DaemonSet controller has made the pod for this node: its cgroup, RunPodSandbox,
    CreateContainer and StartContainer (kubeGenericRuntimeManager.SyncPod)."""
    objects = manifests() if objects is None else objects
    daemonset = find(objects, "DaemonSet")
    template = daemonset["spec"]["template"]
    spec: Manifest = template["spec"]
    [container_spec] = spec["containers"]  # the agent is the pod's only container
    namespace = daemonset["metadata"]["namespace"]
    suffix = "".join(random.choice(_NAME_ALPHABET) for _ in range(5))
    meta = {
        "name": f"{daemonset['metadata']['name']}-{suffix}",
        "namespace": namespace,
        "uid": str(uuid.uuid4()),
        "labels": dict(template["metadata"].get("labels") or {}),
        "annotations": dict(template["metadata"].get("annotations") or {}),
    }
    qos = qos_class(spec)
    parent = containerd.pod_cgroup(qos, meta["uid"])
    if containerd.systemd:
        containerd._pod_slice(parent, None)
    # Known to the harness, so that close() removes it even if a call below fails.
    containerd._cgroup_parents.add(parent)
    sandbox_config = _sandbox_config(containerd, meta, spec, parent)
    Path(sandbox_config.log_directory).mkdir(parents=True, exist_ok=True)
    response = containerd._rpc("RunPodSandbox", api_pb2.RunPodSandboxRequest(config=sandbox_config))
    pod = Pod(
        id=response.pod_sandbox_id,
        name=meta["name"],
        namespace=namespace,
        uid=meta["uid"],
        qos_class=qos,
        cgroup_parent=parent,
        config=sandbox_config,
    )
    containerd.pods[pod.id] = pod
    env = environment(container_spec, spec, meta, node)
    config = _container_config(
        containerd, objects, meta=meta, spec=spec, container=container_spec, env=env, node=node
    )
    created = containerd._rpc(
        "CreateContainer",
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=sandbox_config
        ),
    )
    container = Container(id=created.container_id, name=container_spec["name"], pod=pod, attempt=0)
    containerd.containers[container.id] = container
    containerd.start_container(container)
    return AgentPod(pod, container, containerd.log_path(container), spec, env)


# ---- the sandbox ---------------------------------------------------------------------


def _sandbox_config(containerd: Containerd, meta: Manifest, spec: Manifest, parent: str) -> Any:
    """generatePodSandboxConfig and generatePodSandboxLinuxConfig
    (pkg/kubelet/kuberuntime/kuberuntime_sandbox.go)."""
    pod_sc = spec.get("securityContext") or {}
    security = api_pb2.LinuxSandboxSecurityContext(
        namespace_options=namespaces(spec),
        privileged=any(
            (c.get("securityContext") or {}).get("privileged") is True for c in spec["containers"]
        ),
        # The kubelet gives every sandbox the runtime's default profile (kubernetes#84623).
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault),
    )
    if pod_sc.get("runAsUser") is not None:
        security.run_as_user.value = pod_sc["runAsUser"]
    labels = {
        **meta["labels"],  # newPodLabels: the pod's labels and the kubelet's own
        "io.kubernetes.pod.name": meta["name"],
        "io.kubernetes.pod.namespace": meta["namespace"],
        "io.kubernetes.pod.uid": meta["uid"],
    }
    log_dir = containerd.workdir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=meta["name"], uid=meta["uid"], namespace=meta["namespace"], attempt=0
        ),
        # No hostname for a host-network pod: it has the node's.
        hostname="" if spec.get("hostNetwork") else meta["name"],
        log_directory=str(log_dir),
        labels=labels,
        annotations={**meta["annotations"], "kubernetes.io/config.source": "api"},
        linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=parent, security_context=security),
    )


def namespaces(spec: Manifest) -> Any:
    """NamespacesForPod (pkg/kubelet/kuberuntime/util/util.go): the node's network, pid
    and ipc namespaces where the pod asks for them; otherwise the pod's, and for pid each
    container's own unless the pod shares one."""
    pid = (
        api_pb2.NODE
        if spec.get("hostPID")
        else api_pb2.POD
        if spec.get("shareProcessNamespace")
        else api_pb2.CONTAINER
    )
    return api_pb2.NamespaceOption(
        network=_NAMESPACE_MODE[bool(spec.get("hostNetwork"))],
        pid=pid,
        ipc=_NAMESPACE_MODE[bool(spec.get("hostIPC"))],
    )


def qos_class(spec: Manifest) -> str:
    """GetPodQOS (pkg/apis/core/v1/helper/qos): Guaranteed when every container's cpu and
    memory limits are set and its requests equal them, BestEffort with neither, else
    Burstable."""
    guaranteed, any_set = True, False
    for container in spec["containers"]:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = {**limits, **(resources.get("requests") or {})}
        any_set = any_set or bool(limits or requests)
        for name in ("cpu", "memory"):
            if name not in limits or parse_quantity(requests[name]) != parse_quantity(limits[name]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


# ---- the container -------------------------------------------------------------------


def environment(container: Manifest, spec: Manifest, meta: Manifest, node: Node) -> dict[str, str]:
    """makeEnvironmentVariables (pkg/kubelet/kubelet_pods.go): each variable in order, a
    fieldRef from the pod (podFieldSelectorRuntimeValue), and $(NAME) expanded from the
    variables before it (third_party/forked/golang/expansion)."""
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": node.name,
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": node.ip,
        # A host-network pod's IP is the node's (pkg/kubelet/kubelet_pods.go,
        # generateAPIPodStatus).
        "status.podIP": node.ip if spec.get("hostNetwork") else "",
    }
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "valueFrom" in var:
            ref = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = fields[ref]
        else:
            env[var["name"]] = expand(var.get("value", ""), env)
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """$(NAME) from env, $$ as a literal $, anything else left as it is."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i)) != -1:
            name = text[i + 2 : end]
            out.append(env.get(name, text[i : end + 1]))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _container_config(
    containerd: Containerd,
    objects: list[Manifest],
    *,
    meta: Manifest,
    spec: Manifest,
    container: Manifest,
    env: dict[str, str],
    node: Node,
) -> Any:
    """generateContainerConfig (pkg/kubelet/kuberuntime/kuberuntime_container.go) with
    generateLinuxContainerConfig (kuberuntime_container_linux.go)."""
    name = container["name"]
    labels = {
        "io.kubernetes.container.name": name,
        "io.kubernetes.pod.name": meta["name"],
        "io.kubernetes.pod.namespace": meta["namespace"],
        "io.kubernetes.pod.uid": meta["uid"],
    }
    annotations = {
        "io.kubernetes.container.restartCount": "0",
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.pod.terminationGracePeriod": str(
            spec.get("terminationGracePeriodSeconds", 30)
        ),
    }
    if container.get("ports"):
        annotations["io.kubernetes.container.ports"] = json.dumps(container["ports"])
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
        image=api_pb2.ImageSpec(image=container["image"], user_specified_image=container["image"]),
        # ExpandContainerCommandAndArgs: $(NAME) from the container's environment. Empty:
        # the image's entry point and command.
        command=[expand(word, env) for word in container.get("command") or []],
        args=[expand(word, env) for word in container.get("args") or []],
        working_dir=container.get("workingDir", ""),
        envs=[api_pb2.KeyValue(key=k, value=v.encode()) for k, v in env.items()],
        mounts=mounts(containerd, objects, meta=meta, spec=spec, container=container, node=node),
        labels=labels,
        annotations=annotations,
        log_path=f"{name}/0.log",
        linux=api_pb2.LinuxContainerConfig(
            resources=resources(containerd, spec, container),
            security_context=security_context(spec, container),
        ),
    )


def mounts(
    containerd: Containerd,
    objects: list[Manifest],
    *,
    meta: Manifest,
    spec: Manifest,
    container: Manifest,
    node: Node,
) -> list[Any]:
    """makeMounts (pkg/kubelet/kubelet_pods.go, then kuberuntime_container.go): each
    volumeMount at the host path of its volume. A hostPath volume is its path (checked
    against its type, as the hostPath plugin does); an emptyDir and a configMap are
    directories the kubelet makes under its pod directory, the configMap's holding a file
    per key. recursiveReadOnly: IfPossible becomes a plain read-only mount on a runtime
    that does not report recursive read-only mounts, as containerd 1.6 does not."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    pod_dir = containerd.workdir / "kubelet" / "pods" / meta["uid"] / "volumes"
    out = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        readonly = bool(mount.get("readOnly"))
        if "hostPath" in volume:
            declared = volume["hostPath"]["path"]
            host = Path(node.host_paths.get(declared, declared))
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                host.mkdir(mode=0o755, parents=True, exist_ok=True)
            assert kind != "Directory" or host.is_dir(), f"hostPath {host} is not a directory"
        elif "emptyDir" in volume:
            host = pod_dir / "kubernetes.io~empty-dir" / volume["name"]
            host.mkdir(parents=True, exist_ok=True)
            host.chmod(0o777)  # as the emptyDir plugin makes it
        elif "configMap" in volume:
            config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
            host = pod_dir / "kubernetes.io~configmap" / volume["name"]
            host.mkdir(parents=True, exist_ok=True)
            for key, text in (config_map.get("data") or {}).items():
                (host / key).write_text(text)
            readonly = True  # the configMap plugin's mounts are read-only
        else:
            raise NotImplementedError(f"volume {volume['name']}: {sorted(volume)}")
        out.append(
            api_pb2.Mount(
                container_path=mount["mountPath"],
                host_path=str(host),
                readonly=readonly,
                propagation=_PROPAGATION[mount.get("mountPropagation")],
            )
        )
    return out


def resources(containerd: Containerd, spec: Manifest, container: Manifest) -> Any:
    """generateLinuxContainerResources (kuberuntime_container_linux.go): cpu shares from
    the request (the limit when no request), CFS quota from the limit, the memory limit,
    the oom_score_adj of pkg/kubelet/qos/policy.go, and on cgroup v2 memory.oom.group."""
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    cpu_request = parse_quantity(requests.get("cpu", limits.get("cpu", "0")))
    cpu_limit = parse_quantity(limits.get("cpu", "0"))
    out = api_pb2.LinuxContainerResources(
        cpu_period=CPU_PERIOD_US,
        # milliCPUToShares and milliCPUToQuota (pkg/kubelet/cm/helpers_linux.go).
        cpu_shares=max(2, int(cpu_request * 1024)),
        cpu_quota=int(cpu_limit * CPU_PERIOD_US) if cpu_limit else 0,
        oom_score_adj=oom_score_adj(spec),
    )
    if "memory" in limits:
        out.memory_limit_in_bytes = int(parse_quantity(limits["memory"]))
    # The harness's rule for the kubelet's: its systemd node is the cgroup v2 one.
    if containerd.systemd:
        out.unified["memory.oom.group"] = "1"
    return out


def oom_score_adj(spec: Manifest) -> int:
    if spec.get("priorityClassName") == NODE_CRITICAL_CLASS:
        return NODE_CRITICAL_OOM_SCORE_ADJ
    raise NotImplementedError("only the node-critical pod's oom_score_adj is made here")


def security_context(spec: Manifest, container: Manifest) -> Any:
    """determineEffectiveSecurityContext and convertToRuntimeSecurityContext
    (pkg/kubelet/kuberuntime/security_context.go, security_context_others.go): the
    container's settings over the pod's, the pod's namespaces, the seccomp profile
    (container's, else pod's, else unconfined: the kubelet's seccompDefault is off by
    default), and no_new_privs where allowPrivilegeEscalation is false."""
    pod_sc = spec.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    profile = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {"type": "Unconfined"}
    out = api_pb2.LinuxContainerSecurityContext(
        capabilities=api_pb2.Capability(
            add_capabilities=caps.get("add") or [], drop_capabilities=caps.get("drop") or []
        ),
        privileged=bool(sc.get("privileged")),
        namespace_options=namespaces(spec),
        readonly_rootfs=bool(sc.get("readOnlyRootFilesystem")),
        no_new_privs=sc.get("allowPrivilegeEscalation") is False,
        seccomp=api_pb2.SecurityProfile(
            profile_type=_SECCOMP[profile["type"]],
            localhost_ref=profile.get("localhostProfile", ""),
        ),
    )
    run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    if run_as_user is not None:
        out.run_as_user.value = run_as_user
    return out


_SUFFIXES = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
}  # fmt: skip


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("20m", "96Mi", "1", "0.5") as a number."""
    text = str(value)
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def memory_peak(cgroup: str) -> int | None:
    """The highest memory charge of a cgroup so far (memory.peak on cgroup v2,
    memory.max_usage_in_bytes on v1): what a container's limit must hold."""
    root, version = memory_root()
    name = "memory.max_usage_in_bytes" if version == 1 else "memory.peak"
    try:
        return int((root / cgroup.lstrip("/") / name).read_text())
    except (OSError, ValueError):
        return None


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"pid {pid} has no VmRSS")


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def cap_mask(names: list[str]) -> int:
    """The capability bits of names like SYS_ADMIN, as /proc/<pid>/status shows them."""
    numbers = {"NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "PERFMON": 38, "BPF": 39}
    mask = 0
    for name in names:
        mask |= 1 << numbers[name.removeprefix("CAP_")]
    return mask


def node_name() -> str:
    return os.uname().nodename


class SocketDirContainerd(Containerd):
    """The harness's containerd with its sockets in a directory of their own, as a node's
    are in /run/containerd: the agent's pod mounts that directory (the manifest's
    containerd volume) rather than the harness's whole work directory, which holds every
    container's root file system and mounts."""

    def __init__(self, workdir: Path | None = None, *, systemd: bool = False) -> None:
        super().__init__(workdir, systemd=systemd)
        self.run_dir = self.workdir / "run"
        self.run_dir.mkdir(exist_ok=True)
        self.socket = self.run_dir / "containerd.sock"
        self.endpoint = f"unix://{self.socket}"


# The test node has no cluster network: the pod's (and node's) address is loopback.
NODE_IP = "127.0.0.1"


def this_node(containerd: SocketDirContainerd) -> Node:
    """This machine as the kubelet would describe it, with the node's directories the pod
    mounts where a test node has them: its own containerd's, and a kubelet directory of
    its own (no kubelet runs here)."""
    host_paths = {
        "/run/containerd": containerd.run_dir,
        "/var/lib/kubelet": containerd.workdir / "kubelet-root",
    }
    return Node(node_name(), NODE_IP, host_paths)


def cri_time(stamp: str) -> float:
    """A CRI log line's RFC 3339 time (nanoseconds, which datetime cannot hold, cut)."""
    head, dot, rest = stamp.partition(".")
    if not dot:
        return datetime.fromisoformat(head).timestamp()
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits) :]
    return datetime.fromisoformat(f"{head}.{digits[:6]}{zone}").astimezone(UTC).timestamp()


def seconds_to(containerd: Containerd, pod: AgentPod, stamp: str) -> float:
    """From the container's start, as the runtime recorded it, to a line of its log."""
    started_at = containerd.status(pod.container).started_at
    assert started_at is not None
    return cri_time(stamp) - started_at / 1e9


# Where scripts/test puts the image it builds once for the host's and the VM's
# DaemonSet tests (the repository goes into the VM whole, this included).
BUILT_IMAGE = repo_root() / ".image" / "oomtrace.tar"


@contextlib.contextmanager
def node_with_image(archive: Path, *, systemd: bool = False) -> Iterator[SocketDirContainerd]:
    """A started containerd with the agent's image imported into the kubelet's
    namespace, as a registry pull or `ctr images import` leaves it on a node."""
    reason = unavailable_reason()
    assert reason is None, f"containerd tests cannot run: {reason} (scripts/setup --dev)"
    daemon = SocketDirContainerd(systemd=systemd)
    try:
        daemon.start()
        imported = subprocess.run(
            [CTR, "--address", str(daemon.socket), "-n", K8S_NAMESPACE, "images", "import",
             "--snapshotter", daemon.snapshotter, str(archive)],
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        yield daemon
    finally:
        daemon.close()


# ---- the memory limit against the start-up -------------------------------------------


def with_memory_limit(objects: list[Manifest], limit: str) -> list[Manifest]:
    """The manifests with the agent's memory limit (and request, kept below it) changed."""
    changed = copy.deepcopy(objects)
    [container] = find(changed, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    resources["limits"]["memory"] = limit
    if parse_quantity(resources["requests"]["memory"]) > parse_quantity(limit):
        resources["requests"]["memory"] = limit
    return changed


def startup_under_limit(containerd: SocketDirContainerd, limit: str, timeout: float) -> str:
    """The pod started with the page cache dropped (as on a node that has not run the
    agent for a while: LLVM's and clang's pages are then read, and charged to the pod,
    by the compiling child), and what became of it: seconds to `ready`, or why not."""
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    pod = run_daemonset_pod(
        containerd, this_node(containerd), with_memory_limit(manifests(), limit)
    )
    try:
        end = time.monotonic() + timeout
        while True:
            ready = [stamp for stamp, e in pod.json_lines("stderr") if e.get("event") == "ready"]
            if ready:
                return f"{seconds_to(containerd, pod, ready[0]):.1f} s"
            info = containerd.status(pod.container)
            if info.state == "exited":
                return f"exited (status {info.exit_code}): {pod.tail(1)}"
            if time.monotonic() > end:
                return f"not ready in {timeout:.0f} s"
            time.sleep(0.1)
    finally:
        containerd.remove_pod(pod.pod)


def main(argv: list[str]) -> int:
    """python -m tests.containerd.daemonset IMAGE.tar LIMIT...: the DaemonSet's pod under
    each memory limit (e.g. 96Mi), one line each, as docs/daemonset.md shows them."""
    archive, limits = Path(argv[0]), argv[1:]
    with node_with_image(archive) as containerd:
        for limit in limits:
            print(f"{limit}: {startup_under_limit(containerd, limit, 90.0)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
