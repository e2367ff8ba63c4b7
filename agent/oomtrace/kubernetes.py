"""Enrich: each process of an event gets its pod and container (`k8s`), from its
cgroup path and the CRI. It fills only the `k8s` fields and adds to
`enrichment.errors`; it runs after the --pid/--cgroup filter, so a filtered-out
kill costs no CRI call.
"""

from __future__ import annotations

from typing import Protocol

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
