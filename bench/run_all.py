"""Every benchmark, one after the other, each in its own process; their reports
concatenated, headed by the command, machine and date, ready for
docs/performance.md. Exits non-zero when any benchmark failed.

    sudo .venv/bin/python -m bench.run_all            the full run (about 20 minutes)
    sudo .venv/bin/python -m bench.run_all --short    CI: checks they all still work
"""

from __future__ import annotations

import argparse
import datetime
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import common

BENCHES = (
    "sigpath",
    "bpf_variants",
    "execpath",
    "killstorm",
    "oomstorm",
    "latency",
    "footprint",
    "hotpath",
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", action="store_true", help="quick pass of every benchmark")
    p.add_argument("--only", action="append", choices=BENCHES, help="run only this (repeatable)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    common.require_root()
    common.stormer()
    command = "sudo .venv/bin/python -m bench.run_all" + (" --short" if args.short else "")
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print("# oomtrace benchmarks\n")
    print(f"- command: `{command}`")
    print(f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"- machine: {common.machine()}, {cpu}")
    print()
    sys.stdout.flush()
    failed = []
    for name in args.only or BENCHES:
        start = time.monotonic()
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--short"] if args.short else [])]
        child = subprocess.Popen(cmd, cwd=common.ROOT)
        try:
            returncode = child.wait()
        except BaseException:
            child.terminate()
            child.wait()
            raise
        print(f"\n({name}: {time.monotonic() - start:.0f} s, exit {returncode})\n", flush=True)
        if returncode != 0:
            failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
