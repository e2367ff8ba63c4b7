"""What oomtrace's signal programs cost on the signal path in each of the
configurations the loader can choose, loaded with the agent's own loader and
timed with the same loop as bench.sigpath.

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

Variants alternate with the baseline (no BPF) in every round; medians.

    sudo .venv/bin/python -m bench.bpf_variants [--short]
"""

from __future__ import annotations

from pathlib import Path

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
    """The agent's probes for one configuration, loaded as the agent loads them."""

    def __init__(self, signals: frozenset[int], btf: bool) -> None:
        from oomtrace import features, probes

        tracefs = features.find_tracefs(mount=True)
        kernel = (
            features.probe_kernel(tracefs)
            if btf
            else features.probe_kernel(tracefs, btf_path=NO_BTF)
        )
        plan = probes.plan(kernel, tier="tracepoint", signals=signals)
        raw = "OOMTRACE_HAVE_TASK_OFFSETS" in plan.defines
        self.hooks = ", ".join(
            ("raw " if raw else "") + h.split(":", 1)[1]
            for h in plan.hooks
            if h.startswith("signal:")
        )
        self.probes = probes.Probes(plan)

    def close(self) -> None:
        self.probes.close()


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.require_root()
    calls = 50_000 if args.short else 1_000_000
    rounds = 1 if args.short else 5
    common.run_stormer("sigloop", 10000)
    base: list[float] = []
    ns: dict[str, list[float]] = {name: [] for name in VARIANTS}
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
    hooks: dict[str, str] = {}
    for _ in range(rounds):
        for name, (signals, btf) in VARIANTS.items():
            b1 = common.run_stormer("sigloop", calls)["elapsed_ns"] / calls
            loaded = Loaded(signals, btf)
            hooks[name] = loaded.hooks
            try:
                t = common.run_stormer("sigloop", calls)["elapsed_ns"] / calls
            finally:
                loaded.close()
            b2 = common.run_stormer("sigloop", calls)["elapsed_ns"] / calls
            base += [b1, b2]
            ns[name].append(t)
            ratios[name].append(t / ((b1 + b2) / 2))
    report = common.Report("BPF program variants on the signal path (bench.bpf_variants)")
    b = common.median(base)
    rows: list[list[object]] = [["no BPF", "-", f"{b:.0f}", "+0.0%", "-"]]
    for name in VARIANTS:
        med = common.median(ns[name])
        rows.append(
            [
                name,
                hooks[name],
                f"{med:.0f}",
                f"{(common.median(ratios[name]) - 1) * 100:+.1f}%",
                f"{med - common.median(ns['as shipped']):+.0f}",
            ]
        )
    report.add(
        f"{calls:,} kill(2) of a handled SIGUSR1, {rounds} rounds, each between two baselines",
        ["variant", "signal programs", "ns per kill(2)", "vs no BPF", "ns vs shipped"],
        rows,
    )
    report.data = {"baseline_ns": b, "variants": {k: common.median(v) for k, v in ns.items()}}
    report.emit(args.json)


if __name__ == "__main__":
    main()
