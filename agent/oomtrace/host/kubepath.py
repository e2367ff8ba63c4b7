"""Kubernetes facts read from a cgroup path alone, with no CRI call.

The kubelet names cgroups in one of two ways, chosen by its cgroup driver:

cgroupfs: ``/kubepods[/burstable|/besteffort]/pod<uid>/<container>``
systemd:  ``/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/<unit>.scope``

Guaranteed pods have no QoS level: they sit directly under kubepods. The container level is
named by the runtime: a bare 64-hex id (containerd, docker, cgroupfs), ``crio-<id>``
(CRI-O), or a systemd scope ``cri-containerd-<id>.scope`` / ``crio-<id>.scope`` /
``docker-<id>.scope``. CRI-O's monitor process conmon gets ``crio-conmon-<id>[.scope]``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["KubeCgroup", "parse_kube_cgroup"]

_QOS_DIRS = {"burstable": "Burstable", "besteffort": "BestEffort"}

# Static (file and http) pods get a 32-hex md5 as uid instead of a UUID; systemd slice names
# carry the UUID with "_" because "-" separates slice levels.
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
_POD_DIR = re.compile(rf"pod(?P<uid>{_UID})")
_ID = r"(?P<id>[0-9a-f]{64})"

# The kubelet's --cgroup-root may put kubepods under a parent, which systemd spells as a
# dash-joined prefix ("kubelet-kubepods.slice" under "kubelet.slice").
_SYSTEMD_ROOT = re.compile(r"(?P<prefix>(?:[A-Za-z0-9_.:]+-)*kubepods)\.slice")

_RUNTIME_BY_PREFIX = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}
_SYSTEMD_CONTAINER = re.compile(rf"(?P<prefix>cri-containerd|crio|docker)-{_ID}\.scope")
_SYSTEMD_CONMON = re.compile(rf"crio-conmon-{_ID}\.scope")
_CGROUPFS_CONTAINER = re.compile(rf"(?:(?P<prefix>crio|docker)-)?{_ID}")
_CGROUPFS_CONMON = re.compile(rf"crio-conmon-{_ID}")


@dataclass(frozen=True, slots=True)
class KubeCgroup:
    driver: str  # "cgroupfs" | "systemd"
    # "Guaranteed" | "Burstable" | "BestEffort"; "" when role is "kubepods" (no pod chosen yet)
    qos_class: str
    pod_uid: str | None  # with dashes
    container_id: str | None  # 64-hex id, only when role is "container"
    runtime: str | None  # "containerd" | "cri-o" | "docker" when the path tells
    role: str  # "container" | "conmon" | "pod" | "qos" | "kubepods"


# An event's victim, trigger and OOM memcg usually share one path, and a storm
# repeats a handful: each is parsed once. The result is immutable, so shared.
@functools.lru_cache(maxsize=4096)
def parse_kube_cgroup(path: str) -> KubeCgroup | None:
    """Parse a cgroup path (as in /proc/<pid>/cgroup, a cgroupfs directory, or a whole
    /proc/<pid>/cgroup line); None when it is not under a kubepods cgroup."""
    parts = [p for p in path.strip().split("/") if p]
    for i, part in enumerate(parts):
        if part == "kubepods":
            return _parse_cgroupfs(parts[i + 1 :])
        root = _SYSTEMD_ROOT.fullmatch(part)
        if root is not None:
            return _parse_systemd(root.group("prefix"), parts[i + 1 :])
    return None


def _parse_cgroupfs(rest: list[str]) -> KubeCgroup:
    level = _Level("cgroupfs")
    if rest and rest[0] in _QOS_DIRS:
        level.qos(_QOS_DIRS[rest[0]])
        rest = rest[1:]
    if not rest:
        return level.result()
    pod = _POD_DIR.fullmatch(rest[0])
    return _below_pod(level, pod, rest[1:], _CGROUPFS_CONMON, _CGROUPFS_CONTAINER)


def _parse_systemd(prefix: str, rest: list[str]) -> KubeCgroup:
    level = _Level("systemd")
    for qos_dir, qos_class in _QOS_DIRS.items():
        if rest and rest[0] == f"{prefix}-{qos_dir}.slice":
            level.qos(qos_class)
            prefix = f"{prefix}-{qos_dir}"
            rest = rest[1:]
            break
    if not rest:
        return level.result()
    pod = re.fullmatch(rf"{re.escape(prefix)}-{_POD_DIR.pattern}\.slice", rest[0])
    return _below_pod(level, pod, rest[1:], _SYSTEMD_CONMON, _SYSTEMD_CONTAINER)


def _below_pod(
    level: _Level,
    pod: re.Match[str] | None,
    below: list[str],
    conmon_dir: re.Pattern[str],
    container_dir: re.Pattern[str],
) -> KubeCgroup:
    """The pod level and the container or conmon directory under it: the same
    layout for both drivers, only the directory names differ."""
    if pod is None:
        return level.result()
    level.pod(pod.group("uid"))
    if below:
        if conmon := conmon_dir.fullmatch(below[0]):
            level.conmon(conmon.group("id"))
        elif container := container_dir.fullmatch(below[0]):
            level.container(container.group("id"), container.group("prefix"))
    return level.result()


class _Level:
    """The deepest kubelet level recognised so far; anything below a container (init.scope,
    runtime sub-cgroups) is never looked at, so it stays attributed to that container."""

    def __init__(self, driver: str) -> None:
        self._driver = driver
        self._qos_class = ""
        self._pod_uid: str | None = None
        self._container_id: str | None = None
        self._runtime: str | None = None
        self._role = "kubepods"

    def qos(self, qos_class: str) -> None:
        self._qos_class = qos_class
        self._role = "qos"

    def pod(self, uid: str) -> None:
        if not self._qos_class:
            self._qos_class = "Guaranteed"
        self._pod_uid = _dashed_uid(uid)
        self._role = "pod"

    def conmon(self, _container_id: str) -> None:
        # conmon runs beside the container it watches; naming that container here would make
        # a kill of conmon look like a kill of the application.
        self._runtime = "cri-o"
        self._role = "conmon"

    def container(self, container_id: str, prefix: str | None) -> None:
        self._container_id = container_id
        self._runtime = _RUNTIME_BY_PREFIX.get(prefix) if prefix else None
        self._role = "container"

    def result(self) -> KubeCgroup:
        return KubeCgroup(
            driver=self._driver,
            qos_class=self._qos_class,
            pod_uid=self._pod_uid,
            container_id=self._container_id,
            runtime=self._runtime,
            role=self._role,
        )


def _dashed_uid(uid: str) -> str:
    return uid.replace("_", "-")
