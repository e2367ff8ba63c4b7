"""What oomtrace's signal programs cost on the signal path in each of the
configurations the loader can choose, measured in pairs: the same loop as
bench.sigpath, in short chunks, with the signal programs attached and detached
in turn.

  as shipped                 SIGKILL traced (the default), BTF: signal_generate
                             as a raw tracepoint with an in-kernel filter and
                             sched_process_exit; no signal_deliver program, since
                             a queued SIGKILL cannot be caught
  SIGTERM traced too         a signal a handler may catch is traced, so
                             signal_deliver is attached (a raw tracepoint that
                             returns at once for an untraced signal)
  no BTF                     a kernel without BTF: the plain tracepoints, which
                             build a trace record before the program runs, and
                             signal_deliver always (the plain signal_generate
                             does not know the target's process)

Why pairs: on a shared machine the loop's speed drifts by several percent over
minutes, more than the cost measured. The programs are compiled and loaded once
per configuration (in this process, with bcc); attaching or detaching them then
takes microseconds, so each chunk with them has a chunk without them right next
to it, alternating which runs first. The overhead is the median of the pairs'
ratios.

    sudo .venv/bin/python -m bench.bpf_variants [--short]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common

SIGKILL_ONLY = frozenset({9})
WITH_SIGTERM = frozenset({9, 15})
NO_BTF = Path("/nonexistent/vmlinux")

# name: (traced signals, kernel BTF as the agent would find it)
VARIANTS: dict[str, tuple[frozenset[int], bool]] = {
    "as shipped": (SIGKILL_ONLY, True),
    "SIGTERM traced too": (WITH_SIGTERM, True),
    "no BTF": (SIGKILL_ONLY, False),
}


class Loaded:
    """The agent's programs for one configuration, compiled from the agent's plan,
    with their signal hooks detachable."""

    def __init__(self, signals: frozenset[int], btf: bool) -> None:
        from oomtrace.kernel import features, probes

        tracefs = features.find_tracefs(mount=True)
        kernel = (
            features.probe_kernel(tracefs)
            if btf
            else features.probe_kernel(tracefs, btf_path=NO_BTF)
        )
        plan = probes.plan(kernel, tier="tracepoint", signals=signals)
        self.raw = "OOMTRACE_HAVE_TASK_OFFSETS" in plan.defines
        self.events = [h.split(":", 1)[1] for h in plan.hooks if h.startswith("signal:")]
        self.hooks = ", ".join(("raw " if self.raw else "") + e for e in self.events)
        self.probes = probes.Probes(plan, in_process=True)
        backend: Any = self.probes.backend
        self.bpf = backend.bpf

    def detach(self) -> None:
        for event in self.events:
            if self.raw:
                self.bpf.detach_raw_tracepoint(tp=event.encode())
            else:
                self.bpf.detach_tracepoint(tp=f"signal:{event}".encode())

    def attach(self) -> None:
        for event in self.events:
            if self.raw:
                self.bpf.attach_raw_tracepoint(
                    tp=event.encode(), fn_name=f"raw_tracepoint__{event}".encode()
                )
            else:
                self.bpf.attach_tracepoint(
                    tp=f"signal:{event}".encode(), fn_name=f"tracepoint__signal__{event}".encode()
                )

    def close(self) -> None:
        self.probes.close()


def ns_per_kill(calls: int) -> float:
    return float(common.run_stormer("sigloop", calls)["elapsed_ns"]) / calls


def measure(signals: frozenset[int], btf: bool, pairs: int, chunk: int) -> dict[str, Any]:
    loaded = Loaded(signals, btf)
    on: list[float] = []
    off: list[float] = []
    try:
        for i in range(pairs):
            # Attached at the start of each pair; which half runs first alternates.
            if i % 2:
                loaded.detach()
                off.append(ns_per_kill(chunk))
                loaded.attach()
                on.append(ns_per_kill(chunk))
            else:
                on.append(ns_per_kill(chunk))
                loaded.detach()
                off.append(ns_per_kill(chunk))
                loaded.attach()
    finally:
        loaded.close()
    return {
        "hooks": loaded.hooks,
        "on_ns": common.median(on),
        "off_ns": common.median(off),
        "ratio": common.median([a / b for a, b in zip(on, off, strict=True)]),
        "diff_ns": common.median([a - b for a, b in zip(on, off, strict=True)]),
    }


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.require_root()
    pairs, chunk = (2, 20_000) if args.short else (20, 200_000)
    common.run_stormer("sigloop", 10000)
    results = {
        name: measure(signals, btf, pairs, chunk) for name, (signals, btf) in VARIANTS.items()
    }
    report = common.Report("BPF program variants on the signal path (bench.bpf_variants)")
    rows: list[list[object]] = [
        [
            name,
            r["hooks"],
            f"{r['off_ns']:.0f}",
            f"{r['on_ns']:.0f}",
            f"{r['diff_ns']:+.0f}",
            f"{(r['ratio'] - 1) * 100:+.1f}%",
        ]
        for name, r in results.items()
    ]
    report.add(
        f"kill(2) of a handled SIGUSR1: {pairs} pairs of {chunk:,}-kill chunks per variant, "
        "programs attached vs detached, medians",
        ["variant", "signal programs", "ns detached", "ns attached", "ns per kill", "overhead"],
        rows,
    )
    report.data = {"pairs": pairs, "chunk": chunk, "variants": results}
    report.emit(args.json)


if __name__ == "__main__":
    main()
