"""Bursty example traces from a Markov-modulated Poisson process (MMPP).

An MMPP switches between hidden states, each with its own Poisson rate; the time spent
in a state is exponential with mean ``1 / leave_rate``. Real inference traffic looks
like this: long calm stretches, then bursts. ``mmpp_rates`` samples the state path and
returns the mean intensity over each second, the ``rate`` column of a trace CSV (a
replay then draws its own arrivals from it, Poisson or evenly spaced).

The shipped ``traces/mmpp_example.csv`` was made by (reproducible, seed fixed)::

    python -m kservebench.loadgen.mmpp --out loadgen/traces/mmpp_example.csv
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Calm at 5 req/s for ~60 s on average, bursts of 40 req/s lasting ~15 s.
DEFAULT_STATE_RATES = (5.0, 40.0)
DEFAULT_MEAN_SOJOURN_S = (60.0, 15.0)


def mmpp_rates(
    state_rates: Sequence[float] = DEFAULT_STATE_RATES,
    mean_sojourn_s: Sequence[float] = DEFAULT_MEAN_SOJOURN_S,
    duration_s: int = 300,
    seed: int = 7,
) -> np.ndarray:
    """Per-second mean rates of an MMPP whose states are visited in cyclic order.

    With two states (the usual bursty model) cyclic order is the only order; with more
    it is a simple, documented choice (calm -> busier -> ... -> calm).
    """
    if len(state_rates) != len(mean_sojourn_s) or not state_rates:
        raise ValueError("state_rates and mean_sojourn_s need the same, non-zero length")
    rng = np.random.default_rng(seed)
    rates = np.zeros(duration_s)
    t, state = 0.0, 0
    while t < duration_s:
        stay = rng.exponential(mean_sojourn_s[state])
        end = min(t + stay, float(duration_s))
        # Spread this sojourn's intensity over the seconds it covers.
        second = int(t)
        while second < end:
            overlap = min(end, second + 1) - max(t, second)
            rates[second] += state_rates[state] * overlap
            second += 1
        t = end
        state = (state + 1) % len(state_rates)
    return rates


def write_trace(path: Path, rates: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["second,rate"] + [f"{i},{r:.4f}" for i, r in enumerate(rates)]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write an MMPP rate trace (CSV).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duration", type=int, default=300, help="seconds (rows)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rates", type=float, nargs="+", default=list(DEFAULT_STATE_RATES))
    parser.add_argument(
        "--sojourns",
        type=float,
        nargs="+",
        default=list(DEFAULT_MEAN_SOJOURN_S),
        help="mean seconds spent in each state",
    )
    args = parser.parse_args(argv)
    rates = mmpp_rates(args.rates, args.sojourns, args.duration, args.seed)
    write_trace(args.out, rates)
    mean = float(rates.mean()) if len(rates) else math.nan
    print(f"wrote {args.out}: {len(rates)} s, mean {mean:.1f} req/s, peak {rates.max():.1f}")


if __name__ == "__main__":
    main()
