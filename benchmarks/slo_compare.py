"""The LLM autoscalers on identical simulated traces: HPA on CPU, KEDA on the vLLM queue,
WVA V1, WVA V2 and ours (``mode: slo``), each scaling a fleet of Llama-3.1-8B on H100
(``sim/llm_fleet.py``, the engine model per replica) from 1 replica, at most 10, pod
start-up drawn from 65-130 s (WVA's benchmarks), the same arrivals and lengths (seeds).

Traces (WVA.md section 9 for the profiles; fixed lengths as guidellm sends them):

* ``ramp``: 2 req/s for 60 s, a linear ramp to 20 req/s over 240 s, 20 req/s for 180 s,
  then 4 req/s for 120 s; ShareGPT-like lognormal lengths (means ~1000 in, ~600 out);
* ``bursty``: WVA's bursty profile, 15 -> 2 -> 10 -> 15 -> 5 -> 2 req/s, 150 s each, 1000/1000;
* ``symmetric``, ``prefill-heavy``, ``decode-heavy``: 20 req/s for 600 s with 1000/1000,
  4000/1000 and 1000/4000 tokens.

Figures per policy (``sim.llm_autoscale.summarize``): goodput (requests/s meeting TTFT <=
1 s and ITL <= 50 ms; unfinished requests count as misses), SLO attainment and misses,
TTFT and ITL p90 of the finished requests, failed and unfinished (still in flight 300 s
after the trace), replica-hours (= GPU-hours: one GPU per replica), cost (replica-hours x
$4.10) and good requests per dollar; then, per trace, ours against each baseline in the
terms of issue 11's goals.

    python benchmarks/slo_compare.py [--traces ramp,bursty] [--policies slo,wva-v1] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from kservebench.loadgen.patterns import parse_pattern
from kservebench.sim.distributions import Empirical
from kservebench.sim.llm_autoscale import POLICIES, run_policy, summarize
from kservebench.sim.llm_workload import LlmWorkload, fixed_lengths, workload_from_pattern

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
    "replica_hours": ("replica-h", 2),
    "cost": ("cost $", 2),
    "goodput_per_cost": ("good req/$", 0),
    "mean_replicas": ("mean repl.", 2),
    "max_replicas": ("max repl.", 0),
    "wall_s": ("wall s", 1),
}


def sharegpt_like(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lognormal lengths (sigma 0.8): means ~1000 prompt and ~600 output tokens."""
    sigma = 0.8
    prompt = rng.lognormal(np.log(1000) - sigma**2 / 2, sigma, n)
    output = rng.lognormal(np.log(600) - sigma**2 / 2, sigma, n)
    return (
        np.clip(np.round(prompt), 16, 8000).astype(np.int64),
        np.clip(np.round(output), 16, 4000).astype(np.int64),
    )


def ramp_rates(scale_s: float = 1.0) -> list[float]:
    """Per-second rates of the ramp trace (``scale_s`` < 1 shortens every phase)."""
    low, ramp, hold, tail = (round(x * scale_s) for x in (60, 240, 180, 120))
    return [2.0] * low + list(np.linspace(2.0, 20.0, ramp)) + [20.0] * hold + [4.0] * tail


def workload(trace: str, seed: int = 0) -> LlmWorkload:
    if trace == "ramp":
        pattern = parse_pattern({"type": "trace", "rates": ramp_rates()})
        return workload_from_pattern(pattern, "poisson", sharegpt_like, seed=seed)
    if trace == "bursty":
        stages = [{"duration": "150s", "rate": r} for r in (15, 2, 10, 15, 5, 2)]
        pattern = parse_pattern({"type": "steps", "stages": stages})
        return workload_from_pattern(pattern, "poisson", fixed_lengths(1000, 1000), seed=seed)
    lengths = {
        "symmetric": (1000, 1000),
        "prefill-heavy": (4000, 1000),
        "decode-heavy": (1000, 4000),
    }[trace]
    pattern = parse_pattern({"type": "constant", "rate": 20, "duration": "600s"})
    return workload_from_pattern(pattern, "poisson", fixed_lengths(*lengths), seed=seed)


TRACES = ("ramp", "bursty", "symmetric", "prefill-heavy", "decode-heavy")


def compare(trace: str, policies: list[str], seed: int = 0) -> pd.DataFrame:
    w = workload(trace, seed)
    rows = []
    for name in policies:
        start = time.perf_counter()
        run = run_policy(name, w, startup_s=STARTUP, seed=seed)
        row = summarize(run, SLOS, float(w.duration_s))
        row["wall_s"] = time.perf_counter() - start
        row["slo_misses"] = round(row["requests"] * (1 - row["slo_attainment"]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("policy")


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
        per_gpu_h = (ours["goodput_rps"] / ours["gpu_hours"]) / (r["goodput_rps"] / r["gpu_hours"])
        parts.append(
            f"{rival}: goodput x{ours['goodput_rps'] / r['goodput_rps']:.2f}, "
            f"SLO misses x{misses:.2f}, goodput per GPU-hour x{per_gpu_h:.2f}"
        )
    return "ours vs " + "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default=",".join(TRACES))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    policies = args.policies.split(",")
    start = time.perf_counter()
    for trace in args.traces.split(","):
        table = compare(trace, policies, args.seed)
        print(markdown(trace, table), goals(table), sep="\n\n", end="\n\n", flush=True)
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
