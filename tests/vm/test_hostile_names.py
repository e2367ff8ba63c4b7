"""Hostile names on cgroup v2 (Debian's kernel, both tiers): a memcg named with a
space, an escape, a CR and a byte that is not UTF-8, holding processes whose comm
and argv attack a terminal. JSON keeps every name exactly; the text view of the
same events holds no control byte but its line breaks."""

from __future__ import annotations

from typing import Any

import pytest

from oomtrace.display import is_printable
from oomtrace.sinks.stream import text_block
from tests.support.agent import AgentProcess, victim_pid
from tests.support.hostile import COMM, b64, oom_in_hostile_memcg

pytestmark = pytest.mark.vm

Event = dict[str, Any]


def test_hostile_cgroup_and_process_names_on_v2(agents: dict[str, AgentProcess]) -> None:
    def both_tiers(pid: int) -> list[Event]:
        return [
            agent.wait_for(victim_pid(pid), timeout=60, what=f"{tier} oom_kill")
            for tier, agent in agents.items()
        ]

    events, _cgroup, _victim = oom_in_hostile_memcg(both_tiers, separate_trigger=False)
    assert len(events) == 2
    for event in events:
        assert b64(event["trigger"]["comm_b64"]) == COMM
        for line in text_block(event).decode("utf-8").split("\n"):
            assert is_printable(line), line
