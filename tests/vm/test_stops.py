"""Runtime stops on a node as most run them (cgroup v2, systemd driver, inside the
test VM), on both tiers: a deletion and a probe restart with no pressure, then a
hard eviction under real memory pressure. The scenarios are written once
(tests/containerd/stops.py) and run on the host too.

The pressure is real: a hog fills the VM until its memory.available, as the
kubelet computes it, is below the threshold of the agents' kubelet config, and
the harness then evicts a pod as the kubelet's eviction manager would. The hog
has a memory limit of its own, so the VM never runs out of memory as a whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oomtrace.nodefacts import CONFIG_CHECK_S
from tests.containerd.harness import Containerd
from tests.containerd.pods import MiB, Node
from tests.containerd.stops import deletion, hard_eviction, kubelet_config, probe_restart
from tests.support import memavailable
from tests.support.agent import AgentProcess
from tests.support.memcg import memcg
from tests.vm.conftest import CRI_DIR, CRI_ENDPOINT

pytestmark = pytest.mark.vm

VERDICTS = Path(".vm-results/kubernetes-verdicts.jsonl")
PRESSURE_LOG = Path(".vm-results/stops-pressure.json")
TIERS = {"kprobe": "auto", "tracepoint": "tracepoint"}
# How far below the node's memory.available the threshold is put, and how much
# more than that the hog takes: enough to cross it with room for the node's own
# ups and downs, little enough for a 2 GiB VM.
MARGIN_MIB = 300
OVERSHOOT_MIB = 200


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kubelet_config(tmp_path_factory.mktemp("kubelet") / "config.yaml", "1Mi")


@pytest.fixture(scope="module")
def node(config: Path) -> Iterator[Node]:
    started = {
        tier: AgentProcess(
            "--tier", flag, "--cri-endpoint", CRI_ENDPOINT, "--kubelet-config", str(config)
        )
        for tier, flag in TIERS.items()
    }
    daemon = Containerd(CRI_DIR, systemd=True)
    try:
        for agent in started.values():
            agent.wait_ready()
        daemon.start()
        yield Node(daemon, started, VERDICTS)
    finally:
        daemon.close()
        codes = {tier: agent.stop() for tier, agent in started.items()}
        assert codes == dict.fromkeys(started, 0), codes


def test_deletion(node: Node) -> None:
    deletion(node)


def test_probe_restart(node: Node) -> None:
    probe_restart(node)


def available_mib() -> int:
    """memory.available now, as the kubelet computes it (not with the agent's code)."""
    return memavailable.available_bytes() // MiB


def test_hard_eviction_under_real_pressure(node: Node, config: Path) -> None:
    before = available_mib()
    threshold = before - MARGIN_MIB
    kubelet_config(config, f"{threshold}Mi")
    # The agents look at the file's time every CONFIG_CHECK_S.
    time.sleep(CONFIG_CHECK_S + 1)
    hog_mib = MARGIN_MIB + OVERSHOOT_MIB
    # The hog's own limit, above what it takes: it cannot grow past it, so the VM as
    # a whole keeps (available - hog) and never runs out.
    with memcg((hog_mib + 64) * MiB) as group:
        hog = subprocess.Popen(
            [sys.executable, "-c",
             f"import sys, time; b = b'x' * ({hog_mib} << 20); print('held', flush=True); "
             "time.sleep(600)"],
            preexec_fn=group.preexec,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert hog.stdout is not None and hog.stdout.readline().strip() == b"held"
            end = time.monotonic() + 30
            while (under := available_mib()) >= threshold:
                assert time.monotonic() < end, f"memory.available {under} MiB > {threshold} MiB"
                time.sleep(0.5)
            events = hard_eviction(node, dict.fromkeys(TIERS, "eviction"))
            after = available_mib()
        finally:
            hog.kill()
            hog.wait()
    released = available_mib()
    readings = [e["node"]["memory"]["available_bytes"] // MiB for e in events]
    # What the pressure was, for the record of the run.
    PRESSURE_LOG.parent.mkdir(parents=True, exist_ok=True)
    PRESSURE_LOG.write_text(
        json.dumps(
            {
                "memory_available_mib": {
                    "before": before,
                    "threshold": threshold,
                    "under_pressure": under,
                    "after_eviction": after,
                    "released": released,
                },
                "agents_read_mib": readings,
            }
        )
        + "\n"
    )
    # The agents read the same signal below the same threshold as this test did.
    for event in events:
        below = event["node"]["memory"]["below_threshold"]
        assert below["bytes"] == threshold * MiB, below
        assert event["node"]["memory"]["available_bytes"] < below["bytes"], event["node"]
    assert released > threshold, (released, threshold)
