"""A container's child killed while its main process lives on: procfs.lives_on, the
enricher's two fields and the explanation's words."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from oomtrace.classify import Facts, Party, Rules, classify
from oomtrace.host import procfs
from oomtrace.kubernetes import _main_process


def test_a_running_process_lives_on() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert procfs.lives_on(child.pid) is True
    finally:
        child.kill()
        child.wait()


def test_a_killed_process_does_not_though_it_is_not_reaped_yet() -> None:
    child = subprocess.Popen(["sleep", "30"])
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    # A zombie until waited for: not living.
    while procfs.lives_on(child.pid) is not False:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.wait()
    assert procfs.lives_on(child.pid) is False


def test_a_stopped_process_still_lives() -> None:
    # Stopped is not killed: a SIGSTOPped main process comes back with SIGCONT.
    child = subprocess.Popen(["sleep", "30"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        assert procfs.lives_on(child.pid) is True
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def _victim(pid: int, main: int | None, cgroup: str) -> dict[str, Any]:
    k8s = {"sandbox": False, "container_pid": main, "container": "api"}
    return {"pid": pid, "cgroup": cgroup, "k8s": k8s}


def test_the_enricher_says_whether_the_main_process_lives() -> None:
    main = subprocess.Popen(["sleep", "30"])
    try:
        cgroup = procfs.snapshot(main.pid, with_parents=False).memory_cgroup  # type: ignore[union-attr]
        child = _victim(main.pid + 100_000, main.pid, cgroup)  # type: ignore[arg-type]
        _main_process(child)
        assert (child["k8s"]["main_process"], child["k8s"]["main_process_lives"]) == (False, True)
        itself = _victim(main.pid, main.pid, cgroup)  # type: ignore[arg-type]
        _main_process(itself)
        assert (itself["k8s"]["main_process"], itself["k8s"]["main_process_lives"]) == (True, None)
        # The pid in another cgroup is not the container's process any more.
        moved = _victim(main.pid + 100_000, main.pid, "/elsewhere")
        _main_process(moved)
        assert moved["k8s"]["main_process_lives"] is False
    finally:
        main.kill()
        main.wait()
    unknown = _victim(1234, None, "/x")
    _main_process(unknown)
    assert (unknown["k8s"]["main_process"], unknown["k8s"]["main_process_lives"]) == (None, None)


def test_the_explanation_says_the_container_lives_on() -> None:
    k8s = {"namespace": "shop", "pod": "api-0", "container": "api", "container_id": "c" * 64,
           "container_pid": 4242, "main_process": False, "main_process_lives": True}  # fmt: skip
    victim = Party(pid=4300, comm="dd", k8s=k8s)
    facts = Facts(kind="oom_kill", victim=victim, memcg="/kubepods.slice", limit_bytes=1 << 26)
    text = classify(facts, Rules()).explanation
    assert "it was a child process (dd): the container's main process (pid 4242) lives on" in text
    dead = victim._replace(k8s={**k8s, "main_process_lives": False})
    assert "lives on" not in classify(facts._replace(victim=dead), Rules()).explanation


def test_a_dying_containers_init_taking_its_namespace_along() -> None:
    k8s = {"namespace": "shop", "pod": "orders", "container": "worker",
           "container_id": "c" * 64, "container_pid": 670}  # fmt: skip
    sender = Party(pid=670, comm="sh", uid=0, k8s=k8s)
    victim = Party(pid=685, comm="sleep", k8s=k8s)
    facts = Facts(kind="signal", victim=victim, sender=sender, signal="SIGKILL",
                  signal_code="SI_KERNEL", from_kernel=True)  # fmt: skip
    verdict = classify(facts, Rules())
    assert verdict.cause == "kernel"
    assert "as the container's main process sh (pid 670, uid 0) ended" in verdict.explanation
    other = facts._replace(sender=sender._replace(pid=671))
    assert "main process" not in classify(other, Rules()).explanation
