"""Names the pod and container behind a cgroup path, from a cache the CRI keeps warm.

The event path (``resolve``) never waits longer than ``wait``: it answers from the cache,
asks the runtime about an id it has not seen with that wait as the deadline, and falls back
to what the cgroup path tells when the runtime is down, slow or talks nonsense. A daemon
thread lists containers and sandboxes every ``refresh_interval`` (sooner while a container
just created has not started), reads each started container's status once, and reconnects
after an outage.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import structlog
from structlog.typing import FilteringBoundLogger

from oomtrace.cri.cache import StaleCache
from oomtrace.cri.client import DEFAULT_ENDPOINTS, CriClient, detect_endpoint
from oomtrace.cri.errors import CriError, CriNotFound, CriTimeout, CriUnavailable
from oomtrace.cri.health import CriHealth
from oomtrace.cri.model import POD_UID, ContainerInfo, SandboxInfo, looks_like_image_id
from oomtrace.host.kubepath import KubeCgroup, parse_kube_cgroup
from oomtrace.schema import rfc3339

__all__ = ["K8S_KEYS", "CriResolver"]

K8S_KEYS = (
    "namespace",
    "pod",
    "pod_uid",
    "container",
    "container_id",
    "image",
    "qos_class",
    "runtime",
    "attempt",
    "restart_count",
    "container_started",
    "container_pid",
    "sandbox",
)

# Background calls may take longer than the event path's wait: nothing waits on them.
_LIST_TIMEOUT = 5.0
_DETECT_TIMEOUT = 1.0
_RETRY_INTERVAL = 1.0
# ContainerStatus calls per refresh, for image names and start times (see _ask_statuses).
_STATUS_LOOKUPS_PER_REFRESH = 256
# The kubelet starts a container right after creating it: a list that shows one created
# this recently is followed by another soon, to read its start time while it exists.
_STARTING_WINDOW_NS = 10_000_000_000
_STARTING_RECHECK = 0.25


class CriResolver:
    """Thread-safe: ``resolve`` may be called from any thread while the refresh thread runs.

    ``resolve`` returns ``(k8s, errors)``: ``k8s`` is None for a cgroup outside kubepods,
    else a dict with exactly the keys of ``K8S_KEYS``; ``errors`` holds entries such as
    ``"cri: unavailable: <reason>"``, ``"cri: timeout"``, ``"cri: bad answer: <what>"`` or
    ``"cri: not found: <what>"`` when the runtime could not name what the path points at.
    """

    def __init__(
        self,
        endpoint: str | None,
        *,
        refresh_interval: float = 10.0,
        wait: float = 0.25,
        stale_ttl: float = 600.0,
        max_entries: int = 10000,
        log: FilteringBoundLogger | None = None,
        names: bool = True,
    ) -> None:
        # names=False: never talk to a runtime; cgroup paths alone give the facts.
        self._names = names
        self._endpoint = endpoint
        self._refresh_interval = max(refresh_interval, 0.05)
        self._wait = max(wait, 0.0)
        self._max_entries = max(max_entries, 1)
        self._log: FilteringBoundLogger = log or structlog.get_logger("oomtrace.cri")
        self._health = CriHealth(self._log, endpoint)
        # _lock guards the caches and the client; _refresh_lock keeps refreshes one at a time.
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._containers: StaleCache[ContainerInfo] = StaleCache(
            stale_ttl=stale_ttl, max_entries=max_entries
        )
        self._sandboxes: StaleCache[SandboxInfo] = StaleCache(
            stale_ttl=stale_ttl, max_entries=max_entries
        )
        self._missing: dict[str, float] = {}  # ids the runtime denied, until a deadline
        # Listed containers whose ContainerStatus was read once they had started.
        self._status_asked: set[str] = set()
        self._starting = False  # the last list had a container created but not started yet
        self._client: CriClient | None = None
        self._runtime_name: str | None = None
        self._connected_once = False
        self._ready = threading.Event()  # set once the first connection attempt is over
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> None:
        if self._thread is not None or not self._names:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="oomtrace-cri", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=_LIST_TIMEOUT + 1.0)
        self._drop_client()

    def nudge(self) -> None:
        """Asks the background thread to refresh now: a container cgroup just
        appeared, and its names should be cached before anything kills it."""
        self._wake.set()

    def refresh(self) -> bool:
        """Connect if needed and reload both lists now; True when the runtime answered."""
        with self._refresh_lock:
            try:
                client = self._connected_client()
                containers = client.list_containers(timeout=_LIST_TIMEOUT)
                sandboxes = client.list_sandboxes(timeout=_LIST_TIMEOUT)
            except CriError as err:
                self._failed(err, wake=False)
                self._ready.set()
                return False
            self._store_lists(containers, sandboxes)
            self._health.ok()
            self._ready.set()
            self._ask_statuses(client, containers)
            return True

    def _run(self) -> None:
        crashed = False
        while not self._stopping:
            try:
                ok = self.refresh()
            except Exception:  # a bug here must not end enrichment for the agent's lifetime
                if not crashed:
                    self._log.exception("cri_refresh_crashed")
                crashed, ok = True, False
                self._ready.set()
            interval = self._refresh_interval
            if not ok:
                interval = min(interval, _RETRY_INTERVAL)
            elif self._starting:
                interval = min(interval, _STARTING_RECHECK)
            self._wake.wait(interval)
            self._wake.clear()

    # ---- the event path ----

    def resolve(self, cgroup_path: str | None) -> tuple[dict[str, object] | None, list[str]]:
        if not cgroup_path:
            return None, []
        kube = parse_kube_cgroup(cgroup_path)
        if kube is None:
            return None, []
        deadline = time.monotonic() + self._wait
        k8s = self._from_path(kube)
        if not self._names:
            return k8s, []
        if kube.role == "container" and kube.container_id is not None:
            errors = self._name_container(k8s, kube, kube.container_id, deadline)
        elif kube.role in ("pod", "conmon") and kube.pod_uid is not None:
            errors = self._name_pod(k8s, kube.pod_uid, deadline)
        else:
            errors = []
        return k8s, errors

    def _from_path(self, kube: KubeCgroup) -> dict[str, object]:
        return {
            "namespace": None,
            "pod": None,
            "pod_uid": kube.pod_uid,
            "container": None,
            "container_id": kube.container_id,
            "image": None,
            "qos_class": kube.qos_class or None,
            "runtime": kube.runtime or self._runtime_name,
            "attempt": None,
            "restart_count": None,
            "container_started": None,
            "container_pid": None,
            # Only a container-level cgroup can hold a sandbox (pause) process.
            "sandbox": None if kube.role == "container" else False,
        }

    def _name_container(
        self, k8s: dict[str, object], kube: KubeCgroup, container_id: str, deadline: float
    ) -> list[str]:
        with self._lock:
            container = self._containers.get(container_id)
            sandbox = self._sandboxes.get(container_id) if container is None else None
        cached = container is not None
        if container is None and sandbox is None:
            try:
                container, sandbox = self._ask_container(container_id, deadline)
            except CriError as err:
                return [err.describe()]
        if sandbox is not None:
            return _apply_sandbox(k8s, sandbox, kube, is_process=True)
        if container is None:
            return []
        errors: list[str] = []
        if cached and self._wants_start(container):
            try:
                container = self._ask_start(container, deadline)
            except CriNotFound:
                pass  # removed since the last list: the names are still right
            except CriError as err:
                errors.append(err.describe())
        with self._lock:
            pod = self._pod_of(container)
        return _apply_container(k8s, container, pod, kube) + errors

    def _wants_start(self, container: ContainerInfo) -> bool:
        """A process of this container was seen, so it has started: a listed container
        whose status the refresh has not read yet is asked once, within the wait. A
        status read before its task ran has a start but no pid yet: asked again."""
        if container.is_sandbox or (container.started_at is not None and container.pid):
            return False
        with self._lock:
            return (
                container.id not in self._status_asked
                and container.id in self._containers
                and not self._containers.is_removed(container.id)
            )

    def _ask_start(self, known: ContainerInfo, deadline: float) -> ContainerInfo:
        client = self._client_for_event(deadline)
        try:
            status = client.container_status(known.id, verbose=True, timeout=_remaining(deadline))
        except CriNotFound:
            raise
        except CriError as err:
            self._failed(err, wake=True)
            raise
        self._health.ok()
        return self._merge_status(known.id, status) or known

    def _name_pod(self, k8s: dict[str, object], pod_uid: str, deadline: float) -> list[str]:
        with self._lock:
            sandbox = self._sandbox_by_uid(pod_uid)
        if sandbox is None:
            try:
                sandbox = self._ask_pod(pod_uid, deadline)
            except CriError as err:
                return [err.describe()]
        return _apply_sandbox(k8s, sandbox, None, is_process=False)

    def _ask_container(
        self, container_id: str, deadline: float
    ) -> tuple[ContainerInfo | None, SandboxInfo | None]:
        self._check_missing(container_id, f"container {container_id[:12]}")
        client = self._client_for_event(deadline)
        try:
            try:
                container = client.container_status(
                    container_id, verbose=True, timeout=_remaining(deadline)
                )
            except CriNotFound:
                pass
            else:
                self._store_one(container_id, container=container)
                self._health.ok()
                with self._lock:
                    if container.state != "created":
                        self._status_asked.add(container_id)
                return container, None
            # containerd and CRI-O keep sandboxes apart from containers: a pause process's id
            # is only known to PodSandboxStatus.
            try:
                sandbox = client.sandbox_status(container_id, timeout=_remaining(deadline))
            except CriNotFound:
                self._mark_missing(container_id)
                raise CriNotFound(f"container {container_id[:12]}") from None
            self._store_one(container_id, sandbox=sandbox)
            self._health.ok()
            return None, sandbox
        except CriNotFound:
            raise
        except CriError as err:
            self._failed(err, wake=True)
            raise

    def _ask_pod(self, pod_uid: str, deadline: float) -> SandboxInfo:
        key = f"pod:{pod_uid}"
        self._check_missing(key, f"pod {pod_uid}")
        client = self._client_for_event(deadline)
        try:
            found = client.list_sandboxes(
                label_selector={POD_UID: pod_uid}, timeout=_remaining(deadline)
            )
        except CriError as err:
            self._failed(err, wake=True)
            raise
        self._health.ok()
        found = [s for s in found if s.uid in (None, pod_uid)]
        if not found:
            self._mark_missing(key)
            raise CriNotFound(f"pod {pod_uid}")
        for sandbox in found:
            self._store_one(sandbox.id, sandbox=sandbox)
        return max(found, key=_sandbox_rank)

    def _client_for_event(self, deadline: float) -> CriClient:
        if not self._ready.is_set():
            if self._thread is None:
                raise CriUnavailable("resolver not started")
            if not self._ready.wait(max(deadline - time.monotonic(), 0.0)):
                raise CriTimeout("still connecting")
        reason = self._health.down_reason
        if reason is not None:
            raise CriUnavailable(reason)
        with self._lock:
            client = self._client
        if client is None:
            raise CriUnavailable("not connected")
        return client

    # ---- the cache ----

    def _store_lists(self, containers: list[ContainerInfo], sandboxes: list[SandboxInfo]) -> None:
        starting_after = time.time_ns() - _STARTING_WINDOW_NS
        with self._lock:
            self._sandboxes.sync({s.id: s for s in sandboxes})
            self._containers.sync({c.id: self._keep_status_facts(c) for c in containers})
            for container in containers:
                self._missing.pop(container.id, None)
            for sandbox in sandboxes:
                self._missing.pop(sandbox.id, None)
                if sandbox.uid is not None:
                    self._missing.pop(f"pod:{sandbox.uid}", None)
            self._status_asked &= {c.id for c in containers}
            self._starting = any(
                c.state == "created" and c.created_at > starting_after for c in containers
            )

    def _keep_status_facts(self, listed: ContainerInfo) -> ContainerInfo:
        """ListContainers echoes the image id and has no start time; what ContainerStatus
        told about the same container id stays."""
        known = self._containers.get(listed.id)
        if known is None:
            return listed
        image = listed.image
        if (
            known.image is not None
            and looks_like_image_id(listed.image)
            and not looks_like_image_id(known.image)
        ):
            image = known.image
        started_at = listed.started_at if listed.started_at is not None else known.started_at
        pid = listed.pid if listed.pid is not None else known.pid
        if image == listed.image and started_at == listed.started_at and pid == listed.pid:
            return listed
        return dataclasses.replace(listed, image=image, started_at=started_at, pid=pid)

    def _ask_statuses(self, client: CriClient, containers: list[ContainerInfo]) -> None:
        """ContainerStatus alone has a container's start time, and turns the image id the
        kubelet creates containers with into the image's name. Read once per container
        after it started, so both are known if it is removed before an event needs them."""
        asked = 0
        for listed in containers:
            if asked >= _STATUS_LOOKUPS_PER_REFRESH:
                return
            with self._lock:
                known = self._containers.get(listed.id)
                if listed.id in self._status_asked or known is None:
                    continue
                if known.state == "created":
                    continue  # started_at is still 0; a later list shows it started
                if (
                    known.started_at is not None
                    and known.pid is not None
                    and not looks_like_image_id(known.image)
                ):
                    continue
                self._status_asked.add(listed.id)
            asked += 1
            try:
                # Verbose: the task's pid, the container's main process, is only there.
                status = client.container_status(listed.id, verbose=True, timeout=_LIST_TIMEOUT)
            except CriNotFound:
                continue
            except CriError:
                return  # the next refresh tries again; the lists themselves were fine
            self._merge_status(listed.id, status)

    def _merge_status(self, container_id: str, status: ContainerInfo) -> ContainerInfo | None:
        """Adds what only ContainerStatus tells to the cached container; None when the
        cache no longer holds it as live, or the answer is about another container."""
        if status.id != container_id:
            return None
        with self._lock:
            current = self._containers.get(container_id)
            if current is None or self._containers.is_removed(container_id):
                return None
            if status.state != "created":
                self._status_asked.add(container_id)
            image = current.image
            if status.image is not None and not looks_like_image_id(status.image):
                image = status.image
            started_at = status.started_at if status.started_at is not None else current.started_at
            pid = status.pid if status.pid is not None else current.pid
            merged = dataclasses.replace(current, image=image, started_at=started_at, pid=pid)
            self._containers.put(container_id, merged)
            return merged

    def _store_one(
        self,
        key: str,
        *,
        container: ContainerInfo | None = None,
        sandbox: SandboxInfo | None = None,
    ) -> None:
        with self._lock:
            if container is not None:
                self._containers.put(key, container)
            if sandbox is not None:
                self._sandboxes.put(key, sandbox)

    def _pod_of(self, container: ContainerInfo) -> SandboxInfo | None:
        if container.sandbox_id is not None:
            sandbox = self._sandboxes.get(container.sandbox_id)
            if sandbox is not None:
                return sandbox
        return self._sandbox_by_uid(container.pod_uid) if container.pod_uid else None

    def _sandbox_by_uid(self, pod_uid: str) -> SandboxInfo | None:
        candidates = [s for s in self._sandboxes.values() if s.uid == pod_uid]
        return max(candidates, key=_sandbox_rank) if candidates else None

    def _check_missing(self, key: str, what: str) -> None:
        with self._lock:
            until = self._missing.get(key)
        if until is not None and time.monotonic() < until:
            raise CriNotFound(what)

    def _mark_missing(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._missing) >= self._max_entries:
                self._missing = {k: t for k, t in self._missing.items() if t > now}
                if len(self._missing) >= self._max_entries:
                    self._missing.clear()
            # Until the next list, which would show the id if it has appeared since.
            self._missing[key] = now + self._refresh_interval

    # ---- the connection ----

    def _connected_client(self) -> CriClient:
        with self._lock:
            if self._client is not None:
                return self._client
        endpoint = self._endpoint or detect_endpoint(timeout=_DETECT_TIMEOUT)
        if endpoint is None:
            raise CriUnavailable("no CRI socket answers at " + ", ".join(DEFAULT_ENDPOINTS))
        client = CriClient(endpoint, _LIST_TIMEOUT)
        try:
            version = client.version()
        except CriError:
            client.close()
            raise
        with self._lock:
            self._client = client
            self._runtime_name = version.runtime_name
            first = not self._connected_once
            self._connected_once = True
        self._health.endpoint = endpoint
        if first:
            self._log.info(
                "cri_connected",
                endpoint=endpoint,
                runtime=version.runtime_name,
                runtime_version=version.runtime_version,
            )
        return client

    def _failed(self, err: CriError, *, wake: bool) -> None:
        starts = self._health.failed(err)
        if isinstance(err, CriUnavailable):
            self._drop_client()
            if starts and wake:
                self._wake.set()  # let the refresh thread start reconnecting now

    def _drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _apply_container(
    k8s: dict[str, object],
    container: ContainerInfo,
    pod: SandboxInfo | None,
    kube: KubeCgroup,
) -> list[str]:
    short = container.id[:12]
    pod_uid = (pod.uid if pod else None) or container.pod_uid
    if kube.pod_uid and pod_uid and pod_uid != kube.pod_uid:
        # Trust the kernel's cgroup over a runtime answer that contradicts it.
        return [f"cri: bad answer: container {short} is in pod {pod_uid}, cgroup says otherwise"]
    if container.is_sandbox:
        k8s.update(sandbox=True, container=None, image=None)
    else:
        k8s.update(
            sandbox=False,
            container=container.name,
            image=container.image,
            attempt=container.attempt,
            restart_count=container.restart_count,
            container_started=(
                None if container.started_at is None else rfc3339(container.started_at)
            ),
            container_pid=container.pid,
        )
    k8s.update(
        namespace=(pod.namespace if pod else None) or container.pod_namespace,
        pod=(pod.name if pod else None) or container.pod_name,
        pod_uid=pod_uid or kube.pod_uid,
    )
    if container.name is None and not container.is_sandbox:
        return [f"cri: bad answer: container {short} has no name"]
    return []


def _apply_sandbox(
    k8s: dict[str, object],
    sandbox: SandboxInfo,
    kube: KubeCgroup | None,
    *,
    is_process: bool,
) -> list[str]:
    short = sandbox.id[:12]
    if kube is not None and kube.pod_uid and sandbox.uid and sandbox.uid != kube.pod_uid:
        return [f"cri: bad answer: sandbox {short} is pod {sandbox.uid}, cgroup says otherwise"]
    k8s.update(
        namespace=sandbox.namespace,
        pod=sandbox.name,
        pod_uid=sandbox.uid or k8s["pod_uid"],
        container=None,
        image=None,
        attempt=sandbox.attempt if is_process else None,
        sandbox=is_process,
    )
    if sandbox.name is None or sandbox.namespace is None:
        return [f"cri: bad answer: sandbox {short} has no pod name or namespace"]
    return []


def _sandbox_rank(sandbox: SandboxInfo) -> tuple[bool, int]:
    return (sandbox.ready, sandbox.created_at)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CriTimeout("no time left")
    return left
