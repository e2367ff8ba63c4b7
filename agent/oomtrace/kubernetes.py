"""Enrich: each process of an event gets its pod and container (`k8s`), from its
cgroup path and the CRI. It fills only the `k8s` fields and adds to
`enrichment.errors`; it runs after the --pid/--cgroup filter, so a filtered-out
kill costs no CRI call.
"""

from __future__ import annotations

from typing import Protocol

from oomtrace.host import procfs
from oomtrace.schema import ROLES, Event


class K8sResolver(Protocol):
    def resolve(self, cgroup_path: str | None) -> tuple[dict[str, object] | None, list[str]]: ...


class KubernetesEnricher:
    """Fills `k8s` on the victim, sender, trigger and top holders; null for a
    host process, and for everyone when no CRI resolver runs."""

    def __init__(self, resolver: K8sResolver | None) -> None:
        self.resolver = resolver

    def enrich(self, event: Event) -> None:
        if self.resolver is None:
            self._none(event)
            return
        errors: list[str] = event["enrichment"]["errors"]
        for role in ROLES:
            proc = event.get(role)
            if proc is not None:
                proc["k8s"] = self._resolve(proc.get("cgroup"), role, errors)
        _main_process(event["victim"])
        oom = event.get("oom")
        if not oom:
            return
        victim = event["victim"]
        for holder in oom.get("top_holders") or ():
            if holder.get("victim"):
                holder["k8s"] = victim.get("k8s")
            else:
                holder["k8s"] = self._resolve(holder["cgroup"], "top_holders", errors)

    @staticmethod
    def _none(event: Event) -> None:
        """No CRI: every process is named a host process."""
        for role in ROLES:
            proc = event.get(role)
            if proc is not None:
                proc["k8s"] = None
        oom = event.get("oom")
        for holder in (oom.get("top_holders") or ()) if oom else ():
            holder["k8s"] = None

    def _resolve(
        self, cgroup: str | None, role: str, errors: list[str]
    ) -> dict[str, object] | None:
        if self.resolver is None:
            return None
        k8s, problems = self.resolver.resolve(cgroup)
        for problem in problems:
            line = f"{role}: {problem}"
            # The holders often share a pod: one line per problem is enough.
            if role != "top_holders" or line not in errors:
                errors.append(line)
        return k8s


def _main_process(victim: Event) -> None:
    """Whether the victim was its container's main process and, if not, whether
    that one lives on: the kill of a child (a worker, an exec'd probe) leaves the
    container running, though a runtime may later call the container OOMKilled.
    Read after the victim's exit, so a main process killed with it (a group kill)
    already has its SIGKILL pending and does not count as living."""
    k8s = victim.get("k8s")
    if not k8s or k8s.get("sandbox") is not False:
        return
    main = k8s.get("container_pid")
    if not isinstance(main, int):
        k8s.update(main_process=None, main_process_lives=None)
        return
    is_main = victim.get("pid") == main
    lives = None
    if not is_main:
        # The same pid in the same cgroup: not a later process that reused it.
        snap = procfs.snapshot(main, with_parents=False)
        same = snap is not None and snap.memory_cgroup == victim.get("cgroup")
        lives = procfs.lives_on(main) if same else False
    k8s.update(main_process=is_main, main_process_lives=lives)
