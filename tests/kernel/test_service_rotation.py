"""The file sink across rotations by Debian's logrotate (rename, create, SIGHUP) and
across a plain move with no signal: events continue in the new file and none is
lost or written twice."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.kernel.test_service_shipper import ours, provoke_kills, wait_on_stdout, wait_until
from tests.support.agent import AgentProcess
from tests.support.memcg import Memcg, memcg

pytestmark = pytest.mark.kernel

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
KILLS = 900
Event = dict[str, Any]

# What a node's /etc/logrotate.d/oomtrace would say (the agent appends with
# O_APPEND and follows the move, so no copytruncate).
LOGROTATE_CONF = """\
{path} {{
    rotate 5
    missingok
    nocompress
    create 0640 root root
    postrotate
        kill -HUP {pid}
    endscript
}}
"""


@pytest.fixture
def victims() -> Iterator[Memcg]:
    with memcg(None, prefix="oomtrace-rotation") as group:
        yield group


def lines(path: Path) -> list[Event]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_rotation_by_logrotate_and_by_a_plain_move(tmp_path: Path, victims: Memcg) -> None:
    if not Path(LOGROTATE).exists():
        pytest.fail("this test needs logrotate (sudo scripts/setup --dev installs it)")
    log = tmp_path / "events.jsonl"
    agent = AgentProcess(
        "--output", str(log), "--cgroup", victims.cgroup_path, "--cri-endpoint", "none"
    )
    conf = tmp_path / "logrotate.conf"
    rotated: list[str] = []

    def logrotate() -> None:
        conf.write_text(LOGROTATE_CONF.format(path=log, pid=agent.proc.pid))
        result = subprocess.run(
            [LOGROTATE, "--force", "--state", str(tmp_path / "state"), str(conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        rotated.append("logrotate")

    def plain_move() -> None:
        # No signal at all: the writer sees that the path names another file.
        os.rename(log, tmp_path / "moved.jsonl")
        rotated.append("move")

    try:
        agent.wait_ready()
        first = provoke_kills(victims, KILLS // 3, at_half=logrotate, agent=agent)
        second = provoke_kills(victims, KILLS // 3, at_half=plain_move, agent=agent)
        third = provoke_kills(victims, KILLS // 3, agent=agent)
        pids = first | second | third
        mine = ours(pids)
        wait_on_stdout(agent, mine, KILLS)
        files = [log, tmp_path / "moved.jsonl", *sorted(tmp_path.glob("events.jsonl.*"))]
        assert wait_until(lambda: sum(sum(map(mine, lines(f))) for f in files) >= KILLS, 20)
        reload = agent.wait_log("reloaded")
    finally:
        assert agent.stop() == 0, agent.logs[-5:]

    assert rotated == ["logrotate", "move"]
    assert reload["changed"] == []
    rotated_by_logrotate = tmp_path / "events.jsonl.1"
    per_file = {f.name: [e for e in lines(f) if mine(e)] for f in files}
    in_files = [e["victim"]["pid"] for events in per_file.values() for e in events]
    on_stdout = {e["victim"]["pid"] for e in agent.events if mine(e)}
    counts = {name: len(events) for name, events in per_file.items()}
    totals = next(e for e in agent.logs if e.get("event") == "sinks_closed")["sinks"][f"file:{log}"]
    reopened = [e.get("reason") for e in agent.logs if e.get("event") == "sink_reopened"]
    print(
        f"\nrotation: provoked {KILLS}, on stdout {len(on_stdout)}, in the files {len(in_files)} "
        f"({counts}), missing {len(pids - set(in_files))}, duplicates "
        f"{len(in_files) - len(set(in_files))}; reopened {reopened}; sink totals {totals}"
    )
    assert on_stdout == pids
    assert sorted(in_files) == sorted(pids)  # each event once, across the files
    # Events went on in each new file after each rotation.
    assert all(counts[name] > 0 for name in ("events.jsonl.1", "moved.jsonl", "events.jsonl"))
    assert totals["dropped"] == 0
    assert "rotated" in reopened
    for path in (log, rotated_by_logrotate, tmp_path / "moved.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_sighup_reopens_and_rereads_the_file(tmp_path: Path, victims: Memcg) -> None:
    """A SIGHUP with a changed file: a new output appears at once, one that
    cannot be opened leaves the running sinks as they were."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    config = tmp_path / "oomtrace.toml"
    config.write_text(f'output = ["{first}"]\n')
    agent = AgentProcess(
        "--config", str(config), "--cgroup", victims.cgroup_path, "--cri-endpoint", "none"
    )
    try:
        agent.wait_ready()
        before = provoke_kills(victims, 20, agent=agent)
        # Events go to the sinks configured when they are written: the kills
        # before the reload must be out before it, or the new file gets them.
        assert wait_until(lambda: sum(map(ours(before), lines(first))) >= 20, 20)
        config.write_text(f'output = ["{first}", "{second}"]\n')
        agent.proc.send_signal(signal.SIGHUP)
        reloaded = agent.wait_log("reloaded")
        after = provoke_kills(victims, 20, agent=agent)
        config.write_text('output = ["/nonexistent/x.jsonl"]\n')
        agent.proc.send_signal(signal.SIGHUP)
        failed = agent.wait_log("reload_failed")
        last = provoke_kills(victims, 20, agent=agent)
        everything = before | after | last
        assert wait_until(lambda: sum(map(ours(everything), lines(first))) >= 60, 20)
        assert wait_until(lambda: sum(map(ours(after | last), lines(second))) >= 40, 20)
    finally:
        assert agent.stop() == 0, agent.logs[-5:]
    assert reloaded["changed"] == ["output"]
    assert reloaded["added"] == [f"file:{second}"]
    assert "directory /nonexistent does not exist" in failed["error"]
    assert {e["victim"]["pid"] for e in lines(first) if ours(everything)(e)} == everything
    assert {e["victim"]["pid"] for e in lines(second) if ours(everything)(e)} == after | last
