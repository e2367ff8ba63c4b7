"""The harness against a real containerd, and CriResolver against that containerd."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from oomtrace.cri.resolver import CriResolver

from .harness import IMAGE, OOM_REASONS, Container, Containerd, Pod, memory_cgroup

pytestmark = pytest.mark.containerd

MIB = 1024 * 1024
WAIT = 0.25
SLACK = 0.2  # scheduling noise on a loaded 2-core machine, on top of the bound under test


@pytest.fixture
def resolvers() -> Iterator[Callable[..., CriResolver]]:
    made: list[CriResolver] = []

    def make(endpoint: str, **kwargs: float) -> CriResolver:
        resolver = CriResolver(endpoint, wait=WAIT, **kwargs)  # type: ignore[arg-type]
        made.append(resolver)
        resolver.start()
        return resolver

    yield make
    for resolver in made:
        resolver.stop()


def running(containerd: Containerd, pod: Pod, name: str, attempt: int = 0) -> Container:
    container = containerd.create_container(pod, name, ["sleep", "3600"], attempt=attempt)
    containerd.start_container(container)
    return container


def cgroup_of(containerd: Containerd, container: Container) -> str:
    pid = containerd.status(container).pid
    assert pid is not None
    return memory_cgroup(pid)


def resolves_cleanly(resolver: CriResolver, path: str) -> bool:
    return resolver.resolve(path)[1] == []


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> float:
    begin = time.monotonic()
    while not predicate():
        assert time.monotonic() - begin < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - begin


def test_memory_hog_over_its_limit_is_oom_killed(containerd: Containerd) -> None:
    pod = containerd.run_pod("hog", "oom", qos_class="Burstable")
    # dd allocates its 100 MiB block and touches it on the first read: past 32 MiB the
    # memcg OOM killer takes it.
    hog = containerd.create_container(
        pod, "hog", ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M"], memory_limit_bytes=32 * MIB
    )
    containerd.start_container(hog)
    info = containerd.wait_exited(hog)
    assert info.exit_code == 137 and info.reason in OOM_REASONS
    containerd.remove_pod(pod)


def test_stop_with_timeout_zero_is_sigkill_not_oom(containerd: Containerd) -> None:
    pod = containerd.run_pod("stopped", "oom")
    sleeper = running(containerd, pod, "sleeper")
    assert containerd.status(sleeper).state == "running"
    containerd.stop_container(sleeper, timeout=0)
    info = containerd.wait_exited(sleeper)
    assert info.exit_code == 137
    assert info.reason != "OOMKilled"
    containerd.remove_pod(pod)


def test_resolver_names_containers_sandboxes_and_removed_containers(
    containerd: Containerd, resolvers: Callable[..., CriResolver]
) -> None:
    uid = str(uuid.uuid4())
    pod = containerd.run_pod("web-0", "shop", uid=uid, qos_class="Burstable")
    app = running(containerd, pod, "app", attempt=2)
    doomed = running(containerd, pod, "doomed")
    resolver = resolvers(containerd.endpoint, refresh_interval=60.0)
    assert resolver.refresh()

    app_path = cgroup_of(containerd, app)
    assert app_path == f"/kubepods/burstable/pod{uid}/{app.id}"
    app_started = containerd.status(app).started_at
    assert app_started is not None
    seconds, nanos = divmod(app_started, 1_000_000_000)
    assert resolver.resolve(app_path) == (
        {
            "namespace": "shop",
            "pod": "web-0",
            "pod_uid": uid,
            "container": "app",
            "container_id": app.id,
            "image": IMAGE,
            "qos_class": "Burstable",
            "runtime": "containerd",
            "attempt": 2,
            "restart_count": 2,
            "container_started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{nanos:09d}Z",
            # The container's main process, as the host sees it.
            "container_pid": containerd.status(app).pid,
            "sandbox": False,
        },
        [],
    )

    pause_pid = containerd.pod_status(pod).pid
    assert pause_pid is not None
    pause, errors = resolver.resolve(memory_cgroup(pause_pid))
    assert errors == []
    assert pause is not None
    assert (pause["sandbox"], pause["container"], pause["container_id"]) == (True, None, pod.id)
    assert (pause["namespace"], pause["pod"], pause["pod_uid"]) == ("shop", "web-0", uid)

    doomed_path = cgroup_of(containerd, doomed)
    containerd.stop_container(doomed, timeout=0)
    containerd.remove_container(doomed)
    assert resolver.refresh()  # the list no longer has it
    gone, errors = resolver.resolve(doomed_path)
    assert errors == []
    assert gone is not None
    assert (gone["container"], gone["container_id"], gone["pod"]) == ("doomed", doomed.id, "web-0")
    containerd.remove_pod(pod)


def test_resolver_guaranteed_pod_and_cache_miss(
    containerd: Containerd, resolvers: Callable[..., CriResolver]
) -> None:
    resolver = resolvers(containerd.endpoint, refresh_interval=60.0)
    assert resolver.refresh()
    uid = str(uuid.uuid4())
    pod = containerd.run_pod("db-0", "data", uid=uid, qos_class="Guaranteed")
    db = running(containerd, pod, "postgres")  # after the refresh: only a status call knows it
    path = cgroup_of(containerd, db)
    assert path == f"/kubepods/pod{uid}/{db.id}"
    begin = time.monotonic()
    k8s, errors = resolver.resolve(path)
    assert time.monotonic() - begin < WAIT + SLACK
    assert errors == []
    assert k8s is not None
    assert (k8s["namespace"], k8s["pod"], k8s["container"]) == ("data", "db-0", "postgres")
    assert (k8s["qos_class"], k8s["image"], k8s["attempt"]) == ("Guaranteed", IMAGE, 0)

    # a pause process unknown to the cache: ContainerStatus says NotFound, PodSandboxStatus knows
    pause_pid = containerd.pod_status(pod).pid
    assert pause_pid is not None
    pause, errors = resolver.resolve(memory_cgroup(pause_pid))
    assert errors == []
    assert pause is not None
    assert (pause["sandbox"], pause["container"], pause["pod"]) == (True, None, "db-0")

    # a pod-level cgroup of a pod the cache has not seen: ListPodSandbox by uid label
    other_uid = str(uuid.uuid4())
    other = containerd.run_pod("cache-0", "data", uid=other_uid, qos_class="Guaranteed")
    k8s, errors = resolver.resolve(f"/kubepods/pod{other_uid}")
    assert errors == []
    assert k8s is not None
    assert (k8s["pod"], k8s["namespace"], k8s["sandbox"], k8s["container"]) == (
        "cache-0",
        "data",
        False,
        None,
    )
    containerd.remove_pod(other)
    containerd.remove_pod(pod)


def test_containerd_outage_and_recovery(
    containerd: Containerd, resolvers: Callable[..., CriResolver]
) -> None:
    resolver = resolvers(containerd.endpoint, refresh_interval=60.0)
    assert resolver.refresh()
    uid = str(uuid.uuid4())
    pod = containerd.run_pod("api-0", "shop", uid=uid, qos_class="BestEffort")
    api = running(containerd, pod, "api")  # not in the resolver's cache
    path = cgroup_of(containerd, api)

    containerd.kill()
    path_only = {
        "namespace": None,
        "pod": None,
        "pod_uid": uid,
        "container": None,
        "container_id": api.id,
        "image": None,
        "qos_class": "BestEffort",
        "runtime": "containerd",  # from the Version() answer before the outage
        "attempt": None,
        "restart_count": None,
        "container_started": None,
        "container_pid": None,
        "sandbox": None,
    }
    late = resolvers(containerd.endpoint, refresh_interval=60.0)  # born during the outage
    for current, runtime in ((resolver, "containerd"), (late, None)):
        for _ in range(3):
            begin = time.monotonic()
            k8s, errors = current.resolve(path)
            assert time.monotonic() - begin < WAIT + SLACK
            assert k8s == path_only | {"runtime": runtime}
            assert len(errors) == 1
            assert errors[0].startswith("cri: unavailable: ")

    containerd.restart()  # the shim kept the container running through the outage
    for current in (resolver, late):
        wait_until(functools.partial(resolves_cleanly, current, path))
        k8s, _errors = current.resolve(path)
        assert k8s is not None
        assert (k8s["namespace"], k8s["pod"], k8s["container"]) == ("shop", "api-0", "api")
    assert containerd.status(api).state == "running"

    containerd.restart()  # an orderly restart (SIGTERM) while running: same outcome
    assert containerd.status(api).state == "running"
    assert resolver.refresh()
    assert resolver.resolve(path)[1] == []
    containerd.remove_pod(pod)
