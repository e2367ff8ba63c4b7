"""A real containerd (the distribution's package) with its CRI plugin, for tests.

Everything it makes lives in one temporary directory (root, state, socket, runc state,
logs), except what the kernel keeps elsewhere: cgroups under /kubepods in every hierarchy
(or, with the systemd driver, kubepods.slice and its slices and scopes), mounts, and the
shims' sockets, which containerd 1.6 always puts in /run/containerd/s. ``close()``
removes all of it.

Two cgroup drivers, as a node runs one or the other: cgroupfs (this machine's cgroup v1
hierarchies, no systemd) and systemd (cgroup v2 under systemd, as in the test VM). The
CRI calls are the same; only the cgroup_parent the kubelet passes, the pod-level limits
and the container's `unified` resources differ, as the kubelet makes them differ.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from oomtrace.cri import api_pb2, api_pb2_grpc
from oomtrace.cri.client import CriClient
from oomtrace.cri.errors import CriError
from oomtrace.cri.model import ContainerInfo, SandboxInfo

from . import cleanup
from .image import build_busybox_image

IMAGE = "localhost/oomtrace-busybox:test"
# What containerd may call an OOM-killed container: OOMKilled, or Error when the kill
# came right after its start (containerd #8180) or the cgroup's events were read late.
# A test records the runtime's word; oomtrace's event is what it asserts.
OOM_REASONS = ("OOMKilled", "Error")
CONTAINERD = "containerd"
CTR = "ctr"
K8S_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
SHIM_SOCKET_DIR = Path("/run/containerd/s")
_QOS_PARENTS = {"Guaranteed": "/kubepods", "Burstable": "/kubepods/burstable",
                "BestEffort": "/kubepods/besteffort"}  # fmt: skip
# The same with the systemd driver: Guaranteed pods sit in kubepods.slice itself.
_SYSTEMD_QOS_SLICES = {
    "Guaranteed": "/kubepods.slice",
    "Burstable": "/kubepods.slice/kubepods-burstable.slice",
    "BestEffort": "/kubepods.slice/kubepods-besteffort.slice",
}
_CALL_TIMEOUT = 60.0
_READY_TIMEOUT = 20.0

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # The sandbox asks for oom_score_adj -998; without CAP_SYS_RESOURCE in this environment
  # that fails unless containerd clamps it to its own score.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = {systemd}
        Root = "{runc_root}"

  # No CNI: only host-network pods, which need none (NetworkReady stays false).
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}/bin"
    conf_dir = "{cni}/net.d"
"""


@dataclass
class Pod:
    id: str
    name: str
    namespace: str
    uid: str
    qos_class: str
    cgroup_parent: str
    config: Any = field(repr=False)  # api_pb2.PodSandboxConfig, needed by CreateContainer


@dataclass
class Container:
    id: str
    name: str
    pod: Pod
    attempt: int


