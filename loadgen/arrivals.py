"""Open-loop send times from a pattern's rate(t): Poisson or evenly spaced.

Works on any object with ``duration_s``, ``rate(t)`` and ``breakpoints()`` (the
patterns of ``patterns.py``); a trace of recorded offsets (``offsets_s``) is replayed
as is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kservebench.errors import SpecError

ARRIVALS = ("poisson", "constant")


def midpoint_grid(pattern: Any, max_points: int = 400_000) -> tuple[np.ndarray, np.ndarray]:
    """A time grid containing every breakpoint, and the rate at each interval's midpoint.

    The midpoint rule is exact for piecewise constant and linear rates (all but the
    sinusoid) as long as every jump is a grid point; the sinusoid's error is O(step^2).
    """
    duration = pattern.duration_s
    step = max(0.01, duration / max_points)
    grid = np.union1d(np.arange(0.0, duration, step), pattern.breakpoints())
    grid = grid[(grid >= 0) & (grid <= duration)]
    if grid[-1] < duration:
        grid = np.append(grid, duration)
    mids = (grid[:-1] + grid[1:]) / 2
    rates = np.fromiter((pattern.rate(float(t)) for t in mids), dtype=float, count=len(mids))
    return grid, rates


def _invert_cumulative(pattern: Any, targets: np.ndarray) -> np.ndarray:
    """Times t where the cumulative rate Lambda(t) reaches each target (time rescaling)."""
    grid, rates = midpoint_grid(pattern)
    cumulative = np.concatenate([[0.0], np.cumsum(rates * np.diff(grid))])
    targets = targets[targets < cumulative[-1]]
    # First grid point whose cumulative reaches the target; the interval before it has
    # a positive rate, so the division below is safe.
    index = np.searchsorted(cumulative, targets, side="left")
    index = np.clip(index, 1, len(grid) - 1)
    left = index - 1
    return grid[left] + (targets - cumulative[left]) / rates[left]


def arrival_offsets(pattern: Any, arrival: str, seed: int = 0) -> np.ndarray:
    """Open-loop send offsets (seconds from the start, sorted) for ``pattern``.

    ``poisson``: a non-homogeneous Poisson process with intensity rate(t), by time
    rescaling (unit-rate exponential gaps mapped through the inverse of the integrated
    rate). ``constant``: deterministic spacing, the k-th request where the integrated
    rate reaches k + 1/2. A trace of exact offsets is replayed as recorded.
    """
    if arrival not in ARRIVALS:
        raise SpecError("arrival", arrival, f"open-loop arrivals are one of {ARRIVALS}")
    recorded = getattr(pattern, "offsets_s", None)
    if recorded is not None:
        return np.asarray(recorded, dtype=float)
    grid, rates = midpoint_grid(pattern)
    total = float(np.sum(rates * np.diff(grid)))
    if arrival == "constant":
        targets = np.arange(0.5, total, 1.0)
    else:
        rng = np.random.default_rng(seed)
        # Draw comfortably more gaps than needed, then keep those inside the pattern.
        count = int(total + 10 * math.sqrt(total) + 20)
        targets = np.cumsum(rng.exponential(1.0, size=count))
        while targets[-1] < total:
            more = np.cumsum(rng.exponential(1.0, size=count)) + targets[-1]
            targets = np.concatenate([targets, more])
    return _invert_cumulative(pattern, targets)
