"""A stand-in container runtime for benchmarks: the CRI RuntimeService read calls the
agent makes (Version, ListContainers, ListPodSandbox, ContainerStatus,
PodSandboxStatus), answered from memory on a unix socket. It answers faster than
containerd would (no store lookups), so a cold-cache latency measured with it is a
lower bound of the real one.
"""

from __future__ import annotations

import threading
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from oomtrace.cri import api_pb2, api_pb2_grpc

NAMESPACE = "bench"


class FakeRuntime(api_pb2_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.pod_uid = str(uuid.uuid4())
        self.sandbox_id = uuid.uuid4().hex * 2
        self._lock = threading.Lock()
        self.containers: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        labels = self._labels()
        self.sandbox = api_pb2.PodSandbox(
            id=self.sandbox_id, state=api_pb2.SANDBOX_READY, created_at=1, labels=labels
        )
        self.sandbox.metadata.CopyFrom(
            api_pb2.PodSandboxMetadata(
                name="bench-pod", uid=self.pod_uid, namespace=NAMESPACE, attempt=0
            )
        )

    def _labels(self) -> dict[str, str]:
        return {
            "io.kubernetes.pod.name": "bench-pod",
            "io.kubernetes.pod.namespace": NAMESPACE,
            "io.kubernetes.pod.uid": self.pod_uid,
        }

    def _count(self, method: str) -> None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1

    def add_container(self, container_id: str, name: str) -> None:
        container = api_pb2.Container(
            id=container_id,
            pod_sandbox_id=self.sandbox_id,
            state=api_pb2.CONTAINER_RUNNING,
            created_at=2,
            labels={**self._labels(), "io.kubernetes.container.name": name},
        )
        container.image.image = "registry.example/bench/app:1"
        container.metadata.CopyFrom(api_pb2.ContainerMetadata(name=name, attempt=0))
        with self._lock:
            self.containers[container_id] = container

    # -- RuntimeService --------------------------------------------------------------

    def Version(self, request: Any, context: Any) -> Any:
        self._count("Version")
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="fakecri", runtime_version="1", runtime_api_version="v1"
        )

    def ListContainers(self, request: Any, context: Any) -> Any:
        self._count("ListContainers")
        with self._lock:
            items = list(self.containers.values())
        return api_pb2.ListContainersResponse(containers=items)

    def ListPodSandbox(self, request: Any, context: Any) -> Any:
        self._count("ListPodSandbox")
        wanted = dict(request.filter.label_selector)
        ok = all(self.sandbox.labels.get(k) == v for k, v in wanted.items())
        return api_pb2.ListPodSandboxResponse(items=[self.sandbox] if ok else [])

    def ContainerStatus(self, request: Any, context: Any) -> Any:
        self._count("ContainerStatus")
        with self._lock:
            container = self.containers.get(request.container_id)
        if container is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such container")
            raise KeyError(request.container_id)  # abort raises; for the type checker
        status = api_pb2.ContainerStatus(
            id=container.id, state=container.state, labels=dict(container.labels)
        )
        status.metadata.CopyFrom(container.metadata)
        status.image.image = container.image.image
        return api_pb2.ContainerStatusResponse(status=status)

    def PodSandboxStatus(self, request: Any, context: Any) -> Any:
        self._count("PodSandboxStatus")
        if request.pod_sandbox_id != self.sandbox_id:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such sandbox")
        status = api_pb2.PodSandboxStatus(
            id=self.sandbox.id, metadata=self.sandbox.metadata, labels=dict(self.sandbox.labels)
        )
        return api_pb2.PodSandboxStatusResponse(status=status)


class FakeCri:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.endpoint = f"unix://{socket}"
        self.runtime = FakeRuntime()
        self._server: Any = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(self.runtime, self._server)
        self._server.add_insecure_port(f"unix:{socket}")

    def __enter__(self) -> FakeCri:
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop(grace=None).wait()