class Containerd:
    def __init__(self, workdir: Path | None = None, *, systemd: bool = False) -> None:
        self.systemd = systemd
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="oomtrace-ctrd-"))
        self.socket = self.workdir / "containerd.sock"
        self.endpoint = f"unix://{self.socket}"
        self.config = self.workdir / "config.toml"
        self.log = self.workdir / "containerd.log"
        self.snapshotter = ""
        self.pods: dict[str, Pod] = {}
        self.containers: dict[str, Container] = {}
        # Every pod cgroup ever asked for: runc leaves them behind even after RemovePodSandbox.
        self._cgroup_parents: set[str] = set()
        # Slices given a limit that outlives the test unless lifted (systemd driver).
        self._limited_slices: set[str] = set()
        # The same with cgroupfs: each limit file written, with the value that lifts it.
        self._limited_cgroups: dict[Path, str] = {}
        # Directories the harness made itself in the memory hierarchy (cgroupfs driver).
        self._made_cgroups: list[Path] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._image_imported = False
        # Host directories that may be created for us: removed at close only if they were not
        # there before.
        self._preexisting = {p: p.exists() for p in (SHIM_SOCKET_DIR, SHIM_SOCKET_DIR.parent)}
        self._preexisting_cgroups = {
            rel: any((h / rel.strip("/")).exists() for h in cleanup.cgroup_hierarchies())
            for rel in (_SYSTEMD_QOS_SLICES if systemd else _QOS_PARENTS).values()
        }
        self._client: CriClient | None = None
        self._channel: Any = None
        self._stub: Any = None

    # ---- the daemon ----

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> None:
        if self.running:
            return
        if not self.config.exists():
            self._write_config()
        log = self.log.open("ab")
        try:
            self._proc = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config), "--log-level", "info"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for pytest must not reach it
            )
        finally:
            log.close()
        self._wait_ready()
        if not self._image_imported:
            self._import_image()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, as a service manager would; the shims and containers keep running."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: an abrupt outage of the CRI. The shims and containers keep running."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        if self.running:
            self.stop()
        self.start()

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        self._close_clients()
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def _wait_ready(self) -> None:
        end = time.monotonic() + _READY_TIMEOUT
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"containerd exited at start:\n{self.log_tail()}")
            if self.socket.exists():
                with CriClient(self.endpoint, 2.0) as probe, contextlib.suppress(CriError):
                    probe.version()
                    return
            if time.monotonic() > end:
                raise RuntimeError(f"containerd not ready in {_READY_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _write_config(self) -> None:
        for sub in ("root", "state", "opt", "runc", "cni/bin", "cni/net.d", "pods"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.snapshotter = "overlayfs" if _overlay_works(self.workdir) else "native"
        self.config.write_text(
            _CONFIG.format(
                root=self.workdir / "root",
                state=self.workdir / "state",
                socket=self.socket,
                opt=self.workdir / "opt",
                image=IMAGE,
                snapshotter=self.snapshotter,
                runc_root=self.workdir / "runc",
                cni=self.workdir / "cni",
                systemd="true" if self.systemd else "false",
            )
        )

    def _import_image(self) -> None:
        tar = build_busybox_image(self.workdir / "busybox-image.tar", IMAGE)
        subprocess.run(
            [CTR, "--address", str(self.socket), "-n", K8S_NAMESPACE, "images", "import",
             "--snapshotter", self.snapshotter, str(tar)],
            check=True, capture_output=True, timeout=_CALL_TIMEOUT,
        )  # fmt: skip
        self._image_imported = True

    # ---- CRI calls ----

    @property
    def client(self) -> CriClient:
        """The project's own read client, for status calls."""
        if self._client is None:
            self._client = CriClient(self.endpoint, _CALL_TIMEOUT)
        return self._client

    def _rpc(self, method: str, request: Any) -> Any:
        """The write side of the CRI, which the project's client does not offer."""
        if self._stub is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket}")
            self._stub = api_pb2_grpc.RuntimeServiceStub(self._channel)
        return getattr(self._stub, method)(request, timeout=_CALL_TIMEOUT)

    def _close_clients(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._channel is not None:
            self._channel.close()
        self._client = self._channel = self._stub = None

    def run_pod(
        self,
        name: str,
        namespace: str = "default",
        uid: str | None = None,
        qos_class: str = "BestEffort",
        *,
        cgroup_parent: str | None = None,
        attempt: int = 0,
        memory_limit_bytes: int | None = None,
    ) -> Pod:
        """RunPodSandbox with host network and the labels the kubelet sets, after the
        pod's cgroup with its memory limit, as the kubelet's pod container manager makes
        it before the sandbox (pkg/kubelet/cm/pod_container_manager_linux.go,
        EnsureExists; the limit is the sum of the containers' limits).

        With the systemd driver that cgroup is a slice with MemoryMax. With cgroupfs the
        kubelet's cgroup manager (pkg/kubelet/cm/cgroup_manager_linux.go, Create) first
        makes the pod's directory in every mounted hierarchy, joining no process to it,
        then sets the pod's resources on it: memory.limit_in_bytes on cgroup v1,
        memory.max on v2. The harness does so in the memory hierarchy alone, and only
        when a limit is asked; runc makes the directories of the other hierarchies when
        it places the sandbox below."""
        uid = uid or str(uuid.uuid4())
        parent = cgroup_parent or self.pod_cgroup(qos_class, uid)
        if self.systemd:
            self._pod_slice(parent, memory_limit_bytes)
        elif memory_limit_bytes is not None:
            self._cgroup_parents.add(parent)  # removed at close even if the sandbox fails
            self._cgroupfs_memory_limit(parent, memory_limit_bytes)
        labels = {
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": namespace,
            "io.kubernetes.pod.uid": uid,
        }
        log_dir = self.workdir / "pods" / f"{namespace}_{name}_{uid}"
        log_dir.mkdir(parents=True, exist_ok=True)
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name=name, uid=uid, namespace=namespace, attempt=attempt
            ),
            # A host-network sandbox must leave hostname empty: containerd refuses to set one.
            hostname="",
            log_directory=str(log_dir),
            labels=labels,
            annotations={"kubernetes.io/config.source": "api"},
            linux=api_pb2.LinuxPodSandboxConfig(
                cgroup_parent=parent,
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=_host_network()
                ),
            ),
        )
        self._cgroup_parents.add(parent)
        resp = self._rpc("RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config))
        pod = Pod(
            id=resp.pod_sandbox_id,
            name=name,
            namespace=namespace,
            uid=uid,
            qos_class=qos_class,
            cgroup_parent=parent,
            config=config,
        )
        self.pods[pod.id] = pod
        return pod

    def create_container(
        self,
        pod: Pod,
        name: str,
        argv: list[str],
        memory_limit_bytes: int | None = None,
        *,
        attempt: int = 0,
        oom_score_adj: int | None = None,
        oom_group: bool | None = None,
    ) -> Container:
        """CreateContainer as the kubelet makes it. ``oom_group`` (default: on with the
        systemd driver, whose test machine has cgroup v2) is what the kubelet has set
        since 1.28 on cgroup v2 unless singleProcessOOMKill: `memory.oom.group=1` in the
        container's unified resources (pkg/kubelet/kuberuntime/
        kuberuntime_container_linux.go, generateLinuxContainerResources)."""
        labels = {
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": pod.uid,
        }
        resources = api_pb2.LinuxContainerResources(cpu_period=100000, cpu_shares=2)
        if memory_limit_bytes is not None:
            resources.memory_limit_in_bytes = memory_limit_bytes
        if oom_score_adj is not None:
            # As the kubelet sets it per QoS class (BestEffort: 1000).
            resources.oom_score_adj = oom_score_adj
        if self.systemd if oom_group is None else oom_group:
            resources.unified["memory.oom.group"] = "1"
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
            image=api_pb2.ImageSpec(image=IMAGE),
            command=argv,
            labels=labels,
            annotations={"io.kubernetes.container.restartCount": str(attempt)},
            log_path=f"{name}/{attempt}.log",
            linux=api_pb2.LinuxContainerConfig(
                resources=resources,
                security_context=api_pb2.LinuxContainerSecurityContext(
                    namespace_options=_host_network()
                ),
            ),
        )
        resp = self._rpc(
            "CreateContainer",
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
            ),
        )
        container = Container(id=resp.container_id, name=name, pod=pod, attempt=attempt)
        self.containers[container.id] = container
        return container

    def start_container(self, container: Container) -> None:
        self._rpc("StartContainer", api_pb2.StartContainerRequest(container_id=container.id))

    def restart_container(
        self, previous: Container, argv: list[str], memory_limit_bytes: int | None = None
    ) -> Container:
        """Runs a dead container again as the kubelet does: CreateContainer with the same
        name, ContainerMetadata.attempt and the io.kubernetes.container.restartCount
        annotation one more than the previous run's (pkg/kubelet/kuberuntime/
        kuberuntime_container.go, startContainer and generateContainerConfig; labels.go,
        newContainerAnnotations), then StartContainer. The dead container is kept, as the
        kubelet keeps the last one for its logs."""
        container = self.create_container(
            previous.pod, previous.name, argv, memory_limit_bytes, attempt=previous.attempt + 1
        )
        self.start_container(container)
        return container

    def stop_container(self, container: Container, timeout: int = 0) -> None:
        request = api_pb2.StopContainerRequest(container_id=container.id, timeout=timeout)
        self._rpc("StopContainer", request)

    def remove_container(self, container: Container) -> None:
        self._rpc("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=container.id))
        self.containers.pop(container.id, None)

    def log_path(self, container: Container) -> Path:
        """Where containerd writes the container's output (the pod's log_directory
        joined with the container's log_path, both as the kubelet sets them)."""
        pod = container.pod
        pod_dir = self.workdir / "pods" / f"{pod.namespace}_{pod.name}_{pod.uid}"
        return pod_dir / container.name / f"{container.attempt}.log"

    def status(self, container: Container) -> ContainerInfo:
        """ContainerStatus, verbose (so the pid is known while it runs)."""
        return self.client.container_status(container.id, verbose=True)

    def pod_status(self, pod: Pod) -> SandboxInfo:
        return self.client.sandbox_status(pod.id, verbose=True)

    def wait_exited(self, container: Container, timeout: float = 30.0) -> ContainerInfo:
        end = time.monotonic() + timeout
        while True:
            info = self.status(container)
            if info.state == "exited":
                return info
            if time.monotonic() > end:
                raise TimeoutError(f"container {container.name} still {info.state}")
            time.sleep(0.05)

    def stop_pod(self, pod: Pod) -> None:
        self._rpc("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))

    def remove_pod(self, pod: Pod) -> None:
        """RemovePodSandbox; containerd removes the pod's containers with it. Retried as
        the kubelet retries: on a loaded machine a shim may go away while containerd
        stops the pod ("ttrpc: closed"), and the next attempt finds nothing to stop."""
        request = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id)
        for attempt in range(3):
            try:
                self._rpc("RemovePodSandbox", request)
                break
            except grpc.RpcError:
                if attempt == 2:
                    raise
                time.sleep(1.0)
        self.pods.pop(pod.id, None)
        for cid in [c.id for c in self.containers.values() if c.pod.id == pod.id]:
            del self.containers[cid]

    # ---- cgroups, as the kubelet names and makes them ----

    def pod_cgroup(self, qos_class: str, uid: str) -> str:
        """The cgroup_parent the kubelet passes to RunPodSandbox for a pod. With the
        systemd driver it is the pod's slice expanded to its path, "-" in the uid made
        "_" (pkg/kubelet/cm/cgroup_manager_linux.go, CgroupName.ToSystemd); containerd
        then asks systemd for a `cri-containerd-<id>.scope` in that slice."""
        if not self.systemd:
            return f"{_QOS_PARENTS[qos_class]}/pod{uid}"
        qos = _SYSTEMD_QOS_SLICES[qos_class].rsplit("/", 1)[-1].removesuffix(".slice")
        return f"{_SYSTEMD_QOS_SLICES[qos_class]}/{qos}-pod{uid.replace('-', '_')}.slice"

    @staticmethod
    def _pod_slice(parent: str, memory_limit_bytes: int | None) -> None:
        # The kubelet asks systemd for the slice (a transient unit) with its limits;
        # starting a slice by name does the same, its parents coming with it.
        unit = parent.rsplit("/", 1)[-1]
        subprocess.run(["systemctl", "start", unit], check=True, capture_output=True)
        if memory_limit_bytes is not None:
            subprocess.run(
                ["systemctl", "set-property", "--runtime", unit,
                 f"MemoryMax={memory_limit_bytes}", "MemorySwapMax=0"],
                check=True, capture_output=True,
            )  # fmt: skip

    def set_memory_limit(self, cgroup: str, limit_bytes: int) -> None:
        """A limit on kubepods or a QoS cgroup, as the kubelet keeps kubepods at the node's
        allocatable memory (pkg/kubelet/cm/node_container_manager_linux.go: made by
        createNodeAllocatableCgroups through the cgroup manager's Create, kept by
        enforceNodeAllocatableCgroups through its Update). With the systemd driver, a
        property of the slice; with cgroupfs, the limit file of the cgroup in the memory
        hierarchy, the cgroup made first if missing. Lifted at close if still there."""
        if not self.systemd:
            self._cgroupfs_memory_limit(cgroup, limit_bytes, lift_at_close=True)
            return
        unit = cgroup.rsplit("/", 1)[-1]
        self._limited_slices.add(unit)
        subprocess.run(
            ["systemctl", "set-property", "--runtime", unit,
             f"MemoryMax={limit_bytes}", "MemorySwapMax=0"],
            check=True, capture_output=True,
        )  # fmt: skip

    def _cgroupfs_memory_limit(
        self, cgroup: str, limit_bytes: int, *, lift_at_close: bool = False
    ) -> None:
        """A memory limit on ``cgroup`` as the kubelet's cgroupfs manager writes one
        (pkg/kubelet/cm/cgroup_manager_linux.go: Create makes the directory and then sets
        the resources, Update only sets them). Missing directories are made first, and
        remembered for close. Cgroup v1 takes memory.limit_in_bytes, lifted by -1; v2
        takes memory.max, lifted by "max", and needs the memory controller enabled in each
        ancestor's cgroup.subtree_control, as runc's v2 manager enables the controllers
        down the path it creates (the kubelet's Create goes through it)."""
        hierarchy = cleanup.memory_hierarchy()
        v2 = (hierarchy / "cgroup.controllers").exists()
        path = hierarchy / cgroup.strip("/")
        if path == hierarchy:
            raise ValueError("no limit on the root cgroup")
        inside = [p for p in (path, *path.parents) if hierarchy in p.parents]
        for directory in reversed(inside):
            if v2:
                _enable_memory_controller(directory.parent)
            try:
                directory.mkdir()
            except FileExistsError:
                continue
            self._made_cgroups.append(directory)
        limit_file, unlimited = (
            (path / "memory.max", "max") if v2 else (path / "memory.limit_in_bytes", "-1")
        )
        if lift_at_close:
            self._limited_cgroups[limit_file] = unlimited
        limit_file.write_text(str(limit_bytes))

    # ---- teardown ----

    def close(self) -> None:
        """Remove every pod, container, process, mount, cgroup and file this made."""
        with contextlib.suppress(Exception):
            self.start()  # a test may have left it killed; the CRI removes things best
        if self.running:
            self._remove_everything_through_cri()
        self.stop()
        shim_sockets = self._shim_sockets()
        # Container processes first: their shim, still alive, reaps them; once the shim is gone
        # they would be left to PID 1, which need not reap promptly.
        for parent in self._cgroup_parents:
            cleanup.kill_and_reap(cleanup.cgroup_pids(parent))
        cleanup.kill_and_reap(cleanup.shim_pids(str(self.socket)))
        cleanup.unmount_all(self.workdir)
        if self.systemd:
            for unit in self._limited_slices:
                subprocess.run(
                    ["systemctl", "set-property", "--runtime", unit, "MemoryMax=infinity"],
                    capture_output=True, check=False,
                )  # fmt: skip
            # systemd owns the slices: stopping one removes it and what is under it.
            units = [p.rsplit("/", 1)[-1] for p in self._cgroup_parents]
            units += [
                rel.rsplit("/", 1)[-1]
                for rel, existed in sorted(self._preexisting_cgroups.items(), reverse=True)
                if not existed
            ]
            for unit in units:
                subprocess.run(["systemctl", "stop", unit], capture_output=True, check=False)
        for limit_file, unlimited in self._limited_cgroups.items():
            with contextlib.suppress(OSError):  # the cgroup is gone: nothing to lift
                limit_file.write_text(unlimited)
        self._limited_cgroups.clear()
        for parent in self._cgroup_parents:
            cleanup.remove_cgroup_tree(parent)
        for rel, existed in sorted(self._preexisting_cgroups.items(), reverse=True):
            if not existed:
                cleanup.remove_empty_cgroup(rel)
        # Deepest first; a directory already removed above, or not empty, is left as it is.
        for directory in sorted(self._made_cgroups, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        self._made_cgroups.clear()
        for sock in shim_sockets:
            with contextlib.suppress(OSError):
                sock.unlink()
        for path, existed in self._preexisting.items():
            if not existed:
                with contextlib.suppress(OSError):
                    path.rmdir()
        if not cleanup.mounts_under(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.pods.clear()
        self.containers.clear()

    def _remove_everything_through_cri(self) -> None:
        """Every sandbox and container of this containerd is the harness's own."""
        with contextlib.suppress(CriError):
            for listed in self.client.list_containers():
                with contextlib.suppress(grpc.RpcError):
                    stop = api_pb2.StopContainerRequest(container_id=listed.id, timeout=0)
                    self._rpc("StopContainer", stop)
                    self._rpc(
                        "RemoveContainer", api_pb2.RemoveContainerRequest(container_id=listed.id)
                    )
        with contextlib.suppress(CriError):
            for sandbox in self.client.list_sandboxes():
                with contextlib.suppress(grpc.RpcError):
                    self._rpc(
                        "StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox.id)
                    )
                    self._rpc(
                        "RemovePodSandbox",
                        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id),
                    )

    def _shim_sockets(self) -> list[Path]:
        """The sockets the shims of this containerd listen on (in /run/containerd/s)."""
        sockets = []
        tasks = self.workdir / "state" / "io.containerd.runtime.v2.task" / K8S_NAMESPACE
        for address in tasks.glob("*/address"):
            with contextlib.suppress(OSError):
                text = address.read_text().strip()
                path = Path(text.removeprefix("unix://"))
                if path.parent == SHIM_SOCKET_DIR:
                    sockets.append(path)
        return sockets


def memory_cgroup(pid: int) -> str:
    """The process's cgroup in the v1 memory hierarchy, or its cgroup2 path without one."""
    unified = None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
        if controllers == "":
            unified = path
    if unified is None:
        raise LookupError(f"pid {pid} has no memory cgroup")
    return unified


def _enable_memory_controller(cgroup: Path) -> None:
    """Lets a v2 cgroup's children have the memory controller (cgroup.subtree_control)."""
    control = cgroup / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        control.write_text("+memory")


def _host_network() -> Any:
    return api_pb2.NamespaceOption(network=api_pb2.NODE, pid=api_pb2.CONTAINER, ipc=api_pb2.POD)


def _overlay_works(workdir: Path) -> bool:
    probe = workdir / "overlay-probe"
    dirs = [probe / d for d in ("lower", "upper", "work", "merged")]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    lower, upper, work, merged = dirs
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
        capture_output=True, check=False,
    ).returncode == 0  # fmt: skip
    if mounted:
        subprocess.run(["umount", str(merged)], capture_output=True, check=False)
    shutil.rmtree(probe, ignore_errors=True)
    return mounted


def unavailable_reason() -> str | None:
    """Why containerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in (CONTAINERD, CTR, "runc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not Path("/bin/busybox").exists():
        return "/bin/busybox (busybox-static) not installed"
    return None
