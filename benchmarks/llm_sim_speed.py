"""How fast the LLM fleet simulates: one hour of 20 replicas of Llama-3.1-8B on H100 at
20 req/s (Poisson, ~72,000 requests, ~10 million engine steps).

Lengths are ShareGPT-like: lognormal prompts (mean ~220 tokens) and outputs (mean ~200),
clipped to [4, 4096] and [1, 2048]. Prints the wall time (workload, event loop with
records), the simulated requests and engine steps, and p50/p90 TTFT and ITL (per-request
mean gap). Target: the whole run < 60 s; exits 1 when slower.

    python benchmarks/llm_sim_speed.py [--minutes 60] [--routing least_requests] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

import numpy as np

from kservebench.loadgen.patterns import parse_pattern
from kservebench.sim.llm_fleet import LlmFleet
from kservebench.sim.llm_routing import ROUTING
from kservebench.sim.llm_workload import workload_from_pattern

TARGET_S = 60.0


def sharegpt_like(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lognormal lengths with sigma 1 (a long right tail, as ShareGPT's), means ~220/~200."""
    sigma = 1.0
    prompt = rng.lognormal(np.log(220) - sigma**2 / 2, sigma, n)
    output = rng.lognormal(np.log(200) - sigma**2 / 2, sigma, n)
    return (
        np.clip(np.round(prompt), 4, 4096).astype(np.int64),
        np.clip(np.round(output), 1, 2048).astype(np.int64),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--variant", default="llama-3.1-8b-h100")
    parser.add_argument("--routing", choices=tuple(ROUTING), default="least_requests")
    parser.add_argument("--profile", action="store_true", help="cProfile the run, top 25")
    args = parser.parse_args()

    start = time.perf_counter()
    pattern = parse_pattern(
        {"type": "constant", "rate": args.rate, "duration": f"{args.minutes * 60:g}s"}
    )
    workload = workload_from_pattern(pattern, "poisson", sharegpt_like, seed=0)
    prepared = time.perf_counter()
    fleet = LlmFleet(args.variant, args.replicas, routing=args.routing)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    result = fleet.run(workload)
    if profiler:
        profiler.disable()
    done = time.perf_counter()
    total_s = done - start

    rec = result.records
    ok = rec[rec["ok"]]
    ttft = np.percentile(ok["ttft_ms"], [50, 90])
    itl = np.percentile(ok["itl_ms"].dropna(), [50, 90])
    print(
        f"{args.variant} x {args.replicas} ({args.routing}), {args.rate:g} req/s Poisson "
        f"for {pattern.duration_s:.0f} s: {len(workload):,} requests "
        f"(prompt mean {workload.prompt_tokens.mean():.0f}, output mean "
        f"{workload.max_tokens.mean():.0f} tokens), {len(ok):,} ok"
    )
    print(f"workload:   {prepared - start:.1f} s")
    print(
        f"simulation: {done - prepared:.1f} s ({result.steps:,} engine steps, "
        f"{result.steps / (done - prepared) / 1e6:.2f} M steps/s; {len(result.series):,} "
        f"samples; simulated until {result.end_time_s:.0f} s)"
    )
    print(f"TTFT p50 {ttft[0]:.1f} ms, p90 {ttft[1]:.1f} ms")
    print(f"ITL  p50 {itl[0]:.2f} ms, p90 {itl[1]:.2f} ms")
    print(
        f"replica load: running mean {result.series['running'].mean():.2f}, "
        f"KV usage mean {result.series['kv_usage'].mean():.4f}"
    )
    verdict = "OK" if total_s < TARGET_S else "TOO SLOW"
    print(f"wall time {total_s:.1f} s, target < {TARGET_S:.0f} s: {verdict}")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return 0 if total_s < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
