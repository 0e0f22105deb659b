"""The LLM autoscalers on identical simulated traces: HPA on CPU, KEDA on the vLLM queue,
WVA V1, WVA V2 and ours (``mode: slo``), each scaling a fleet of Llama-3.1-8B on H100
(``sim/llm_fleet.py``, the engine model per replica) from 1 replica, at most 10, pod
start-up drawn from 65-130 s (WVA's benchmarks), the same arrivals, lengths and start-up
draws (seeds) for every policy.

Traces (``benchmarks/slo_traces.py``): constant, ramp, bursty MMPP, diurnal, and WVA.md
section 9's profiles: bursty 15-2-10-15-5-2 req/s, symmetric, prefill-heavy, decode-heavy.

Figures per policy (``sim.llm_autoscale.summarize``): goodput (requests/s meeting TTFT <=
1 s and ITL <= 50 ms; failed and unfinished requests count as misses), SLO attainment and
misses, TTFT and ITL p90 of the finished requests, failed and unfinished (still in flight
300 s after the trace), GPU-hours (= replica-hours: one GPU per replica, from creation, as a
loading pod holds its GPU), cost (x $4.10 an hour), good requests per dollar and per
GPU-hour; then, per trace, ours against each baseline in the terms of issue 11's goals.

Written to ``--out`` (default ``results/autoscalers/``): ``table.md`` and ``table.csv`` (all
traces), and ``replicas-<trace>.png``: each policy's ready replicas over time against the
offered rate.

    python benchmarks/slo_compare.py [--traces ramp,mmpp] [--policies slo,wva-v1] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from slo_traces import TRACES, trace_pattern, workload

from kservebench.sim.distributions import Empirical
from kservebench.sim.llm_autoscale import POLICIES, AutoscaledRun, run_policy, summarize

SLOS = {"ttft_ms": 1000.0, "itl_ms": 50.0}
STARTUP = Empirical.of(np.arange(65.0, 131.0))  # seconds, uniform over WVA's 65-130 s
COLUMNS = {
    "goodput_rps": ("goodput req/s", 2),
    "slo_attainment": ("SLO att.", 3),
    "ttft_p90_ms": ("TTFT p90 ms", 0),
    "itl_p90_ms": ("ITL p90 ms", 1),
    "slo_misses": ("SLO misses", 0),
    "failed": ("failed", 0),
    "timed_out": ("unfinished", 0),
    "gpu_hours": ("GPU-h", 2),
    "cost": ("cost $", 2),
    "goodput_per_cost": ("good req/$", 0),
    "goodput_per_gpu_hour": ("good req/GPU-h", 0),
    "mean_replicas": ("mean repl.", 2),
    "max_replicas": ("max repl.", 0),
    "wall_s": ("wall s", 1),
}


def compare(trace: str, policies: list[str], seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The figures of every policy on ``trace`` (one row each) and the runs themselves."""
    w = workload(trace, seed)
    duration = float(w.duration_s)
    rows, runs = [], {}
    for name in policies:
        start = time.perf_counter()
        run = run_policy(name, w, startup_s=STARTUP, seed=seed)
        row = summarize(run, SLOS, duration)
        row["wall_s"] = time.perf_counter() - start
        row["slo_misses"] = round(row["requests"] * (1 - row["slo_attainment"]))
        hours = row["gpu_hours"]
        row["goodput_per_gpu_hour"] = row["goodput_rps"] * duration / hours if hours else np.nan
        rows.append(row)
        runs[name] = run
    return pd.DataFrame(rows).set_index("policy"), runs


def markdown(trace: str, table: pd.DataFrame) -> str:
    head = "| policy | " + " | ".join(label for label, _ in COLUMNS.values()) + " |"
    lines = [f"**{trace}**", "", head, "|---|" + "---:|" * len(COLUMNS)]
    for policy, row in table.iterrows():
        cells = [f"{row[c]:.{digits}f}" for c, (_, digits) in COLUMNS.items()]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(table: pd.DataFrame) -> str:
    """Issue 11's goals, ours against each baseline: goodput and SLO-miss ratios against the
    HPAs (goal >= 1.37x and <= 0.1x), good requests per GPU-hour against WVA (>= 1.15x)."""
    if "slo" not in table.index:
        return ""
    ours = table.loc["slo"]
    parts = []
    for rival in table.index.drop("slo"):
        r = table.loc[rival]
        misses = ours["slo_misses"] / r["slo_misses"] if r["slo_misses"] else float("inf")
        per_gpu_h = ours["goodput_per_gpu_hour"] / r["goodput_per_gpu_hour"]
        parts.append(
            f"{rival}: goodput x{ours['goodput_rps'] / r['goodput_rps']:.2f}, "
            f"SLO misses x{misses:.2f}, goodput per GPU-hour x{per_gpu_h:.2f}"
        )
    return "ours vs " + "; ".join(parts)


def replicas_png(trace: str, runs: dict[str, AutoscaledRun]) -> bytes:
    """Each policy's ready replicas (steps) over time, the offered rate shaded behind; built
    like ``analysis/plots.py`` (matplotlib's object API on the Agg canvas, no pyplot state)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    pattern = trace_pattern(trace)
    seconds = np.arange(0.0, pattern.duration_s, 1.0)
    fig = Figure(figsize=(9, 4))
    rate_ax = fig.add_subplot(1, 1, 1)
    rate_ax.fill_between(
        seconds, [pattern.rate(t) for t in seconds], step="post", color="0.85", label="offered"
    )
    rate_ax.set_xlabel("seconds since the trace's start")
    rate_ax.set_ylabel("offered rate (req/s)", color="0.4")
    ax = rate_ax.twinx()  # replicas in front of the load
    for name, run in runs.items():
        counts = run.result.replica_counts
        ax.step(counts["time_s"], counts["ready"], where="post", label=name, linewidth=1.4)
    ax.set_ylabel("ready replicas")
    ax.set_ylim(0, 10.5)  # the fleet's cap
    handles = [*ax.get_legend_handles_labels()[0], *rate_ax.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 1.0))
    ax.set_title(f"{trace}: ready replicas against the offered load (start-up 65-130 s)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default=",".join(TRACES))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/autoscalers"))
    args = parser.parse_args()
    policies = args.policies.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sections, tables = [], []
    for trace in args.traces.split(","):
        table, runs = compare(trace, policies, args.seed)
        section = "\n\n".join(s for s in (markdown(trace, table), goals(table)) if s)
        print(section, end="\n\n", flush=True)
        sections.append(section)
        tables.append(table.reset_index().assign(trace=trace))
        (args.out / f"replicas-{trace}.png").write_bytes(replicas_png(trace, runs))
    (args.out / "table.md").write_text("\n\n".join(sections) + "\n")
    columns = ["trace", "policy", "requests", *COLUMNS]
    pd.concat(tables)[columns].to_csv(args.out / "table.csv", index=False)
    print(f"wrote {args.out}/table.md, table.csv and replicas-<trace>.png")
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
