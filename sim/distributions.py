"""Random durations: service times of requests and cold starts of replicas.

Either measured (an empirical distribution resampled from observed values) or parametric
(constant, exponential, lognormal). All draw in bulk with numpy: the simulator draws every
service time of a run up front rather than one Python call per request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kservebench.errors import SpecError


class Distribution(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray: ...

    @property
    def mean(self) -> float: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Constant:
    value: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=float)

    @property
    def mean(self) -> float:
        return self.value

    def describe(self) -> dict[str, Any]:
        return {"kind": "constant", "value": self.value}


@dataclass(frozen=True)
class Exponential:
    mean_value: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean_value, n)

    @property
    def mean(self) -> float:
        return self.mean_value

    def describe(self) -> dict[str, Any]:
        return {"kind": "exponential", "mean": self.mean_value}


@dataclass(frozen=True)
class LogNormal:
    """Parameterised by its median and the sigma of log(value): latencies' usual shape."""

    median: float
    sigma: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(math.log(self.median), self.sigma, n)

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)

    def describe(self) -> dict[str, Any]:
        return {"kind": "lognormal", "median": self.median, "sigma": self.sigma}


@dataclass(frozen=True)
class Empirical:
    """Resamples observed values (a bootstrap): keeps the measured tail as it was."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Any) -> Empirical:
        array = np.asarray(values, dtype=float)
        array = array[np.isfinite(array) & (array >= 0)]
        if array.size == 0:
            raise ValueError("an empirical distribution needs at least one finite value")
        return cls(tuple(float(v) for v in np.sort(array)))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(np.asarray(self.values), size=n, replace=True)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    def describe(self) -> dict[str, Any]:
        values = np.asarray(self.values)
        return {
            "kind": "empirical",
            "n": int(values.size),
            "mean": float(values.mean()),
            "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)),
            "p99": float(np.percentile(values, 99)),
        }


class Replay:
    """Hands out observed values in the order they were observed, then again from the
    first: a projection calibrated from a run meets that run's cold starts in order (a
    slow first start on a busy machine stays the first), not a shuffled bootstrap. Its
    position is its own state, not the random generator's."""

    def __init__(self, values: Any) -> None:
        array = np.asarray(values, dtype=float)
        array = array[np.isfinite(array) & (array >= 0)]
        if array.size == 0:
            raise ValueError("a replay needs at least one finite value")
        self.values = tuple(float(v) for v in array)
        self._next = 0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        picks = [(self._next + i) % len(self.values) for i in range(n)]
        self._next = (self._next + n) % len(self.values)
        return np.array([self.values[i] for i in picks])

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    def describe(self) -> dict[str, Any]:
        return {**Empirical.of(self.values).describe(), "kind": "replay (in measured order)"}


def parse_distribution(value: Any, where: str, scale: float = 1.0) -> Distribution:
    """A distribution from a spec value; numbers are in the spec's unit times ``scale``.

    ``12`` is a constant; ``{kind: exponential, mean: 12}``, ``{kind: lognormal,
    median: 10, sigma: 0.3}``, ``{kind: constant, value: 12}`` name a family.
    """
    if isinstance(value, bool):
        raise SpecError(where, value, "must be a number or a distribution mapping")
    if isinstance(value, int | float):
        if value <= 0:
            raise SpecError(where, value, "must be > 0")
        return Constant(float(value) * scale)
    if not isinstance(value, dict):
        raise SpecError(where, value, "must be a number or a distribution mapping")
    kind = value.get("kind")
    fields = {"constant": ("value",), "exponential": ("mean",), "lognormal": ("median", "sigma")}
    if kind not in fields:
        raise SpecError(f"{where}.kind", kind, f"must be one of {', '.join(fields)}")
    numbers = []
    for name in fields[kind]:
        number = value.get(name)
        if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
            raise SpecError(f"{where}.{name}", number, "must be a number > 0")
        numbers.append(float(number))
    if kind == "constant":
        return Constant(numbers[0] * scale)
    if kind == "exponential":
        return Exponential(numbers[0] * scale)
    return LogNormal(numbers[0] * scale, numbers[1])
