"""display.printable(): whatever a process, cgroup or runtime calls itself, what a
person is shown holds no character a terminal acts on, and is bounded."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomtrace.display import is_printable, printable

PROPERTY = settings(max_examples=400, derandomize=True, database=None, deadline=None)


def _terminal_would_act_on(text: str) -> list[str]:
    """Characters a terminal interprets rather than draws: Unicode's control
    category (C0, DEL, C1), bidi formatting, the line/paragraph separators and
    lone surrogates (undecodable bytes)."""
    bidi = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}
    return [
        c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or ord(c) in bidi
    ]


@PROPERTY
@given(st.text(), st.integers(min_value=1, max_value=300))
def test_any_text_becomes_printable_and_bounded(text: str, limit: int) -> None:
    shown = printable(text, limit)
    assert _terminal_would_act_on(shown) == []
    assert is_printable(shown)
    if len(text) <= limit:
        assert shown.count("…[+") == text.count("…[+")  # no cut marker of its own
    else:
        assert shown.endswith(f"…[+{len(text) - limit}]")
    # Every kept character is shown as itself or as an escape of at most 6 characters.
    assert len(shown) <= 6 * min(len(text), limit) + len(f"…[+{len(text)}]")


@PROPERTY
@given(st.binary())
def test_any_bytes_become_printable(raw: bytes) -> None:
    shown = printable(raw)
    assert _terminal_would_act_on(shown) == []


@PROPERTY
@given(st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf"))))
def test_ordinary_text_is_shown_as_it_is(text: str) -> None:
    assert printable(text, limit=len(text) + 1) == text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J\x1b[31mEVIL\n", "\\x1b[2J\\x1b[31mEVIL\\n"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: the window title, ended by BEL
        ("ok\rOOM KILL", "ok\\rOOM KILL"),  # CR would overwrite the line with a forgery
        ("a\tb", "a\\tb"),
        ("\x7f\x9b", "\\x7f\\x9b"),  # DEL, and C1 CSI
        ("abc\u202egnp.exe", "abc\\u202egnp.exe"),  # right-to-left override
        (b"EVIL\xff\xfe", "EVIL\\xff\\xfe"),  # not UTF-8
        ("EVIL\udcff", "EVIL\\xff"),  # the same bytes after os.fsdecode()
        ("/system.slice/systemd-fsck\\x2d1.service", "/system.slice/systemd-fsck\\x2d1.service"),
        ("python3 -c 'print(1)'", "python3 -c 'print(1)'"),
        ("名前", "名前"),
    ],
)
def test_escapes(raw: str | bytes, shown: str) -> None:
    assert printable(raw) == shown


def test_cut_marker_says_how_much_is_missing() -> None:
    assert printable("x" * 1000, 10) == "x" * 10 + "…[+990]"
    assert printable("x" * 10, 10) == "x" * 10


def test_non_strings_are_shown_as_text() -> None:
    assert printable(None) == "None"
    assert printable(137) == "137"
