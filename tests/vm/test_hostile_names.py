"""Hostile names on cgroup v2 (Debian's kernel, both tiers): a memcg named with a
space, an escape, a CR and a byte that is not UTF-8, holding processes whose comm
and argv attack a terminal. JSON keeps every name exactly; the text view of the
same events holds no control byte but its line breaks."""

from __future__ import annotations

import os
import signal

import pytest

from oomtrace.display import is_printable
from oomtrace.sinks.stream import text_block
from tests.support.agent import AgentProcess, victim_pid
from tests.support.hostile import CGROUP_PREFIX, COMM, assert_exact, b64, spawn, stop
from tests.support.memcg import memcg

pytestmark = pytest.mark.vm

MiB = 1 << 20


def test_hostile_cgroup_and_process_names_on_v2(agents: dict[str, AgentProcess]) -> None:
    with memcg(64 * MiB, prefix=os.fsdecode(CGROUP_PREFIX)) as group:
        assert group.version == 2
        cgroup = os.fsencode(group.cgroup_path)
        holder = spawn(b"hold", preexec_fn=group.preexec)
        allocator = spawn(b"alloc", preexec_fn=group.preexec)
        try:
            assert allocator.stdout is not None
            assert allocator.stdout.readline().strip() == b"allocated"
            assert holder.wait(timeout=60) == -signal.SIGKILL
            events = {
                tier: agent.wait_for(victim_pid(holder.pid), timeout=60, what=f"{tier} oom_kill")
                for tier, agent in agents.items()
            }
        finally:
            stop(holder, allocator)
    for tier, event in events.items():
        assert event["type"] == "oom_kill", tier
        assert_exact(event["victim"], argv=False)
        assert_exact(event["trigger"], argv=True)
        assert b64(event["victim"]["cgroup_b64"]) == cgroup
        assert b64(event["oom"]["memcg_b64"]) == cgroup
        assert b64(event["trigger"]["comm_b64"]) == COMM
        assert is_printable(event["explanation"])
        for line in text_block(event).decode("utf-8").split("\n"):
            assert is_printable(line), (tier, line)
