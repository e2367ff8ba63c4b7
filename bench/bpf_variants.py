"""What oomtrace's signal programs cost on the signal path in each of the
configurations the loader can choose, measured in pairs: the same loop as
bench.sigpath, in short chunks, with the signal programs attached and detached
in turn.

  as shipped                 SIGKILL traced (the default), BTF: signal_generate
                             as a raw tracepoint with an in-kernel filter and
                             sched_process_exit; no signal_deliver program, since
                             a queued SIGKILL cannot be caught; a container
                             runtime's stop signals followed
  without stop following     the same, without the stop signals: what every
                             signal cost before they were followed
  SIGTERM traced too         a signal a handler may catch is traced, so
                             signal_deliver is attached (a raw tracepoint that
                             returns at once for an untraced signal)
  no BTF                     a kernel without BTF: the plain tracepoints, which
                             build a trace record before the program runs, and
                             signal_deliver always (the plain signal_generate
                             does not know the target's process)

Each variant is measured with the loop sending SIGUSR1, which is no stop signal
(the untraced traffic of a node), and SIGTERM, a stop signal the in-kernel filter
then checks the sender's name for (a loop is not a container runtime, so nothing
reaches userspace either way).

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
SIGUSR1 = 10
SIGTERM = 15
LOOP_SIGNALS = {"SIGUSR1": SIGUSR1, "SIGTERM": SIGTERM}
WITH_SIGTERM = frozenset({9, 15})
NO_BTF = Path("/nonexistent/vmlinux")

# name: (traced signals, kernel BTF as the agent would find it, stops followed)
VARIANTS: dict[str, tuple[frozenset[int], bool, bool]] = {
    "without stop following": (SIGKILL_ONLY, True, False),
    "as shipped": (SIGKILL_ONLY, True, True),
    "SIGTERM traced too": (WITH_SIGTERM, True, True),
    "no BTF": (SIGKILL_ONLY, False, True),
}


class Loaded:
    """The agent's programs for one configuration, compiled from the agent's plan,
    with their signal hooks detachable."""

    def __init__(self, signals: frozenset[int], btf: bool, stops: bool) -> None:
        from oomtrace import runtimes
        from oomtrace.kernel import features, probes

        tracefs = features.find_tracefs(mount=True)
        kernel = (
            features.probe_kernel(tracefs)
            if btf
            else features.probe_kernel(tracefs, btf_path=NO_BTF)
        )
        plan = probes.plan(
            kernel,
            tier="tracepoint",
            signals=signals,
            stop_signals=runtimes.STOP_SIGNALS if stops else frozenset(),
            stop_senders=runtimes.SIGNALLING_RUNTIMES if stops else (),
        )
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


def ns_per_kill(calls: int, sig: int) -> float:
    return float(common.run_stormer("sigloop", calls, sig)["elapsed_ns"]) / calls


def measure(loaded: Loaded, sig: int, pairs: int, chunk: int) -> dict[str, Any]:
    on: list[float] = []
    off: list[float] = []
    for i in range(pairs):
        # Attached at the start of each pair; which half runs first alternates.
        if i % 2:
            loaded.detach()
            off.append(ns_per_kill(chunk, sig))
            loaded.attach()
            on.append(ns_per_kill(chunk, sig))
        else:
            on.append(ns_per_kill(chunk, sig))
            loaded.detach()
            off.append(ns_per_kill(chunk, sig))
            loaded.attach()
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
    results: dict[str, dict[str, Any]] = {}
    for name, (signals, btf, stops) in VARIANTS.items():
        loaded = Loaded(signals, btf, stops)
        try:
            for loop_name, sig in LOOP_SIGNALS.items():
                results[f"{name}, {loop_name}"] = measure(loaded, sig, pairs, chunk)
        finally:
            loaded.close()
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
        f"kill(2) of a handled signal, untraced unless a variant traces it: {pairs} pairs of "
        f"{chunk:,}-kill chunks per variant and signal, programs attached vs detached, medians",
        [
            "variant, signal",
            "signal programs",
            "ns detached",
            "ns attached",
            "ns per kill",
            "overhead",
        ],
        rows,
    )
    report.data = {"pairs": pairs, "chunk": chunk, "variants": results}
    report.emit(args.json)


if __name__ == "__main__":
    main()
