"""oomtrace installed as the systemd service of the test VM: where scripts/install
puts it, and the few commands the service tests drive it with."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.agent import repo_root

ROOT = repo_root()
PREFIX = Path("/opt/oomtrace")
UNIT = Path("/etc/systemd/system/oomtrace.service")
CONFIG = Path("/etc/oomtrace/oomtrace.toml")
LOGS = Path("/var/log/oomtrace")
PINS = Path("/sys/fs/bpf/oomtrace")
# The VM has no network: the dependencies come from the wheels the box was built
# with. A node with internet runs plain `scripts/install`.
WHEELHOUSE = Path("/opt/oomtrace-wheelhouse")


def run(
    *cmd: str | Path, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result


def install() -> None:
    args = ["--wheelhouse", str(WHEELHOUSE)] if WHEELHOUSE.is_dir() else []
    run(ROOT / "scripts/install", *args)


def uninstall() -> None:
    run(ROOT / "scripts/uninstall", "--purge", check=False)


def show(*props: str) -> dict[str, str]:
    out = run("systemctl", "show", "oomtrace", *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def kill_sleepers(count: int) -> set[int]:
    """Pids of `count` processes SIGKILLed by this one."""
    pids = set()
    for _ in range(count):
        proc = subprocess.Popen(["sleep", "300"])
        proc.kill()
        proc.wait()
        pids.add(proc.pid)
    return pids


def oomtrace_programs() -> set[int]:
    """The ids of oomtrace's BPF programs loaded on the node. Agents run by hand
    (the session's `agents`) load the same programs: a test of the service's
    takes those loaded before it started away."""
    out = run("bpftool", "prog", "show", "--json").stdout
    ours = (
        "tracepoint__sig",
        "raw_tracepoint_",
        "tracepoint__sch",
        "tracepoint__oom",
        "tracepoint__cgr",
        "oomtrace_oom_ki",
    )
    return {p["id"] for p in json.loads(out or "[]") if p.get("name", "").startswith(ours)}
