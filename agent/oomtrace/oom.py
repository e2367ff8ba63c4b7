"""The OOM killer's arithmetic, as pure functions of what was captured: which memcg's
limit was hit, the victim's badness, and the largest holders of the OOM's scope."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from oomtrace.capture import Holder, MemcgCapture
from oomtrace.host import memcg
from oomtrace.host.procfs import PAGE_SIZE

RSS_KEYS = ("anon_rss_kb", "file_rss_kb", "shmem_rss_kb")


def oom_memcg(mem: MemcgCapture | None, victim_cgroup: str | None) -> tuple[str | None, str | None]:
    """The memcg whose limit was hit and how it is known: named by the kprobe or the
    kernel's counters, or else inferred as the nearest limited memcg holding both the
    trigger (whose charge failed) and the victim (chosen inside the OOM scope)."""
    if mem is None:
        return None, None
    if mem.oom_memcg is not None:
        return mem.oom_memcg, mem.source
    if mem.trigger_memcg is None or mem.kernel_saw_no_limit:
        return None, None
    scope = memcg.common_ancestor(mem.trigger_memcg, victim_cgroup or mem.trigger_memcg)
    for path in memcg.ancestry(scope):
        if path in mem.stats:
            return path, "inferred"
    return None, None


def rss_kb(memory: dict[str, Any] | None) -> int:
    """Resident memory as the OOM killer counts it: anon + file + shmem."""
    return sum((memory or {}).get(k) or 0 for k in RSS_KEYS)


def badness(
    memory: dict[str, Any] | None,
    oom_score_adj: int | None,
    *,
    limit_pages: int | None,
    limit_bytes: int | None,
    node_pages: int | None,
    chosen_points: int | None,
) -> dict[str, Any] | None:
    """The victim's badness as oom_badness() computes it: rss + swap + page tables,
    plus oom_score_adj thousandths of the pages the OOM was about (the limit that
    was hit, else the node's RAM + swap)."""
    total_pages = limit_pages
    if total_pages is None and isinstance(limit_bytes, int):
        total_pages = limit_bytes // PAGE_SIZE
    if total_pages is None:
        total_pages = node_pages
    kb_per_page = PAGE_SIZE // 1024
    resident_kb = rss_kb(memory)
    if not resident_kb or oom_score_adj is None:
        return None
    rss = resident_kb // kb_per_page
    pgtables = ((memory or {}).get("pgtables_kb") or 0) // kb_per_page
    adj_pages = oom_score_adj * total_pages // 1000 if total_pages else 0
    return {
        "rss_pages": rss,
        "pgtables_pages": pgtables,
        "oom_score_adj": oom_score_adj,
        "adj_pages": adj_pages,
        "total_pages": total_pages,
        "points": chosen_points,
        "points_estimate": rss + pgtables + adj_pages,
    }


def top_holders(holders: Sequence[Holder], victim: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The largest processes in the OOM's scope. They are read right after the kill,
    when the victim's memory is already going: the victim is listed with its size at
    the kill, as mark_victim reported it."""
    out: list[dict[str, Any]] = [
        {
            "pid": h.pid,
            "comm": h.comm,
            "rss_kb": h.rss_kb,
            "oom_score_adj": h.oom_score_adj,
            "cgroup": h.cgroup,
        }
        for h in holders
        if h.pid != victim.get("pid")
    ]
    rss = rss_kb(victim.get("memory"))
    if rss:
        out.append(
            {
                "pid": victim.get("pid"),
                "comm": victim.get("comm"),
                "rss_kb": rss,
                "oom_score_adj": victim.get("oom_score_adj"),
                "cgroup": victim.get("cgroup"),
                "victim": True,
            }
        )
    out.sort(key=lambda h: -int(h["rss_kb"] or 0))
    del out[n:]
    return out
