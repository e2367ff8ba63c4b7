"""What oomtrace's BPF programs cost on the signal path, as configured and as
they could be: the assembled program text is patched where needed, loaded with
the agent's own loader, and timed with the same loop as bench.sigpath.

  as shipped            SIGKILL traced (the default): signal_generate (raw
                        tracepoint, in-kernel filter) and sched_process_exit;
                        no signal_deliver program, since a queued SIGKILL
                        cannot be caught
  SIGTERM traced too    a signal a handler may catch is traced, so
                        signal_deliver is attached (a classic tracepoint that
                        returns at once for an untraced signal)
  ... raw deliver       the same with signal_deliver as a raw tracepoint: no
                        trace record is built for the program, code and
                        sa_handler read from the arguments (siginfo,
                        k_sigaction); a change not made yet

Variants alternate with the baseline (no BPF) in every round; medians.

    sudo .venv/bin/python -m bench.bpf_variants [--short]
"""

from __future__ import annotations

import re
from collections.abc import Callable

from bench import common

DELIVER_HEAD = "TRACEPOINT_PROBE(signal, signal_deliver)\n{\n"
FILTER = (
    "\tif (args->sig != OOMTRACE_SIGKILL && !oomtrace_signal_traced(args->sig))\n\t\treturn 0;\n"
)
RAW_HEAD = (
    "RAW_TRACEPOINT_PROBE(signal_deliver)\n{\n"
    "\tint oomtrace_sig = (int)ctx->args[0];\n"
    "\tif (oomtrace_sig != OOMTRACE_SIGKILL && !oomtrace_signal_traced(oomtrace_sig))\n"
    "\t\treturn 0;\n"
)


def _deliver_body(text: str) -> tuple[int, int]:
    start = text.index(DELIVER_HEAD)
    end = text.index("\n}\n", start)
    return start, end


def shipped(text: str) -> str:
    return text


def deliver_raw(text: str) -> str:
    start, end = _deliver_body(text)
    body = text[start + len(DELIVER_HEAD) : end].replace(FILTER, "", 1)
    body = body.replace("r->sig = args->sig;", "r->sig = oomtrace_sig;")
    body = body.replace(
        "r->code = args->code;",
        "bpf_probe_read_kernel(&r->code, sizeof(r->code), (const char *)ctx->args[1] + 8);",
    )
    body = body.replace(
        "r->sa_handler = args->sa_handler;",
        "bpf_probe_read_kernel(&r->sa_handler, sizeof(r->sa_handler), (const void *)ctx->args[2]);",
    )
    if re.search(r"\bargs->", body):
        raise ValueError("signal_deliver reads a field this patch does not map")
    return text[:start] + RAW_HEAD + body + text[end:]


SIGKILL_ONLY = frozenset({9})
WITH_SIGTERM = frozenset({9, 15})

VARIANTS: dict[str, tuple[frozenset[int], Callable[[str], str]]] = {
    "as shipped": (SIGKILL_ONLY, shipped),
    "SIGTERM traced too": (WITH_SIGTERM, shipped),
    "SIGTERM traced, raw deliver": (WITH_SIGTERM, deliver_raw),
}


class Loaded:
    """The agent's probes, compiled from patched text, in this process."""

    def __init__(self, signals: frozenset[int], patch: Callable[[str], str]) -> None:
        from oomtrace import features, probes

        tracefs = features.find_tracefs(mount=True)
        plan = probes.plan(features.probe_kernel(tracefs), tier="tracepoint", signals=signals)
        self.hooks = plan.hooks
        original = probes.assemble
        probes.assemble = lambda p: patch(original(p))
        try:
            self.probes = probes.Probes(plan)
        finally:
            probes.assemble = original

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
        for name, (signals, patch) in VARIANTS.items():
            b1 = common.run_stormer("sigloop", calls)["elapsed_ns"] / calls
            loaded = Loaded(signals, patch)
            hooks[name] = ", ".join(
                h.split(":", 1)[1] for h in loaded.hooks if h.startswith("signal:")
            )
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
