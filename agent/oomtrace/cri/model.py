"""Typed, validated views of the CRI answers oomtrace uses, made from the protobuf messages.

Names come from the CRI metadata first and from the kubelet's ``io.kubernetes.*`` labels
second: the kubelet sets both, but other CRI clients (crictl, tests) may set only one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from oomtrace.cri.errors import CriBadAnswer

__all__ = [
    "ContainerInfo",
    "RuntimeVersion",
    "SandboxInfo",
    "container_from_list",
    "container_from_status",
    "looks_like_image_id",
    "sandbox_from_list",
    "sandbox_from_status",
    "version_from_pb",
]

# Labels the kubelet puts on every sandbox and container (pkg/kubelet/types/labels.go).
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
# An annotation, not a label: the kubelet's restart count, equal to the metadata attempt.
# The kubelet writes both from one number (kuberuntime_container.go, generateContainerConfig)
# but reads the count back from the annotation (labels.go, getContainerInfoFromAnnotations).
RESTART_COUNT = "io.kubernetes.container.restartCount"
# ContainerMetadata.attempt is a uint32: a count past it is not one the kubelet wrote.
COUNT_MAX: Final = 2**32 - 1
# dockershim and cri-dockerd list the pause container among containers with these marks.
DOCKER_TYPE = "io.kubernetes.docker.type"
DOCKER_SANDBOX_NAME = "POD"

_CONTAINER_STATES = {0: "created", 1: "running", 2: "exited", 3: "unknown"}
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{64}")
# What strconv.Itoa writes for a count: no sign, spaces or underscores (int() takes them).
_COUNT = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class RuntimeVersion:
    version: str
    runtime_name: str
    runtime_version: str
    runtime_api_version: str


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    id: str
    name: str | None
    namespace: str | None
    uid: str | None
    attempt: int | None
    ready: bool
    created_at: int
    labels: Mapping[str, str]
    pid: int | None = None  # only from a verbose PodSandboxStatus


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    sandbox_id: str | None  # ListContainers tells; ContainerStatus does not
    name: str | None
    attempt: int | None  # ContainerMetadata.attempt, else the annotation
    image: str | None  # a name when the runtime gave one, else an image id
    image_ref: str | None
    state: str  # "created" | "running" | "exited" | "unknown"
    created_at: int
    pod_name: str | None  # from labels; the sandbox's metadata is preferred when known
    pod_namespace: str | None
    pod_uid: str | None
    is_sandbox: bool  # a pause container listed as a container (docker-based runtimes)
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    exit_code: int | None = None  # only from ContainerStatus
    reason: str | None = None
    message: str | None = None
    pid: int | None = None  # only from a verbose ContainerStatus
    # The annotation, else ContainerMetadata.attempt; None when the annotation is there but is
    # not a count: the kubelet reads such a value as 0, so neither number can be trusted.
    restart_count: int | None = None
    started_at: int | None = None  # ns since the epoch; only from ContainerStatus, once started


def version_from_pb(msg: Any) -> RuntimeVersion:
    name = _text(msg.runtime_name)
    if name is None:
        raise CriBadAnswer("Version without runtime_name")
    return RuntimeVersion(
        version=_text(msg.version) or "",
        runtime_name=name,
        runtime_version=_text(msg.runtime_version) or "",
        runtime_api_version=_text(msg.runtime_api_version) or "",
    )


def sandbox_from_list(msg: Any) -> SandboxInfo:
    return _sandbox(msg, pid=None)


def sandbox_from_status(resp: Any) -> SandboxInfo:
    if not resp.HasField("status"):
        raise CriBadAnswer("PodSandboxStatus without status")
    return _sandbox(resp.status, pid=_verbose_pid(resp.info))


def container_from_list(msg: Any) -> ContainerInfo:
    return _container(msg, sandbox_id=_text(msg.pod_sandbox_id), image_ref=_text(msg.image_ref))


def container_from_status(resp: Any) -> ContainerInfo:
    if not resp.HasField("status"):
        raise CriBadAnswer("ContainerStatus without status")
    status = resp.status
    return _container(
        status,
        sandbox_id=None,
        image_ref=_text(status.image_ref),
        exit_code=int(status.exit_code),
        reason=_text(status.reason),
        message=_text(status.message),
        pid=_verbose_pid(resp.info),
        started_at=_positive(status.started_at),
    )


def looks_like_image_id(image: str | None) -> bool:
    return image is not None and _IMAGE_ID.fullmatch(image) is not None


def _sandbox(msg: Any, *, pid: int | None) -> SandboxInfo:
    sandbox_id = _text(msg.id)
    if sandbox_id is None:
        raise CriBadAnswer("pod sandbox without id")
    labels = _mapping(msg.labels)
    meta = msg.metadata if msg.HasField("metadata") else None
    return SandboxInfo(
        id=sandbox_id,
        name=_first(_field(meta, "name"), _text(labels.get(POD_NAME))),
        namespace=_first(_field(meta, "namespace"), _text(labels.get(POD_NAMESPACE))),
        uid=_first(_field(meta, "uid"), _text(labels.get(POD_UID))),
        attempt=int(meta.attempt) if meta is not None else None,
        ready=int(msg.state) == 0,
        created_at=int(msg.created_at),
        labels=labels,
        pid=pid,
    )


def _container(
    msg: Any,
    *,
    sandbox_id: str | None,
    image_ref: str | None,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str | None = None,
    pid: int | None = None,
    started_at: int | None = None,
) -> ContainerInfo:
    container_id = _text(msg.id)
    if container_id is None:
        raise CriBadAnswer("container without id")
    labels = _mapping(msg.labels)
    annotations = _mapping(msg.annotations)
    meta = msg.metadata if msg.HasField("metadata") else None
    name = _first(_field(meta, "name"), _text(labels.get(CONTAINER_NAME)))
    meta_attempt = int(meta.attempt) if meta is not None else None
    annotated = _count(annotations.get(RESTART_COUNT))
    return ContainerInfo(
        id=container_id,
        sandbox_id=sandbox_id,
        name=name,
        attempt=meta_attempt if meta_attempt is not None else annotated,
        image=_image(msg),
        image_ref=image_ref,
        state=_CONTAINER_STATES.get(int(msg.state), "unknown"),
        created_at=int(msg.created_at),
        pod_name=_text(labels.get(POD_NAME)),
        pod_namespace=_text(labels.get(POD_NAMESPACE)),
        pod_uid=_text(labels.get(POD_UID)),
        is_sandbox=labels.get(DOCKER_TYPE) == "podsandbox" or name == DOCKER_SANDBOX_NAME,
        labels=labels,
        annotations=annotations,
        exit_code=exit_code,
        reason=reason,
        message=message,
        pid=pid,
        restart_count=annotated if RESTART_COUNT in annotations else meta_attempt,
        started_at=started_at,
    )


def _image(msg: Any) -> str | None:
    if not msg.HasField("image"):
        return None
    # Kubelets since 1.30 send the image the user wrote in user_specified_image and an image
    # id in image; runtimes that predate the field return only image.
    return _first(_text(msg.image.user_specified_image), _text(msg.image.image))


def _verbose_pid(info: Any) -> int | None:
    """containerd and CRI-O put a JSON document with the task's pid under info["info"]."""
    raw = _mapping(info).get("info")
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    pid = doc.get("pid") if isinstance(doc, dict) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def _field(msg: Any, name: str) -> str | None:
    return None if msg is None else _text(getattr(msg, name))


# Kubernetes names are at most 253 characters and image references a few hundred;
# a runtime that answers with more is broken or hostile, and every event would
# carry it. The cut says how much was left out.
TEXT_MAX: Final = 1024


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    if len(value) > TEXT_MAX:
        return f"{value[:TEXT_MAX]}…[+{len(value) - TEXT_MAX}]"
    return value


def _count(value: str | None) -> int | None:
    if value is None or _COUNT.fullmatch(value) is None:
        return None
    count = int(value)
    return count if count <= COUNT_MAX else None


def _positive(value: Any) -> int | None:
    """A CRI timestamp: 0 means never (a container not started yet)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _first(*values: str | None) -> str | None:
    for value in values:
        if value:
            return value
    return None


def _mapping(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()}
