"""The human view (oomtrace.text), event timestamps (events.Clock) and --signals parsing.

The events rendered here are shaped like docs/events.md describes them.
"""

from __future__ import annotations

import copy
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from oomtrace import sigdefs
from oomtrace.build import Clock
from oomtrace.schema import SCHEMA
from oomtrace.text import render

Event = dict[str, Any]
MiB = 1 << 20
TIME = "2026-11-24T18:36:36.693689046Z"


def oom_event(**overrides: Any) -> Event:
    event: Event = {
        "schema": SCHEMA,
        "type": "oom_kill",
        "time": TIME,
        "ktime_ns": 7615775242265,
        "node": {"hostname": "node-1"},
        "victim": {
            "pid": 10287,
            "tid": 10287,
            "comm": "python3",
            "uid": 0,
            "oom_score_adj": 1000,
            "cgroup": "/kubepods/besteffort/pod1234/abcd",
            "cmdline": ["python3", "worker.py", "--queue", "orders"],
            "cmdline_source": "exec",
            "cmdline_truncated": False,
            "ppid": 10280,
            "started": "2026-11-24T05:50:51.500000000Z",
            "age_s": 15132.5,
            "k8s": {
                "namespace": "shop",
                "pod": "cart-7d9f",
                "pod_uid": "1234",
                "container": "cart",
                "container_id": "abcd",
            },
            "memory": {
                "total_vm_kb": 76660,
                "anon_rss_kb": 65152,
                "file_rss_kb": 5364,
                "shmem_rss_kb": 0,
                "pgtables_kb": 188,
                "source": "mark_victim",
            },
            "exit": {
                "observed": True,
                "status": 9,
                "signal": 9,
                "code": 137,
                "kill_to_exit_ms": 3.716,
            },
        },
        "signal": {
            "number": 9,
            "name": "SIGKILL",
            "code": "SI_KERNEL",
            "errno": 0,
            "group": True,
            "result": "delivered",
        },
        "group_kill": False,
        "trigger": {
            "pid": 10301,
            "tid": 10302,
            "comm": "java",
            "uid": 0,
            "ppid": 10280,
            "oom_score_adj": 0,
            "cgroup": "/kubepods/besteffort/pod1234/ef01",
            "cmdline": ["java", "-jar", "app.jar"],
            "cmdline_source": "proc",
            "cmdline_truncated": False,
            "parents": [{"pid": 10280, "comm": "containerd-shim"}, {"pid": 1, "comm": "init"}],
            "k8s": {"namespace": "shop", "pod": "cart-7d9f", "container": "sidecar"},
        },
        "oom": {
            "context_id": "10301-7615775284969",
            "tier": "tracepoint",
            "memcg": "/kubepods/besteffort/pod1234",
            "memcg_source": "kernel_counters",
            "memcg_stat": {
                "path": "/kubepods/besteffort/pod1234",
                "limit_bytes": 64 * MiB,
                "usage_bytes": 64 * MiB,
                "usage_source": "kernel_at_kill",
                "working_set_bytes": 63 * MiB,
                "stat": {"anon": 55 * MiB, "file": MiB // 2, "inactive_file": MiB},
                "events": {"oom_kill": 1},
            },
        },
        "enrichment": {"errors": []},
    }
    event.update(overrides)
    return event


def signal_event(**overrides: Any) -> Event:
    event: Event = {
        "schema": SCHEMA,
        "type": "signal",
        "time": TIME,
        "ktime_ns": 7615775242265,
        "node": {"hostname": "node-1"},
        "victim": {
            "pid": 4242,
            "tid": 4242,
            "comm": "sleep",
            "uid": 1000,
            "oom_score_adj": 0,
            "cgroup": "/user.slice/user-1000.slice/session-3.scope",
            "cmdline": ["sleep", "300"],
            "cmdline_source": "exec",
            "cmdline_truncated": False,
            "ppid": 4000,
            "started": "2026-11-24T10:03:02.800000000Z",
            "age_s": 1.2,
            "exit": {
                "observed": True,
                "status": 9,
                "signal": 9,
                "code": 137,
                "kill_to_exit_ms": 0.25,
            },
        },
        "signal": {
            "number": 9,
            "name": "SIGKILL",
            "code": "SI_USER",
            "errno": 0,
            "group": True,
            "result": "delivered",
        },
        "sender": {
            "pid": 4300,
            "tid": 4300,
            "comm": "evict-by-hand.s",
            "uid": 1000,
            "ppid": 4100,
            "oom_score_adj": 0,
            "cgroup": "/user.slice/user-1000.slice/session-3.scope",
            "cmdline": ["/bin/sh", "./evict-by-hand.sh"],
            "cmdline_source": "exec",
            "cmdline_truncated": False,
            "parents": [
                {"pid": 4100, "comm": "bash"},
                {"pid": 900, "comm": "sshd"},
                {"pid": 1, "comm": "systemd"},
            ],
            "tty": "pts/3",
        },
        "enrichment": {"errors": []},
    }
    event.update(overrides)
    return event


def _lines(event: Event) -> list[str]:
    text = render(event)
    assert text.endswith("\n\n"), "each event is one block followed by a blank line"
    assert "\n\n" not in text[:-2]
    return text[:-2].split("\n")


# -- oom_kill ----------------------------------------------------------------------


def test_oom_kill_first_line_names_pod_container_and_victim() -> None:
    lines = _lines(oom_event())
    assert lines[0] == f"{TIME}  OOM KILL  pod shop/cart-7d9f, container cart  python3 (pid 10287)"


def test_oom_kill_block_gives_the_key_facts() -> None:
    text = render(oom_event())
    victim, cgroup, cmdline, started, trigger, trigger_cmdline, memcg, exit_ = _lines(oom_event())[
        1:
    ]
    assert victim.split() == [
        "victim",
        "python3",
        "(pid",
        "10287)",
        "oom_score_adj",
        "1000",
        "anon",
        "65152",
        "kB",
        "file",
        "5364",
        "kB",
        "shmem",
        "0",
        "kB",
    ]
    assert cgroup.strip() == "cgroup /kubepods/besteffort/pod1234/abcd"
    assert cmdline.strip() == "cmdline python3 worker.py --queue orders"
    assert started.strip() == (
        "started 2026-11-24T05:50:51.500000000Z (4 h 12 min before the kill)"
    )
    assert trigger_cmdline.strip() == "cmdline java -jar app.jar"
    assert trigger.split() == [
        "trigger",
        "java",
        "(pid",
        "10301)",
        "in",
        "pod",
        "shop/cart-7d9f,",
        "container",
        "sidecar",
    ]
    assert memcg.startswith("  memcg    /kubepods/besteffort/pod1234  ")
    assert "limit 64.0 MiB" in memcg and "usage 64.0 MiB" in memcg
    assert "working set 63.0 MiB" in memcg
    assert "(anon 55.0 MiB, file 0.5 MiB)" in memcg
    assert exit_ == "  exit     exit code 137 after 3.716 ms"
    assert "killed with the chosen victim" not in text
    assert "note" not in text


def test_oom_kill_outside_kubernetes_names_the_cgroup() -> None:
    event = oom_event()
    del event["victim"]["k8s"]
    del event["trigger"]["k8s"]
    lines = _lines(event)
    assert lines[0] == (
        f"{TIME}  OOM KILL  cgroup /kubepods/besteffort/pod1234/abcd  python3 (pid 10287)"
    )
    assert lines[5].endswith("in cgroup /kubepods/besteffort/pod1234/ef01")


def test_group_kill_names_its_oom_context() -> None:
    lines = _lines(oom_event(group_kill=True))
    assert "  killed with the chosen victim (OOM context 10301-7615775284969)" in lines


def test_sandbox_victim() -> None:
    event = oom_event()
    event["victim"]["k8s"] = {"namespace": "shop", "pod_uid": "1234", "sandbox": True}
    assert " pod shop/1234, sandbox (pause) process " in _lines(event)[0]


def test_oom_kill_with_what_could_not_be_known() -> None:
    """Old kernel, no memcg files, victim stuck: nulls render as '?'."""
    event = oom_event(
        trigger=None,
        signal=None,
        oom={
            "context_id": None,
            "tier": "tracepoint",
            "memcg": None,
            "memcg_source": None,
            "memcg_stat": None,
        },
        enrichment={"errors": ["victim: cgroup unknown (exited before its signal was delivered)"]},
    )
    victim = copy.deepcopy(event["victim"])
    victim.update(cgroup=None, memory=None, oom_score_adj=None, exit={"observed": False})
    del victim["k8s"]
    event["victim"] = victim
    lines = _lines(event)
    assert lines[0] == f"{TIME}  OOM KILL  cgroup ?  python3 (pid 10287)"
    assert "anon ?  file ?  shmem ?" in lines[1]
    assert not any(line.lstrip().startswith(("trigger", "memcg")) for line in lines)
    assert "  exit     not observed within the wait: the victim may be stuck" in lines
    assert lines[-1] == (
        "  note     victim: cgroup unknown (exited before its signal was delivered)"
    )


# -- signal --------------------------------------------------------------------------


def test_signal_first_line_names_signal_code_place_and_victim() -> None:
    lines = _lines(signal_event())
    assert lines[0] == (
        f"{TIME}  SIGKILL (SI_USER)  cgroup /user.slice/user-1000.slice/session-3.scope  "
        "sleep (pid 4242)"
    )


def test_signal_block_names_the_sender_with_tty_and_parents() -> None:
    lines = _lines(signal_event())
    assert (
        lines[1]
        == "  victim   sleep (pid 4242)  cgroup /user.slice/user-1000.slice/session-3.scope"
    )
    assert lines[2] == "           cmdline sleep 300"
    assert lines[3] == "           started 2026-11-24T10:03:02.800000000Z (1.2 s before the kill)"
    assert lines[4] == (
        "  sender   evict-by-hand.s (pid 4300)  uid 1000  tty pts/3  "
        "in cgroup /user.slice/user-1000.slice/session-3.scope"
    )
    assert lines[5] == "           cmdline /bin/sh ./evict-by-hand.sh"
    assert lines[6] == "           parents bash(4100) <- sshd(900) <- systemd(1)"
    assert lines[7] == "  exit     exit code 137 after 0.25 ms"
    assert len(lines) == 8


def test_sigterm_from_a_daemon_without_tty() -> None:
    event = signal_event(
        signal={
            "number": 15,
            "name": "SIGTERM",
            "code": "SI_USER",
            "errno": 0,
            "group": True,
            "result": "delivered",
        }
    )
    event["sender"].update(tty=None, cmdline=None, parents=[], comm="kubelet", pid=700)
    event["sender"]["k8s"] = None
    event["victim"].update(exit=None, cmdline=None, age_s=None)  # handled: it lived on
    lines = _lines(event)
    assert lines[0].startswith(f"{TIME}  SIGTERM (SI_USER)  ")
    assert "kubelet (pid 700)" in lines[2] and "tty -" in lines[2]
    assert not any(
        word in line for line in lines for word in ("cmdline", "parents", "exit ", "started")
    )


# -- lost --------------------------------------------------------------------------------


def test_lost_is_one_line() -> None:
    event = {
        "schema": SCHEMA,
        "type": "lost",
        "time": TIME,
        "ktime_ns": 1,
        "node": {"hostname": "node-1"},
        "lost": {"source": "kernel_ring_buffer", "count": 12, "by_kind": {"signal": 12}},
    }
    assert render(event) == f"{TIME}  LOST 12 records (kernel_ring_buffer)\n\n"


# -- events.Clock ------------------------------------------------------------------------

RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


@pytest.mark.parametrize(
    ("offset_ns", "ktime_ns", "expected"),
    [
        (0, 0, "1970-01-01T00:00:00.000000000Z"),
        (0, 1_700_000_000_123_456_789, "2023-11-14T22:13:20.123456789Z"),
        (1_700_000_000_000_000_000, 123_456_789, "2023-11-14T22:13:20.123456789Z"),
        (1_700_000_000_000_000_000, 1, "2023-11-14T22:13:20.000000001Z"),
        (1_799_999_999_000_000_000, 999_999_999, "2027-01-15T07:59:59.999999999Z"),
    ],
)
def test_rfc3339_keeps_nanoseconds_in_utc(offset_ns: int, ktime_ns: int, expected: str) -> None:
    clock = Clock()
    clock.offset_ns = offset_ns
    assert clock.rfc3339(ktime_ns) == expected
    assert RFC3339_NS.match(expected)


def test_clock_maps_monotonic_time_to_now() -> None:
    clock = Clock()
    stamp = clock.rfc3339(time.monotonic_ns())
    assert RFC3339_NS.match(stamp), stamp
    parsed = datetime.strptime(stamp[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    assert abs((parsed - datetime.now(UTC)).total_seconds()) < 1.0


def test_clock_resync_keeps_the_offset_steady() -> None:
    clock = Clock()
    before = clock.offset_ns
    clock.resync()
    # Same clocks, a moment apart: the offset moves by far less than a millisecond
    # unless the wall clock is stepped meanwhile.
    assert abs(clock.offset_ns - before) < 50_000_000


# -- sigdefs.parse_signal_list ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("KILL,TERM", {9, 15}),
        ("SIGKILL", {9}),
        ("9", {9}),
        ("kill", {9}),
        (" SIGKILL , term ", {9, 15}),
        ("9,KILL,SIGKILL", {9}),
        ("KILL,,TERM,", {9, 15}),
        ("15,SIGUSR1", {15, 10}),
        ("63", {63}),
    ],
)
def test_parse_signal_list_accepts(text: str, expected: set[int]) -> None:
    assert sigdefs.parse_signal_list(text) == frozenset(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no signal given"),
        (",", "no signal given"),
        ("NOPE", "unknown signal 'NOPE'"),
        ("KILL,NOPE", "unknown signal 'NOPE'"),
        ("SIGFOO", "unknown signal 'SIGFOO'"),
        ("-9", "unknown signal '-9'"),
        ("9x", "unknown signal '9x'"),
        ("KILL TERM", "unknown signal 'KILL TERM'"),
        ("0", "outside 1..63"),
        ("64", "outside 1..63"),
    ],
)
def test_parse_signal_list_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        sigdefs.parse_signal_list(text)


def test_signal_mask_sets_one_bit_per_signal() -> None:
    assert sigdefs.signal_mask(sigdefs.parse_signal_list("KILL,TERM")) == (1 << 9) | (1 << 15)


def test_signal_and_code_names() -> None:
    assert sigdefs.signal_name(9) == "SIGKILL"
    assert sigdefs.signal_name(15) == "SIGTERM"
    assert sigdefs.code_name(sigdefs.SI_KERNEL) == "SI_KERNEL"
    assert sigdefs.code_name(-6) == "SI_TKILL"
    assert sigdefs.code_name(12345) == "12345"
