"""oomtrace as a systemd service on a Debian node (inside the test VM): the install
command, readiness, events in the journal, reloads and file rotation, metrics, a log
shipper, a prompt stop, the watchdog, bad configurations, the sandbox's exposure
score, and the uninstall command. The tests run in file order, on one installation."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.service import (
    CONFIG,
    LOGS,
    PINS,
    PREFIX,
    ROOT,
    UNIT,
    kill_sleepers,
    oomtrace_programs,
    run,
    show,
)
from tests.support.shipper import Rsyslog, free_port
from tests.support.wait import wait_until as _wait_until

pytestmark = pytest.mark.vm

HOG = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
MiB = 1 << 20
Event = dict[str, Any]


# systemctl and journalctl are slow in the emulated VM: poll twice a second.
wait_until = functools.partial(_wait_until, step=0.5)


def agent_lines(invocation: str | None = None) -> list[str]:
    """What the agent itself wrote to the journal (stdout and stderr), oldest first;
    systemd's own messages about the unit are left out."""
    match = f"_SYSTEMD_INVOCATION_ID={invocation or show('InvocationID')['InvocationID']}"
    out = run("journalctl", "--no-pager", "-o", "json", match).stdout
    return [
        entry["MESSAGE"]
        for entry in map(json.loads, out.splitlines())
        if isinstance(entry.get("MESSAGE"), str)
    ]


def records(invocation: str | None = None) -> list[Event]:
    parsed = []
    for line in agent_lines(invocation):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return parsed


def events(kind: str | None = None) -> list[Event]:
    """Events on stdout (the journal: `journalctl -u oomtrace -o cat`)."""
    return [r for r in records() if "schema" in r and (kind is None or r["type"] == kind)]


def logs(name: str) -> list[Event]:
    return [r for r in records() if r.get("event") == name]


def write_config(text: str) -> None:
    CONFIG.write_text(text)


def default_config() -> str:
    return run(PREFIX / "bin/oomtrace", "config", "default").stdout


def start() -> float:
    """systemctl start, which for Type=notify returns once READY=1 arrived."""
    began = time.monotonic()
    run("systemctl", "start", "oomtrace")
    return time.monotonic() - began


def stop() -> float:
    began = time.monotonic()
    run("systemctl", "stop", "oomtrace", timeout=60)
    return time.monotonic() - began


