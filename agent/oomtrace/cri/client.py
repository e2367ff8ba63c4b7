"""A thin typed client for the CRI v1 ``runtime.v1.RuntimeService`` over a unix socket."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc

from oomtrace.cri import api_pb2, api_pb2_grpc
from oomtrace.cri.errors import CriBadAnswer, CriError, CriNotFound, CriTimeout, CriUnavailable
from oomtrace.cri.model import (
    ContainerInfo,
    RuntimeVersion,
    SandboxInfo,
    container_from_list,
    container_from_status,
    sandbox_from_list,
    sandbox_from_status,
    version_from_pb,
)

__all__ = ["DEFAULT_ENDPOINTS", "CriClient", "detect_endpoint", "socket_path"]

DEFAULT_ENDPOINTS = ("unix:///run/containerd/containerd.sock", "unix:///var/run/crio/crio.sock")

# The kubelet allows 16 MiB answers: ListContainers on a busy node exceeds grpc's 4 MiB default.
_MAX_MESSAGE = 16 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.enable_http_proxy", 0),
    # grpc backs off reconnects up to 120 s by default; a restarted runtime is back in ~0.1 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
_MAX_DETAIL = 200
_CONNECT_ERROR = re.compile(r"addr: (?P<addr>\S+) error: (?P<error>[^;]+)$")

T = TypeVar("T")


class CriClient:
    """One channel to one runtime. Methods raise ``CriError`` subclasses, never grpc errors.

    ``timeout`` is the deadline of each call unless the call passes its own.
    """

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel: Any = grpc.insecure_channel(_grpc_target(endpoint), options=_CHANNEL_OPTIONS)
        self._stub: Any = api_pb2_grpc.RuntimeServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def version(self, *, timeout: float | None = None) -> RuntimeVersion:
        resp = self._call("Version", api_pb2.VersionRequest(version="v1"), timeout)
        return _convert("Version", version_from_pb, resp)

    def list_containers(self, *, timeout: float | None = None) -> list[ContainerInfo]:
        resp = self._call("ListContainers", api_pb2.ListContainersRequest(), timeout)
        return _convert_items("ListContainers", container_from_list, resp.containers)

    def list_sandboxes(
        self, *, label_selector: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> list[SandboxInfo]:
        request = api_pb2.ListPodSandboxRequest()
        if label_selector:
            request.filter.label_selector.update(label_selector)
        resp = self._call("ListPodSandbox", request, timeout)
        return _convert_items("ListPodSandbox", sandbox_from_list, resp.items)

    def container_status(
        self, container_id: str, *, verbose: bool = False, timeout: float | None = None
    ) -> ContainerInfo:
        request = api_pb2.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        resp = self._call("ContainerStatus", request, timeout)
        return _convert("ContainerStatus", container_from_status, resp)

    def sandbox_status(
        self, sandbox_id: str, *, verbose: bool = False, timeout: float | None = None
    ) -> SandboxInfo:
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose)
        resp = self._call("PodSandboxStatus", request, timeout)
        return _convert("PodSandboxStatus", sandbox_from_status, resp)

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        deadline = self.timeout if timeout is None else timeout
        try:
            return getattr(self._stub, method)(request, timeout=max(deadline, 0.001))
        except grpc.RpcError as err:
            raise _from_rpc_error(method, err) from None
        except ValueError as err:  # grpc raises it for a call on a closed channel
            raise CriUnavailable(f"{method}: {err}") from None
        except Exception as err:  # the event path must get a CriError, whatever grpc does
            raise CriBadAnswer(f"{method}: {type(err).__name__}: {err}") from None


def detect_endpoint(
    candidates: Iterable[str] = DEFAULT_ENDPOINTS, *, timeout: float = 1.0
) -> str | None:
    """The first candidate whose socket exists and answers Version()."""
    for endpoint in candidates:
        try:
            if not stat.S_ISSOCK(os.stat(socket_path(endpoint)).st_mode):
                continue
        except OSError:
            continue
        with CriClient(endpoint, timeout) as client:
            try:
                client.version()
            except CriError:
                continue
        return endpoint
    return None


def socket_path(endpoint: str) -> str:
    """The filesystem path of a ``unix://`` (or bare path) endpoint."""
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            return endpoint[len(prefix) :]
    return endpoint


def _grpc_target(endpoint: str) -> str:
    return "unix:" + socket_path(endpoint)


def _convert(method: str, convert: Callable[[Any], T], msg: Any) -> T:
    try:
        return convert(msg)
    except CriBadAnswer as err:
        raise CriBadAnswer(f"{method}: {err}") from None
    except (AttributeError, TypeError, ValueError) as err:
        raise CriBadAnswer(f"{method}: {type(err).__name__}: {err}") from None


def _connect_failure(details: str) -> str:
    """grpc's "failed to connect to all addresses; ... addr: unix:/x error: Connection refused"
    shortened to its cause, "unix:/x: Connection refused"."""
    found = _CONNECT_ERROR.search(details)
    return f"{found.group('addr')}: {found.group('error')}" if found else details[:_MAX_DETAIL]


def _convert_items(method: str, convert: Callable[[Any], T], items: Any) -> list[T]:
    """Items that cannot be used (no id) are left out: one bad entry must not hide the rest."""
    out: list[T] = []
    for item in items:
        try:
            out.append(_convert(method, convert, item))
        except CriBadAnswer:
            continue
    return out


def _from_rpc_error(method: str, err: grpc.RpcError) -> CriError:
    code: Any = err.code() if hasattr(err, "code") else None
    details = str(err.details() if hasattr(err, "details") else err)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CriTimeout(method)
    if code == grpc.StatusCode.NOT_FOUND:
        return CriNotFound(details[:_MAX_DETAIL])
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return CriUnavailable(_connect_failure(details))
    if code == grpc.StatusCode.UNIMPLEMENTED:
        # containerd < 1.6 and other old runtimes serve only v1alpha2.
        return CriUnavailable(f"{method} not implemented (runtime lacks CRI v1?)")
    if code == grpc.StatusCode.INTERNAL and "deserializ" in details.lower():
        return CriBadAnswer(f"{method}: undecodable answer")
    name = getattr(code, "name", str(code))
    return CriBadAnswer(f"{method}: {name}: {details[:_MAX_DETAIL]}")
