"""What one agent leaves the next: the layout version that decides whether pinned
programs are resumed, the state file behind a `gap`, and how the service's stop
tells a restart from a stop."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from oomtrace.kernel import pins, probes, records
from oomtrace.state import State, StateFile, boot_id, gap_reason
from oomtrace.tracing import restart_follows

# The layout version and the digest of bpf/oomtrace.h it was given for. A change
# to the header (other than comments and spacing) fails this test: bump
# OOMTRACE_LAYOUT_VERSION (and records.LAYOUT_VERSION) when the change alters a
# record, a ring buffer or a pinned map's value, then record the new digest.
LAYOUT = (1, "4ca9e7e878e05afe")


def _header_digest() -> tuple[int, str]:
    text = probes.bpf_dir().joinpath("oomtrace.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    version = int(re.search(r"#define OOMTRACE_LAYOUT_VERSION (\d+)", text).group(1))  # type: ignore[union-attr]
    text = re.sub(r"#define OOMTRACE_LAYOUT_VERSION \d+", "", text)
    body = " ".join(text.split())
    return version, hashlib.sha256(body.encode()).hexdigest()[:16]


def test_layout_version_follows_the_header() -> None:
    version, digest = _header_digest()
    assert version == records.LAYOUT_VERSION
    assert (version, digest) == LAYOUT, (
        "bpf/oomtrace.h changed: if a record, the ring buffer or a pinned map's value "
        "changed, bump OOMTRACE_LAYOUT_VERSION; then set LAYOUT to "
        f"({version}, {digest!r})"
    )


def test_pin_names_have_no_dot() -> None:
    # bpffs refuses names with a dot (EPERM).
    for name in (
        "map:events",
        "link:signal:signal_generate",
        "link:kprobe:oom_kill_process.isra.0",
    ):
        assert "." not in pins.entry_name(name)
    assert pins.entry_name("link:raw_tracepoint:signal_generate") == (
        "link-raw_tracepoint-signal_generate"
    )


def test_state_file_round_trip(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state")
    assert state.read() is None
    state.traced(pinned=True, force=True)
    saved = state.read()
    assert saved is not None and saved.pinned and not saved.stopped
    state.stopped()
    stopped = state.read()
    assert stopped is not None and stopped.stopped and not stopped.pinned
    assert stopped.last_traced_ns >= saved.last_traced_ns


def test_state_lock_is_one_agent_at_a_time(tmp_path: Path) -> None:
    first, second = StateFile(tmp_path), StateFile(tmp_path)
    assert first.lock()
    assert not second.lock()


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (State(1, "another-boot", pinned=True), "reboot"),
        (State(1, boot_id(), stopped=True), "stopped"),
        (State(1, boot_id(), pinned=True), "pins_removed"),
        (State(1, boot_id()), "not_pinned"),
    ],
)
def test_gap_reasons(state: State, reason: str) -> None:
    assert gap_reason(state, resumed=False) == reason
    assert gap_reason(state, resumed=True) is None


def test_restart_follows_a_failure_but_not_exit_2() -> None:
    assert restart_follows({}) is None  # not run by systemd: a stop
    assert restart_follows({"SERVICE_RESULT": "signal", "EXIT_CODE": "killed"}) is not None
    assert restart_follows({"SERVICE_RESULT": "watchdog"}) is not None
    assert restart_follows({"SERVICE_RESULT": "exit-code", "EXIT_STATUS": "2"}) is None