def hog_unit(limit: str = "50M") -> str:
    """An OOM kill in a transient service with a memory limit, as in the issue."""
    unit = f"oomtrace-hog-{uuid.uuid4().hex[:8]}"
    result = run(
        "systemd-run", "--wait", "--quiet", f"--unit={unit}", "-p", f"MemoryMax={limit}",
        "-p", "MemorySwapMax=0", sys.executable, "-c", HOG, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    return f"/system.slice/{unit}.service"


def victims(lines: list[Event], pids: set[int]) -> set[int]:
    return {
        e["victim"]["pid"]
        for e in lines
        if e.get("type") == "signal" and e["victim"]["pid"] in pids
    }


@pytest.fixture(scope="module", autouse=True)
def installed(service: None) -> None:
    """Installed by the session's `service` fixture; the last test uninstalls."""


# -- install ------------------------------------------------------------------------


def test_install_puts_package_unit_and_config_in_place() -> None:
    assert (PREFIX / "bin/oomtrace").is_file()
    assert UNIT.read_text() == (ROOT / "systemd/oomtrace.service").read_text()
    assert CONFIG.read_text() == default_config()
    assert run(PREFIX / "bin/oomtrace", "config", "check", CONFIG).stdout == (
        f"{CONFIG}: valid (sinks: stdout; metrics: off)\n"
    )
    assert run("systemctl", "is-enabled", "oomtrace").stdout.strip() == "enabled"
    assert show("ActiveState")["ActiveState"] == "inactive"
    verify = run("systemd-analyze", "verify", UNIT, check=False)
    assert "oomtrace.service" not in verify.stderr, verify.stderr


# -- readiness, status, the journal -------------------------------------------------------


def test_active_only_after_ready() -> None:
    run("systemctl", "start", "--no-block", "oomtrace")
    seen = []
    end = time.monotonic() + 300
    while time.monotonic() < end:
        state = show("ActiveState", "StatusText")
        seen.append((state["ActiveState"], state["StatusText"]))
        if state["ActiveState"] != "activating":
            break
        time.sleep(0.05)
    # While the programs compile the unit is activating, with no status; the
    # first time it is active, the STATUS sent with READY=1 is there already.
    assert ("activating", "") in seen
    assert all(state in ("inactive", "activating") for state, _ in seen[:-1])
    assert seen[-1][0] == "active"
    assert seen[-1][1].startswith("tracing ("), seen[-1]
    ready = logs("ready")
    assert len(ready) == 1
    times = show("ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    took = (
        int(times["ActiveEnterTimestampMonotonic"]) - int(times["ExecMainStartTimestampMonotonic"])
    ) / 1e6
    print(f"\nactivating for {took:.1f} s; ready: {ready[0]}")


def test_status_says_what_is_live() -> None:
    ready = logs("ready")[0]
    # The sandbox hides /proc/kallsyms and /lib/modules: the kprobe target is
    # found in tracefs, and the programs compile against the stub tree and BTF.
    assert ready["tier"] == "kprobe"
    assert ready["kernel_headers"] == "stub"
    assert "kprobe:oom_kill_process" in ready["hooks"]
    assert "netlink:proc_connector" in ready["hooks"]
    status = show("StatusText")["StatusText"]
    assert re.fullmatch(r"tracing \(kprobe tier, \d+ hooks\); \d+ events; sinks: stdout", status)
    assert not logs("limited_proc_access")
    assert not logs("oom_score_adj_unchanged")
    state = show("MainPID", "WatchdogUSec", "NRestarts")
    assert state["WatchdogUSec"] == "30s"
    pid = state["MainPID"]
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "-999"
    caps = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("CapEff:")
        ),
        16,
    )
    assert caps == (1 << 21) | (1 << 12)  # CAP_SYS_ADMIN, CAP_NET_ADMIN


def test_memory_max_hog_gives_the_oom_kill_in_the_journal() -> None:
    cgroup = hog_unit()
    assert wait_until(lambda: any(e["victim"]["cgroup"] == cgroup for e in events("oom_kill")), 30)
    event = next(e for e in events("oom_kill") if e["victim"]["cgroup"] == cgroup)
    assert event["oom"]["constraint"] == "memcg"
    assert event["oom"]["memcg"] == cgroup
    assert event["oom"]["limit_bytes"] == 50 * MiB
    assert event["victim"]["exit"]["code"] == 137
    assert event["enrichment"]["errors"] == []
    # The line as `journalctl -u oomtrace -o cat` shows it.
    cat = run("journalctl", "-u", "oomtrace", "-o", "cat", "--no-pager").stdout
    assert any(
        line.startswith('{"schema":"oomtrace.event/v1","type":"oom_kill"') and cgroup in line
        for line in cat.splitlines()
    )
    assert wait_until(lambda: " 1 events;" in show("StatusText")["StatusText"], 15)


# -- reload and the file sink --------------------------------------------------------------


def test_reload_adds_a_file_sink_and_rotation_loses_nothing() -> None:
    log = LOGS / "events.jsonl"
    write_config(default_config() + f'\noutput = ["{log}"]\n')
    run("systemctl", "reload", "oomtrace")
    assert wait_until(lambda: bool(logs("reloaded")), 15)
    assert logs("reloaded")[-1]["added"] == [f"file:{log}"]
    before = kill_sleepers(30)
    assert wait_until(lambda: log.exists() and len(victims(read_jsonl(log), before)) == 30, 30)
    log.rename(LOGS / "events.jsonl.1")
    run("systemctl", "reload", "oomtrace")
    after = kill_sleepers(30)
    assert wait_until(lambda: log.exists() and len(victims(read_jsonl(log), after)) == 30, 30)
    rotated = read_jsonl(LOGS / "events.jsonl.1")
    current = read_jsonl(log)
    print(
        f"\nrotation under the unit: {len(victims(rotated, before | after))} events in "
        f"events.jsonl.1, {len(victims(current, before | after))} in events.jsonl, of 60"
    )
    assert victims(rotated, before | after) | victims(current, before | after) == before | after
    assert not victims(rotated, before | after) & victims(current, before | after)
    assert oct(log.stat().st_mode & 0o777) == "0o640"
    assert oct(LOGS.stat().st_mode & 0o777) == "0o750"
    write_config(default_config())
    run("systemctl", "reload", "oomtrace")
    assert wait_until(lambda: logs("reloaded")[-1]["removed"] == [f"file:{log}"], 15)


