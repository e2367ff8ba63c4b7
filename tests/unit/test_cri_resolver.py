"""CriResolver against a real grpc server on a unix socket, with canned and broken answers."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from structlog.typing import FilteringBoundLogger

from oomtrace.cri import api_pb2
from oomtrace.cri.cache import StaleCache
from oomtrace.cri.client import CriClient, detect_endpoint
from oomtrace.cri.errors import CriBadAnswer, CriNotFound
from oomtrace.cri.model import TEXT_MAX
from oomtrace.cri.resolver import K8S_KEYS, CriResolver

UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
OTHER_UID = "9f0e8d7c-6b5a-4938-8271-605f4e3d2c1b"
CID = "c" * 64
SID = "5" * 64
NEW_CID = "d" * 64
IMAGE_ID = "sha256:" + "e" * 64
# When the canned containers started, as ContainerStatus reports it and as events show it.
STARTED_NS = 1_764_000_000_123_456_789
STARTED = "2025-11-24T16:00:00.123456789Z"
RESTART_COUNT = "io.kubernetes.container.restartCount"
WAIT = 0.25
# Slack for scheduling on a loaded 2-core CI machine; the wait itself is the bound under test.
SLACK = 0.2

Handler = Callable[[Any], bytes]


def cgroup(container_id: str, uid: str = UID) -> str:
    return f"/kubepods/burstable/pod{uid}/{container_id}"


def pod_labels(name: str = "web-0", namespace: str = "shop", uid: str = UID) -> dict[str, str]:
    return {
        "io.kubernetes.pod.name": name,
        "io.kubernetes.pod.namespace": namespace,
        "io.kubernetes.pod.uid": uid,
    }


def sandbox_pb(sandbox_id: str = SID, *, metadata: bool = True) -> Any:
    sandbox = api_pb2.PodSandbox(
        id=sandbox_id, state=api_pb2.SANDBOX_READY, created_at=1, labels=pod_labels()
    )
    if metadata:
        sandbox.metadata.CopyFrom(
            api_pb2.PodSandboxMetadata(name="web-0", uid=UID, namespace="shop", attempt=1)
        )
    return sandbox


def container_pb(
    container_id: str = CID,
    *,
    name: str | None = "app",
    attempt: int = 3,
    image: str = "registry.example/shop/web:1.2",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    state: api_pb2.ContainerState = api_pb2.CONTAINER_RUNNING,
    created_at: int = 2,
) -> Any:
    container = api_pb2.Container(
        id=container_id,
        pod_sandbox_id=SID,
        state=state,
        created_at=created_at,
        labels=pod_labels() if labels is None else labels,
        annotations=annotations or {},
    )
    container.image.image = image
    if name is not None:
        container.metadata.CopyFrom(api_pb2.ContainerMetadata(name=name, attempt=attempt))
    return container


def status_of(container: Any, started_at: int = STARTED_NS) -> Any:
    status = api_pb2.ContainerStatus(
        id=container.id,
        state=container.state,
        labels=dict(container.labels),
        annotations=dict(container.annotations),
        created_at=container.created_at,
        started_at=0 if container.state == api_pb2.CONTAINER_CREATED else started_at,
    )
    if container.HasField("metadata"):
        status.metadata.CopyFrom(container.metadata)
    status.image.image = container.image.image
    return api_pb2.ContainerStatusResponse(status=status)


class FakeRuntime:
    """The RuntimeService read methods over canned state; any method can be overridden."""

    def __init__(self) -> None:
        self.containers: dict[str, Any] = {CID: container_pb()}
        self.sandboxes: dict[str, Any] = {SID: sandbox_pb()}
        self.statuses: dict[str, Any] = {}  # ContainerStatus answers, when not from the list
        self.overrides: dict[str, Handler] = {}
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handlers(self) -> dict[str, Handler]:
        return {
            "Version": self._version,
            "ListContainers": self._list_containers,
            "ListPodSandbox": self._list_sandboxes,
            "ContainerStatus": self._container_status,
            "PodSandboxStatus": self._sandbox_status,
        }

    def dispatch(self, method: str, request: Any, context: Any) -> bytes:
        with self._lock:
            self.calls[method] += 1
        handler = self.overrides.get(method) or self.handlers()[method]
        try:
            return handler(request)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{method}: not found")
            raise  # abort raises; this keeps type checkers content

    def _version(self, _request: Any) -> bytes:
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="fakerun", runtime_version="9.9"
        ).SerializeToString()

    def _list_containers(self, _request: Any) -> bytes:
        resp = api_pb2.ListContainersResponse(containers=list(self.containers.values()))
        return resp.SerializeToString()

    def _list_sandboxes(self, request: Any) -> bytes:
        wanted = dict(request.filter.label_selector)
        items = [
            s
            for s in self.sandboxes.values()
            if all(s.labels.get(k) == v for k, v in wanted.items())
        ]
        return api_pb2.ListPodSandboxResponse(items=items).SerializeToString()

    def _container_status(self, request: Any) -> bytes:
        cid = request.container_id
        if cid in self.statuses:
            return self.statuses[cid].SerializeToString()  # type: ignore[no-any-return]
        return status_of(self.containers[cid]).SerializeToString()  # type: ignore[no-any-return]

    def _sandbox_status(self, request: Any) -> bytes:
        sandbox = self.sandboxes[request.pod_sandbox_id]
        status = api_pb2.PodSandboxStatus(
            id=sandbox.id, metadata=sandbox.metadata, labels=dict(sandbox.labels)
        )
        return api_pb2.PodSandboxStatusResponse(status=status).SerializeToString()


_REQUESTS: dict[str, Any] = {
    "Version": api_pb2.VersionRequest,
    "ListContainers": api_pb2.ListContainersRequest,
    "ListPodSandbox": api_pb2.ListPodSandboxRequest,
    "ContainerStatus": api_pb2.ContainerStatusRequest,
    "PodSandboxStatus": api_pb2.PodSandboxStatusRequest,
}


class FakeServer:
    """A grpc server on a unix socket; the handlers return raw bytes so a test can send
    answers no runtime should (undecodable bytes, another message type)."""

    def __init__(self, socket: Path, runtime: FakeRuntime) -> None:
        self.socket = socket
        self.endpoint = f"unix://{socket}"
        self.runtime = runtime
        self._server: Any = None

    def start(self) -> None:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._bind(name),
                request_deserializer=request.FromString,
                response_serializer=lambda raw: raw,
            )
            for name, request in _REQUESTS.items()
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("runtime.v1.RuntimeService", handlers),)
        )
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def _bind(self, method: str) -> Callable[[Any, Any], bytes]:
        def handle(request: Any, context: Any) -> bytes:
            return self.runtime.dispatch(method, request, context)

        return handle


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def server(tmp_path: Path, runtime: FakeRuntime) -> Iterator[FakeServer]:
    fake = FakeServer(tmp_path / "cri.sock", runtime)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def make_resolver() -> Iterator[Callable[..., CriResolver]]:
    made: list[CriResolver] = []

    def make(endpoint: str | None, **kwargs: Any) -> CriResolver:
        kwargs.setdefault("wait", WAIT)
        resolver = CriResolver(endpoint, **kwargs)
        made.append(resolver)
        return resolver

    yield make
    for resolver in made:
        resolver.stop()


def started(resolver: CriResolver) -> CriResolver:
    resolver.start()
    assert resolver.refresh()
    return resolver


def timed_resolve(resolver: CriResolver, path: str) -> tuple[dict[str, object] | None, list[str]]:
    begin = time.monotonic()
    result = resolver.resolve(path)
    assert time.monotonic() - begin < WAIT + SLACK
    return result


def path_only(container_id: str | None = CID, runtime: str | None = None) -> dict[str, object]:
    return {
        "namespace": None,
        "pod": None,
        "pod_uid": UID,
        "container": None,
        "container_id": container_id,
        "image": None,
        "qos_class": "Burstable",
        "runtime": runtime,
        "attempt": None,
        "restart_count": None,
        "container_started": None,
        "container_pid": None,
        "sandbox": None,
    }


def named(**changes: object) -> dict[str, object]:
    k8s: dict[str, object] = {
        "namespace": "shop",
        "pod": "web-0",
        "pod_uid": UID,
        "container": "app",
        "container_id": CID,
        "image": "registry.example/shop/web:1.2",
        "qos_class": "Burstable",
        "runtime": "fakerun",
        "attempt": 3,
        "restart_count": 3,
        "container_started": STARTED,
        "container_pid": None,
        "sandbox": False,
    }
    k8s.update(changes)
    return k8s


# What a sandbox (pause) process or a pod-level cgroup has: no container facts.
NO_CONTAINER: dict[str, object] = {
    "container": None,
    "image": None,
    "restart_count": None,
    "container_started": None,
    "container_pid": None,
}


def recording_logger() -> tuple[FilteringBoundLogger, list[str]]:
    """A logger of its own, so no global structlog configuration can change what is seen."""
    events: list[str] = []

    def keep(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        events.append(str(event["event"]))
        raise structlog.DropEvent

    log = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()),
        processors=[keep],
        wrapper_class=structlog.make_filtering_bound_logger(0),
    )
    return log, events


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.05)


# ---- answers from the warm cache ----


def test_container_named_from_cache(server: FakeServer, make_resolver: Any) -> None:
    resolver = started(make_resolver(server.endpoint))
    calls = server.runtime.calls.copy()
    k8s, errors = timed_resolve(resolver, cgroup(CID))
    assert (k8s, errors) == (named(), [])
    assert k8s is not None
    assert tuple(k8s) == K8S_KEYS
    assert server.runtime.calls == calls  # no call on the event path


def test_pause_process_is_a_sandbox_not_a_container(server: FakeServer, make_resolver: Any) -> None:
    resolver = started(make_resolver(server.endpoint))
    k8s, errors = timed_resolve(resolver, cgroup(SID))
    assert errors == []
    assert k8s == named(**NO_CONTAINER, container_id=SID, attempt=1, sandbox=True)


def test_pod_and_conmon_levels_name_the_pod_only(server: FakeServer, make_resolver: Any) -> None:
    resolver = started(make_resolver(server.endpoint))
    pod_level = named(**NO_CONTAINER, container_id=None, attempt=None)
    assert resolver.resolve(f"/kubepods/burstable/pod{UID}") == (pod_level, [])
    conmon = f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}"
    assert resolver.resolve(conmon) == ({**pod_level, "runtime": "cri-o"}, [])


def test_non_kubernetes_paths_are_none_without_calls(
    server: FakeServer, make_resolver: Any
) -> None:
    resolver = started(make_resolver(server.endpoint))
    calls = server.runtime.calls.copy()
    for path in ("/system.slice/cron.service", "/user.slice/user-0.slice/session-1.scope", "/"):
        assert resolver.resolve(path) == (None, [])
    assert resolver.resolve(None) == (None, [])
    assert resolver.resolve("") == (None, [])
    qos, errors = resolver.resolve("/kubepods/besteffort")
    assert errors == []
    assert qos == dict.fromkeys(K8S_KEYS) | {
        "qos_class": "BestEffort",
        "runtime": "fakerun",
        "sandbox": False,
    }
    assert server.runtime.calls == calls


def test_metadata_wins_over_labels_and_labels_fill_in(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    labels = {**pod_labels(), "io.kubernetes.container.name": "from-label"}
    runtime.containers[CID] = container_pb(name="from-metadata", labels=labels)
    runtime.containers[NEW_CID] = container_pb(NEW_CID, name=None, labels=labels)
    runtime.sandboxes[SID] = sandbox_pb(metadata=False)
    resolver = started(make_resolver(server.endpoint))
    assert resolver.resolve(cgroup(CID)) == (named(container="from-metadata"), [])
    # no metadata at all: names from labels, attempt unknown
    assert resolver.resolve(cgroup(NEW_CID)) == (
        named(container="from-label", container_id=NEW_CID, attempt=None, restart_count=None),
        [],
    )


def test_image_id_is_named_by_container_status(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers[CID] = container_pb(image=IMAGE_ID)
    status = status_of(container_pb())
    runtime.statuses[CID] = status
    resolver = started(make_resolver(server.endpoint))
    assert resolver.resolve(cgroup(CID)) == (named(), [])
    assert resolver.refresh()  # a later list echoes the id again: the name must stay
    assert resolver.resolve(cgroup(CID)) == (named(), [])
    assert runtime.calls["ContainerStatus"] == 1


def test_a_bad_list_item_does_not_hide_the_others(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers[""] = container_pb("")
    resolver = started(make_resolver(server.endpoint))
    assert resolver.resolve(cgroup(CID)) == (named(), [])


# ---- cache misses ----


def test_miss_asks_container_status_once(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    before = runtime.calls["ContainerStatus"]  # the refresh read the listed one's status
    runtime.containers[NEW_CID] = container_pb(NEW_CID, name="late", attempt=0)
    expected = named(container_id=NEW_CID, container="late", attempt=0, restart_count=0)
    assert timed_resolve(resolver, cgroup(NEW_CID)) == (expected, [])
    assert timed_resolve(resolver, cgroup(NEW_CID)) == (expected, [])
    assert runtime.calls["ContainerStatus"] - before == 1


def test_miss_on_a_sandbox_id_asks_pod_sandbox_status(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    new_sid = "6" * 64
    runtime.sandboxes[new_sid] = sandbox_pb(new_sid)
    k8s, errors = timed_resolve(resolver, cgroup(new_sid))
    assert errors == []
    assert k8s == named(**NO_CONTAINER, container_id=new_sid, attempt=1, sandbox=True)
    assert runtime.calls["PodSandboxStatus"] == 1


def test_unknown_id_is_not_found_and_not_asked_again(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    before = runtime.calls["ContainerStatus"]
    expected = (path_only(NEW_CID, "fakerun"), [f"cri: not found: container {NEW_CID[:12]}"])
    assert timed_resolve(resolver, cgroup(NEW_CID)) == expected
    assert timed_resolve(resolver, cgroup(NEW_CID)) == expected
    assert runtime.calls["ContainerStatus"] - before == 1
    assert runtime.calls["PodSandboxStatus"] == 1


def test_slow_answer_is_cut_at_the_wait(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    log, events = recording_logger()
    resolver = started(make_resolver(server.endpoint, refresh_interval=60, log=log))

    def slow(_request: Any) -> bytes:
        time.sleep(2.0)
        return status_of(container_pb(NEW_CID)).SerializeToString()  # type: ignore[no-any-return]

    runtime.overrides["ContainerStatus"] = slow
    for _ in range(3):
        assert timed_resolve(resolver, cgroup(NEW_CID)) == (
            path_only(NEW_CID, "fakerun"),
            ["cri: timeout"],
        )
    assert events == ["cri_connected", "cri_timeout"]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(
            b"\xff\xff\xff\xff", "cri: bad answer: ContainerStatus: undecodable answer", id="bytes"
        ),
        pytest.param(
            api_pb2.ContainerStatusResponse().SerializeToString(),
            "cri: bad answer: ContainerStatus: ContainerStatus without status",
            id="no-status",
        ),
        pytest.param(
            api_pb2.ContainerStatusResponse(
                status=api_pb2.ContainerStatus(id="")
            ).SerializeToString(),
            "cri: bad answer: ContainerStatus: container without id",
            id="empty-id",
        ),
    ],
)
def test_garbage_answer_falls_back_to_the_path(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any, answer: bytes, error: str
) -> None:
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    runtime.overrides["ContainerStatus"] = lambda _request: answer
    assert timed_resolve(resolver, cgroup(NEW_CID)) == (path_only(NEW_CID, "fakerun"), [error])


def test_wrong_wire_type_is_a_bad_answer(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    # field 1 (status, a message) sent as a varint
    runtime.overrides["ContainerStatus"] = lambda _request: b"\x08\x2a"
    k8s, errors = timed_resolve(resolver, cgroup(NEW_CID))
    assert k8s == path_only(NEW_CID, "fakerun")
    assert len(errors) == 1
    assert errors[0].startswith("cri: bad answer: ContainerStatus: ")


def test_container_with_empty_fields_reports_what_is_missing(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers[CID] = container_pb(name=None, labels={}, image="")
    runtime.sandboxes.clear()
    resolver = started(make_resolver(server.endpoint))
    k8s, errors = resolver.resolve(cgroup(CID))
    assert k8s == named(
        namespace=None, pod=None, container=None, image=None, attempt=None, restart_count=None
    )
    assert errors == [f"cri: bad answer: container {CID[:12]} has no name"]


def test_container_of_another_pod_is_not_believed(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers[CID] = container_pb(labels=pod_labels(uid=OTHER_UID))
    runtime.sandboxes.clear()
    resolver = started(make_resolver(server.endpoint))
    k8s, errors = resolver.resolve(cgroup(CID))
    assert k8s == path_only(CID, "fakerun")
    assert errors == [
        f"cri: bad answer: container {CID[:12]} is in pod {OTHER_UID}, cgroup says otherwise"
    ]


# ---- removed containers ----


def test_removed_container_stays_for_stale_ttl(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    resolver = started(make_resolver(server.endpoint, refresh_interval=60, stale_ttl=0.5))
    del runtime.containers[CID]
    assert resolver.refresh()
    assert resolver.resolve(cgroup(CID)) == (named(), [])
    time.sleep(0.6)
    assert resolver.refresh()
    assert resolver.resolve(cgroup(CID)) == (
        path_only(CID, "fakerun"),
        [f"cri: not found: container {CID[:12]}"],
    )


def test_stale_cache_evicts_removed_entries_first() -> None:
    now = [0.0]
    cache: StaleCache[str] = StaleCache(stale_ttl=100, max_entries=10, clock=lambda: now[0])
    cache.sync({f"old{i}": "x" for i in range(5)})
    now[0] = 1.0
    cache.sync({f"live{i}": "y" for i in range(5)})  # the old ones are removed now
    now[0] = 2.0
    cache.put("new", "z")  # 11 entries: trimmed to 9, removed entries first
    assert len(cache) == 9
    assert "new" in cache
    assert all(f"live{i}" in cache for i in range(5))
    assert sum(f"old{i}" in cache for i in range(5)) == 3
    now[0] = 200.0
    cache.sync({"new": "z"})  # old* expire (removed at 1.0); live* are removed from now on
    assert len(cache) == 6
    assert cache.get("live0") == "y"
    assert cache.is_removed("live0")
    now[0] = 301.0
    cache.sync({"new": "z"})
    assert len(cache) == 1


def test_max_entries_bounds_the_cache(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    for i in range(50):
        cid = f"{i:064x}"
        runtime.containers[cid] = container_pb(cid)
    resolver = started(make_resolver(server.endpoint, max_entries=20))
    before = runtime.calls["ContainerStatus"]  # the refreshes read the cached ones' status
    for i in range(50):
        assert resolver.resolve(cgroup(f"{i:064x}"))[1] == []
    # at most 20 were still cached: the others had to be asked for
    assert runtime.calls["ContainerStatus"] - before >= 30


# ---- no runtime, outages ----


def test_no_socket_gives_path_data_and_unavailable(tmp_path: Path, make_resolver: Any) -> None:
    log, events = recording_logger()
    resolver = make_resolver(f"unix://{tmp_path}/absent.sock", refresh_interval=0.1, log=log)
    resolver.start()
    for _ in range(5):
        k8s, errors = timed_resolve(resolver, cgroup(CID))
        assert k8s == path_only()
        assert len(errors) == 1
        assert errors[0].startswith("cri: unavailable: ")
        time.sleep(0.1)
    assert events == ["cri_unavailable"]


def test_not_started_resolver_does_not_wait(make_resolver: Any) -> None:
    resolver = make_resolver("unix:///nonexistent/cri.sock")
    begin = time.monotonic()
    assert resolver.resolve(cgroup(CID)) == (
        path_only(),
        ["cri: unavailable: resolver not started"],
    )
    assert time.monotonic() - begin < 0.05


def test_restart_at_the_same_path_recovers_without_a_new_resolver(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    log, events = recording_logger()
    resolver = started(make_resolver(server.endpoint, refresh_interval=0.2, log=log))
    assert resolver.resolve(cgroup(CID)) == (named(), [])
    server.stop()
    runtime.containers[NEW_CID] = container_pb(NEW_CID, name="late")
    down = path_only(NEW_CID, "fakerun")
    for _ in range(10):
        k8s, errors = timed_resolve(resolver, cgroup(NEW_CID))
        assert k8s == down
        assert len(errors) == 1
        assert errors[0].startswith("cri: unavailable: ")
        # known containers stay named during the outage
        assert resolver.resolve(cgroup(CID)) == (named(), [])
        time.sleep(0.1)
    server.start()
    wait_until(lambda: resolver.resolve(cgroup(NEW_CID))[1] == [])
    assert resolver.resolve(cgroup(NEW_CID)) == (
        named(container_id=NEW_CID, container="late"),
        [],
    )
    assert events == ["cri_connected", "cri_unavailable", "cri_reconnected"]


def test_resolve_is_thread_safe(server: FakeServer, make_resolver: Any) -> None:
    resolver = started(make_resolver(server.endpoint, refresh_interval=0.05))
    failures: list[object] = []

    def worker() -> None:
        for _ in range(200):
            result = resolver.resolve(cgroup(CID))
            if result != (named(), []):
                failures.append(result)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# ---- the client ----


def test_detect_endpoint_takes_the_first_that_answers(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "not-a-socket").write_text("")
    candidates = (f"unix://{tmp_path}/absent.sock", f"unix://{tmp_path}/not-a-socket")
    assert detect_endpoint((*candidates, server.endpoint)) == server.endpoint
    assert detect_endpoint(candidates) is None


def test_client_maps_errors(server: FakeServer, runtime: FakeRuntime) -> None:
    with CriClient(server.endpoint, 1.0) as client:
        assert client.version().runtime_name == "fakerun"
        with pytest.raises(CriNotFound):
            client.container_status(NEW_CID)
        runtime.overrides["Version"] = lambda _request: (
            api_pb2.VersionResponse().SerializeToString()
        )
        with pytest.raises(CriBadAnswer, match="without runtime_name"):
            client.version()


def test_a_healthy_runtime_logs_only_the_connection(server: FakeServer, make_resolver: Any) -> None:
    log, events = recording_logger()
    resolver = started(make_resolver(server.endpoint, refresh_interval=0.05, log=log))
    for _ in range(20):
        assert resolver.resolve(cgroup(CID)) == (named(), [])
        time.sleep(0.01)
    assert events == ["cri_connected"]


# ---- hostile answers ----


def test_huge_and_control_laden_names_are_bounded(server: FakeServer, make_resolver: Any) -> None:
    """A runtime that answers with megabyte names full of terminal escapes: the event
    keeps the text (JSON escapes it) up to a bound, and says how much was cut."""
    hostile = "\x1b[2J\x1b]0;t\x07\r\n" + "x" * (1 << 20)
    server.runtime.containers[CID] = container_pb(name=hostile, image=hostile)
    server.runtime.sandboxes[SID].metadata.name = hostile
    resolver = started(make_resolver(server.endpoint))
    k8s, errors = timed_resolve(resolver, cgroup(CID))
    assert errors == []
    assert k8s is not None
    for key in ("container", "image", "pod"):
        value = k8s[key]
        assert isinstance(value, str)
        assert value.startswith("\x1b[2J\x1b]0;t\x07\r\n")
        assert value.endswith(f"…[+{len(hostile) - TEXT_MAX}]")
        assert len(value) < TEXT_MAX + 16


# ---- restarts and start times ----


def test_start_time_and_restart_count_outlive_the_container(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers[CID] = container_pb(attempt=2, annotations={RESTART_COUNT: "2"})
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    assert runtime.calls["ContainerStatus"] == 1  # read once, by the refresh
    expected = named(attempt=2, restart_count=2)
    assert resolver.resolve(cgroup(CID)) == (expected, [])
    assert resolver.refresh()  # a later list has no start time: the one read stays
    del runtime.containers[CID]
    assert resolver.refresh()
    assert resolver.resolve(cgroup(CID)) == (expected, [])
    assert runtime.calls["ContainerStatus"] == 1


def test_a_restart_is_a_new_container_with_its_own_facts(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    later = STARTED_NS + 90 * 1_000_000_000
    runtime.containers[CID] = container_pb(attempt=0, annotations={RESTART_COUNT: "0"})
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    runtime.containers[NEW_CID] = container_pb(NEW_CID, attempt=1, annotations={RESTART_COUNT: "1"})
    runtime.statuses[NEW_CID] = status_of(runtime.containers[NEW_CID], started_at=later)
    del runtime.containers[CID]  # the kubelet removes the dead one after the restart
    assert resolver.refresh()
    assert resolver.resolve(cgroup(CID)) == (named(attempt=0, restart_count=0), [])
    assert resolver.resolve(cgroup(NEW_CID)) == (
        named(
            container_id=NEW_CID,
            attempt=1,
            restart_count=1,
            container_started="2025-11-24T16:01:30.123456789Z",
        ),
        [],
    )


def test_a_created_container_is_read_once_it_has_started(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers = {
        CID: container_pb(state=api_pb2.CONTAINER_CREATED, created_at=time.time_ns())
    }
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    assert runtime.calls["ContainerStatus"] == 0  # not started: nothing to read yet
    runtime.containers[CID].state = api_pb2.CONTAINER_RUNNING
    # A container created moments ago brings the next list forward.
    wait_until(lambda: runtime.calls["ContainerStatus"] == 1, timeout=3.0)
    calls = runtime.calls.copy()
    assert timed_resolve(resolver, cgroup(CID)) == (named(), [])
    assert runtime.calls == calls


def test_a_container_created_long_ago_brings_no_early_list(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers = {CID: container_pb(state=api_pb2.CONTAINER_CREATED, created_at=2)}
    started(make_resolver(server.endpoint, refresh_interval=60))
    lists = runtime.calls["ListContainers"]
    time.sleep(1.0)
    assert runtime.calls["ListContainers"] == lists


def test_the_event_asks_the_start_of_a_container_listed_before_it_started(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers = {CID: container_pb(state=api_pb2.CONTAINER_CREATED, created_at=2)}
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    runtime.containers[CID].state = api_pb2.CONTAINER_RUNNING  # its process ran, and died
    assert timed_resolve(resolver, cgroup(CID)) == (named(), [])
    assert timed_resolve(resolver, cgroup(CID)) == (named(), [])
    assert runtime.calls["ContainerStatus"] == 1


def test_a_start_the_runtime_cannot_tell_in_time_is_null_with_the_reason(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers = {CID: container_pb(state=api_pb2.CONTAINER_CREATED, created_at=2)}
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))

    def slow(_request: Any) -> bytes:
        time.sleep(2.0)
        return status_of(container_pb()).SerializeToString()  # type: ignore[no-any-return]

    runtime.overrides["ContainerStatus"] = slow
    assert timed_resolve(resolver, cgroup(CID)) == (
        named(container_started=None),
        ["cri: timeout"],
    )


def test_a_start_asked_after_the_removal_is_null_without_an_error(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers = {CID: container_pb(state=api_pb2.CONTAINER_CREATED, created_at=2)}
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    del runtime.containers[CID]  # gone before any list showed it started
    assert timed_resolve(resolver, cgroup(CID)) == (named(container_started=None), [])


def test_a_status_about_another_container_is_not_taken(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.statuses[CID] = status_of(container_pb(NEW_CID))
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    assert resolver.resolve(cgroup(CID)) == (named(container_started=None), [])


def test_a_docker_pause_container_has_no_restart_count_or_start(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    labels = {**pod_labels(), "io.kubernetes.docker.type": "podsandbox"}
    runtime.containers[CID] = container_pb(labels=labels, annotations={RESTART_COUNT: "4"})
    resolver = started(make_resolver(server.endpoint))
    assert resolver.resolve(cgroup(CID)) == (
        named(**NO_CONTAINER, attempt=None, sandbox=True),
        [],
    )


@pytest.mark.parametrize(
    "annotation", ["-1", "1e3", " 2", "2\n", "0x2", "1_000", "\u0661", "4294967296", "9" * 5000]
)
def test_a_malformed_restart_count_is_null_and_nothing_else(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any, annotation: str
) -> None:
    runtime.containers[CID] = container_pb(annotations={RESTART_COUNT: annotation})
    resolver = started(make_resolver(server.endpoint))
    assert resolver.resolve(cgroup(CID)) == (named(restart_count=None), [])


@pytest.mark.parametrize(
    ("started_at", "text"),
    [(1, "1970-01-01T00:00:00.000000001Z"), (2**63 - 1, "2262-04-11T23:47:16.854775807Z")],
)
def test_extreme_start_times_are_rendered(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any, started_at: int, text: str
) -> None:
    runtime.statuses[CID] = status_of(container_pb(), started_at=started_at)
    resolver = started(make_resolver(server.endpoint))
    assert resolver.resolve(cgroup(CID)) == (named(container_started=text), [])


def test_start_times_of_different_seconds_resolved_at_once(
    server: FakeServer, runtime: FakeRuntime, make_resolver: Any
) -> None:
    runtime.containers[NEW_CID] = container_pb(NEW_CID)
    runtime.statuses[NEW_CID] = status_of(container_pb(NEW_CID), started_at=STARTED_NS + 10**9)
    resolver = started(make_resolver(server.endpoint, refresh_interval=60))
    expected: dict[str, tuple[dict[str, object], list[str]]] = {
        CID: (named(), []),
        NEW_CID: (
            named(container_id=NEW_CID, container_started="2025-11-24T16:00:01.123456789Z"),
            [],
        ),
    }
    failures: list[object] = []

    def worker(cid: str) -> None:
        for _ in range(300):
            result = resolver.resolve(cgroup(cid))
            if result != expected[cid]:
                failures.append(result)

    threads = [threading.Thread(target=worker, args=(cid,)) for cid in (CID, NEW_CID) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
