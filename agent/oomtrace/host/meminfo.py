"""The node's memory as /proc/meminfo gives it."""

from __future__ import annotations

from pathlib import Path

from oomtrace.host.procfs import PAGE_SIZE

MEMINFO = Path("/proc/meminfo")


def parse_node_pages(text: str) -> int | None:
    """RAM + swap in pages (oom_badness()'s totalpages for a global OOM), or None
    when either line is missing or malformed."""
    kb: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if key in ("MemTotal", "SwapTotal") and fields and fields[0].isdigit():
            kb[key] = int(fields[0])
    if len(kb) != 2:
        return None
    return (kb["MemTotal"] + kb["SwapTotal"]) * 1024 // PAGE_SIZE


def node_pages(path: Path = MEMINFO) -> int | None:
    try:
        return parse_node_pages(path.read_text())
    except (OSError, UnicodeDecodeError):
        return None