def read_jsonl(path: Path) -> list[Event]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- a log shipper, metrics ----------------------------------------------------------------


def test_shipper_and_metrics_under_the_sandbox(tmp_path: Path) -> None:
    """A private rsyslogd on 127.0.0.1 and on a unix socket in /run (the unit's /tmp
    is its own), restarted midway; metrics on 127.0.0.1 (IPAddressAllow=localhost)."""
    shipper_dir = Path("/run") / f"oomtrace-shipper-{uuid.uuid4().hex[:8]}"
    shipper_dir.mkdir()
    shipper = Rsyslog(shipper_dir)
    port = free_port()
    try:
        shipper.start()
        write_config(
            default_config()
            + f'\ntcp = ["127.0.0.1:{shipper.port}"]\nunix_socket = ["{shipper.socket_path}"]\n'
            + f'metrics_listen = "127.0.0.1:{port}"\n'
        )
        run("systemctl", "restart", "oomtrace")
        kills = kill_sleepers(100)
        shipper.restart(down_s=0.5)
        kills |= kill_sleepers(100)
        cgroup = hog_unit()

        def arrivals() -> Counter[int]:
            return Counter(
                e["victim"]["pid"]
                for e in shipper.events()[0]
                if e.get("type") == "signal" and e["victim"]["pid"] in kills
            )

        # Each kill twice: once through each sink.
        assert wait_until(lambda: len(arrivals()) == 200 and min(arrivals().values()) >= 2, 60)
        assert wait_until(lambda: any(
            e["victim"]["cgroup"] == cgroup for e in shipper.events()[0] if e["type"] == "oom_kill"
        ), 30)  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        received = shipper.events()[0]
    finally:
        shipper.stop()
        write_config(default_config())
        run("systemctl", "restart", "oomtrace")
        subprocess.run(["rm", "-rf", str(shipper_dir)], check=False)

    lines = [line for line in metrics.splitlines() if line.startswith("oomtrace_")]
    print(f"\nshipper restarted {shipper.starts - 1} time(s), received {len(received)} events")
    print("\n".join(lines))
    tcp_sink, unix_sink = f"tcp:127.0.0.1:{shipper.port}", f"unix:{shipper.socket_path}"
    assert f'oomtrace_sink_dropped_total{{sink="{tcp_sink}"}} 0.0' in lines
    assert f'oomtrace_sink_dropped_total{{sink="{unix_sink}"}} 0.0' in lines
    assert (
        'oomtrace_oom_kills_total{constraint="memcg",container="",namespace="",pod=""} 1.0' in lines
    )
    # The sender's chain decides the cause (here a root shell over ssh: manual).
    unique = {e["victim"]["pid"]: e for e in received if e.get("type") == "signal"}
    causes = Counter(e["cause"] for pid, e in unique.items() if pid in kills)
    assert sum(causes.values()) == 200
    for cause, count in causes.items():
        assert f'oomtrace_signals_total{{cause="{cause}",signal="SIGKILL"}} {count}.0' in lines
    assert any(line.startswith("oomtrace_agent_resident_memory_bytes ") for line in lines)


# -- stop, watchdog ----------------------------------------------------------------------


