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
        # isascii(): isdigit() admits digits int() rejects ("\u00b2"); the length
        # bound keeps int() from refusing a number of thousands of digits.
        value = fields[0] if fields else ""
        wanted = key in ("MemTotal", "SwapTotal")
        if wanted and value.isascii() and value.isdigit() and len(value) <= 20:
            kb[key] = int(value)
    if len(kb) != 2:
        return None
    return (kb["MemTotal"] + kb["SwapTotal"]) * 1024 // PAGE_SIZE


def node_pages(path: Path = MEMINFO) -> int | None:
    try:
        return parse_node_pages(path.read_text())
    except (OSError, UnicodeDecodeError):
        return None
