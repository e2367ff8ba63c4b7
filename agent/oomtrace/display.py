"""Text from processes, cgroups and runtimes, made safe for the people who read it.

Any local user sets their process's comm (prctl) and argv, and root can name a
cgroup anything, so every such string that oomtrace shows a person (the text
view, `explanation`, the systemd status line, console logs) goes through
:func:`printable` first. It turns whatever a terminal would act on into a visible
escape, and cuts what is too long with a visible marker. JSON fields keep the
exact text instead (docs/events.md): orjson escapes control characters there.
"""

from __future__ import annotations

import re
from typing import Final

# What a default display width can show of one value; a command line or cgroup
# path longer than this is cut, and the cut says how much is missing.
DEFAULT_LIMIT: Final = 512

# C0 controls and DEL (ESC starts CSI/OSC sequences, CR and BS overwrite what
# came before, LF forges lines); C1 controls, which some terminals take as
# 8-bit CSI/OSC introducers; the line and paragraph separators; and the bidi
# embeddings, overrides and isolates, which reorder what is shown after them.
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Lone surrogates: what os.fsdecode() and 'surrogateescape' make of bytes that
# are not UTF-8 (U+DC80..U+DCFF stand for the bytes 0x80..0xFF).
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def printable(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` as text that holds no character a terminal acts on: control
    characters, DEL, C1 controls, bidi controls, line separators and bytes that
    were not UTF-8 appear as visible escapes (``\\x1b``, ``\\n``, ``\\xff``,
    ``\\u202e``). Longer than `limit` characters, it is cut and ends with
    ``…[+N]``, N being how many characters were left out."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "surrogateescape")
    else:
        text = value if isinstance(value, str) else str(value)
    # str.isprintable() is False for every character escaped below (control,
    # format, separator, surrogate): one C call for the common case.
    if len(text) <= limit and text.isprintable():
        return text
    cut = ""
    if len(text) > limit:
        cut = f"…[+{len(text) - limit}]"
        text = text[:limit]
    text = _UNSAFE.sub(_escape, text)
    text = _SURROGATE.sub(_escape, text)
    return text + cut


def is_printable(text: str) -> bool:
    """True when `text` holds nothing :func:`printable` would escape."""
    return _UNSAFE.search(text) is None and _SURROGATE.search(text) is None
