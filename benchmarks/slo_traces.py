"""The traces of ``benchmarks/slo_compare.py``: one loadgen pattern (the offered rate r(t))
and one length sampler per trace, so every policy meets the same arrivals and lengths.

* ``constant``: 10 req/s for 600 s, ShareGPT-like lengths;
* ``ramp``: 2 req/s for 60 s, a linear ramp to 20 req/s over 240 s, 20 req/s for 180 s,
  then 4 req/s for 120 s; ShareGPT-like lognormal lengths (means ~1000 in, ~600 out);
* ``mmpp``: a Markov-modulated Poisson process (``loadgen/mmpp.py``), calm at 3 req/s for
  ~180 s on average and bursts of 18 req/s lasting ~60 s, 900 s (rate path seed 3: six
  bursts, 226 s in all, mean 6.8 req/s), ShareGPT-like lengths. The shipped
  ``loadgen/traces/mmpp_example.csv`` (5/40 req/s, ~15 s bursts, 300 s) is not used: its
  bursts end long before any pod (65-130 s) could start, so it measures no policy;
* ``diurnal``: a sinusoid from 2 req/s (night) to 18 req/s (noon), a 600 s "day", two days,
  ShareGPT-like lengths;
* ``bursty``: WVA's bursty profile, 15 -> 2 -> 10 -> 15 -> 5 -> 2 req/s, 150 s each, 1000/1000;
* ``symmetric``, ``prefill-heavy``, ``decode-heavy``: WVA's profiles, 20 req/s for 600 s with
  1000/1000, 4000/1000 and 1000/4000 tokens (fixed lengths as guidellm sends them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kservebench.loadgen.mmpp import mmpp_rates
from kservebench.loadgen.patterns import Pattern, parse_pattern
from kservebench.sim.llm_workload import LlmWorkload, fixed_lengths, workload_from_pattern

LengthSampler = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


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


def _wva(rate: float, prompt: int, output: int) -> tuple[dict, LengthSampler]:
    pattern = {"type": "constant", "rate": rate, "duration": "600s"}
    return pattern, fixed_lengths(prompt, output)


def _spec(trace: str) -> tuple[dict, LengthSampler]:
    """The pattern spec and lengths of ``trace`` (one table; the MMPP path drawn on demand)."""
    if trace == "mmpp":  # the rate path is fixed (seed 3); arrivals follow the run's seed
        rates = mmpp_rates((3.0, 18.0), (180.0, 60.0), duration_s=900, seed=3)
        return {"type": "trace", "rates": [float(r) for r in rates]}, sharegpt_like
    bursty = [{"duration": "150s", "rate": r} for r in (15, 2, 10, 15, 5, 2)]
    diurnal = {"type": "diurnal", "min_rate": 2, "max_rate": 18, "period": "600s"}
    diurnal["duration"] = "1200s"  # two 600 s "days"
    specs: dict[str, tuple[dict, LengthSampler]] = {
        "constant": ({"type": "constant", "rate": 10, "duration": "600s"}, sharegpt_like),
        "ramp": ({"type": "trace", "rates": ramp_rates()}, sharegpt_like),
        "diurnal": (diurnal, sharegpt_like),
        "bursty": ({"type": "steps", "stages": bursty}, fixed_lengths(1000, 1000)),
        "symmetric": _wva(20, 1000, 1000),
        "prefill-heavy": _wva(20, 4000, 1000),
        "decode-heavy": _wva(20, 1000, 4000),
    }
    if trace not in specs:
        raise ValueError(f"unknown trace {trace!r}: one of {', '.join(TRACES)}")
    return specs[trace]


TRACES = (
    "constant",
    "ramp",
    "mmpp",
    "diurnal",
    "bursty",
    "symmetric",
    "prefill-heavy",
    "decode-heavy",
)


def trace_pattern(trace: str) -> Pattern:
    return parse_pattern(_spec(trace)[0], field=trace)


def workload(trace: str, seed: int = 0) -> LlmWorkload:
    """Poisson arrivals of ``trace``'s pattern with its lengths, drawn from ``seed``."""
    spec, lengths = _spec(trace)
    return workload_from_pattern(parse_pattern(spec, field=trace), "poisson", lengths, seed=seed)