def test_stop_is_prompt() -> None:
    invocation = show("InvocationID")["InvocationID"]
    took = stop()
    print(f"\nsystemctl stop took {took:.2f} s")
    assert took < 5
    done = [r.get("event") for r in records(invocation)]
    assert "stopped" in done and "sinks_closed" in done
    assert show("ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}


# -- bad configurations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("bogus = 1", "unknown key 'bogus' (oomtrace config default lists every key)"),
        ('sink_queue_size = "big"', "sink_queue_size: must be a whole number, not a string"),
        (
            'unix_socket = ["/run/no-such-shipper/in.sock"]',
            "unix_socket: /run/no-such-shipper/in.sock is unreachable: "
            "directory /run/no-such-shipper does not exist",
        ),
        # Writable for root outside, read-only in the unit's sandbox.
        (
            'output = ["/etc/oomtrace/events.jsonl"]',
            "output: cannot write /etc/oomtrace/events.jsonl: Read-only file system",
        ),
    ],
    ids=["unknown-key", "wrong-type", "unreachable-socket", "unwritable-file"],
)
def test_bad_config_is_one_line_and_exit_2(text: str, line: str) -> None:
    write_config(default_config() + "\n" + text + "\n")
    # Earlier tests started the unit often: clear its start rate limit.
    run("systemctl", "reset-failed", "oomtrace", check=False)
    try:
        result = run("systemctl", "start", "oomtrace", check=False)
        assert result.returncode != 0
        state = show("ActiveState", "Result", "ExecMainStatus", "NRestarts", "InvocationID")
        said = agent_lines(state["InvocationID"])
        print(f"\n{text}: {said}")
        assert said == [f"oomtrace: {CONFIG}: {line}"]
        assert state["ExecMainStatus"] == "2"
        assert state["Result"] == "exit-code"
        assert state["NRestarts"] == "0"  # RestartPreventExitStatus=2
        # `oomtrace config check` says the same (but for the sandbox's read-only /etc).
        check = run(PREFIX / "bin/oomtrace", "config", "check", CONFIG, check=False)
        if "Read-only" not in line:
            assert (check.returncode, check.stderr) == (2, f"oomtrace: {CONFIG}: {line}\n")
    finally:
        write_config(default_config())
        run("systemctl", "reset-failed", "oomtrace", check=False)


# -- the sandbox's exposure score -----------------------------------------------------------


def test_security_exposure_is_the_one_the_readme_records() -> None:
    analysis = run("systemd-analyze", "security", "oomtrace", "--no-pager").stdout
    results = ROOT / ".vm-results"
    results.mkdir(exist_ok=True)
    (results / "systemd-analyze-security.txt").write_text(analysis)
    measured = re.search(r"Overall exposure level for oomtrace\.service: (\d+\.\d)", analysis)
    assert measured is not None, analysis
    readme = (ROOT / "README.md").read_text()
    recorded = re.search(r"`systemd-analyze security oomtrace`[^\n]*?\*\*(\d+\.\d)", readme)
    assert recorded is not None, "README.md records no exposure score"
    print(f"\nsystemd-analyze security oomtrace: {measured.group(1)}")
    assert measured.group(1) == recorded.group(1)


# -- uninstall ---------------------------------------------------------------------------


def test_uninstall_removes_everything() -> None:
    # Kept tracing while stopped: the pins outlive the stop, and only the
    # uninstall takes them and the programs they hold attached.
    others = oomtrace_programs()
    write_config(default_config() + "keep_tracing_when_stopped = true\n")
    start()
    stop()
    assert PINS.is_dir() and any(PINS.iterdir())
    assert oomtrace_programs() - others
    run(ROOT / "scripts/uninstall")
    assert not PINS.exists()
    assert not oomtrace_programs() - others
    assert not PREFIX.exists()
    assert not UNIT.exists()
    assert not CONFIG.exists()
    assert not Path("/etc/systemd/system/multi-user.target.wants/oomtrace.service").exists()
    assert run("systemctl", "cat", "oomtrace", check=False).returncode != 0
    # Events the service wrote are kept unless --purge.
    assert LOGS.is_dir()
