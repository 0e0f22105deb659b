"""Length distributions of LLM requests: prompt and output token counts, parsed from a spec.

A length distribution is written as a token count (``128``, i.e. fixed) or a mapping:

- ``{type: fixed, tokens: 128}``
- ``{type: uniform, min: 64, max: 512}`` (whole numbers, both ends included)
- ``{type: lognormal, mean: 220, sigma: 0.8}``, ``{type: lognormal, median: 150, sigma: 0.8}``
  or ``{type: lognormal, median: 150, p90: 500}``; optional ``min`` (default 1) and ``max``
  (default none): samples are rounded, then clipped to [min, max]
- ``{type: sharegpt}``: ShareGPT-shaped lengths, generated offline (see ``SHAREGPT``);
  optional ``min``/``max`` narrow the range it is truncated to

``parse_lengths`` reads one; ``SpecFields`` is the spec reader it shares with
``kservebench.loadgen.datasets`` (errors name ``field.key``). Pure: numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

from kservebench.errors import SpecError

LENGTH_TYPES = ("fixed", "uniform", "lognormal", "sharegpt")
ROLES = ("input", "output")
_Z90 = NormalDist().inv_cdf(0.9)
_PHI = NormalDist().cdf

# ShareGPT (ShareGPT_V3_unfiltered_cleaned_split) as vLLM's benchmark loads it: prompts and
# answers under 4 tokens are dropped, prompts over 1024 and pairs over 2048 too. Means from
# published runs: vLLM PR #18566 (`vllm bench serve`, 1000 ShareGPT requests, Llama-3.1
# tokenizer: 229,711 prompt and 203,068 generated tokens, i.e. ~230 / ~203 per request);
# SGLang issue #1268 (300 requests: 74,403 / 61,393, i.e. ~248 / ~205). The spread (sigma)
# is our choice, not a published fit: a long right tail for prompts (short questions,
# some pasted documents), a narrower one for answers. mu is solved so that the truncated
# lognormal's mean is the published mean.
SHAREGPT: dict[str, dict[str, float]] = {
    "input": {"mean": 230.0, "sigma": 1.2, "min": 4, "max": 1024},
    "output": {"mean": 200.0, "sigma": 0.8, "min": 4, "max": 1024},
}


class Lengths:
    """A distribution of whole token counts in [low, high] (high None: unbounded).

    Each kind has ``sample(rng, size)`` (int64 array), ``mean()`` (of the continuous law
    before rounding, for lognormals) and ``as_dict()`` (a spec ``parse_lengths`` reads
    back); ``low_key`` is the spec key that sets ``low``, for error messages."""

    low: int
    high: int | None
    low_key = "min"

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        raise NotImplementedError

    def mean(self) -> float:
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Fixed(Lengths):
    tokens: int

    low = property(lambda self: self.tokens)
    high = property(lambda self: self.tokens)
    low_key = "tokens"

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.full(size, self.tokens, dtype=np.int64)

    def mean(self) -> float:
        return float(self.tokens)

    def as_dict(self) -> dict[str, Any]:
        return {"type": "fixed", "tokens": self.tokens}


@dataclass(frozen=True)
class Uniform(Lengths):
    min: int
    max: int

    low = property(lambda self: self.min)
    high = property(lambda self: self.max)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.integers(self.min, self.max + 1, size=size, dtype=np.int64)

    def mean(self) -> float:
        return (self.min + self.max) / 2

    def as_dict(self) -> dict[str, Any]:
        return {"type": "uniform", "min": self.min, "max": self.max}


def _partial_mean(mu: float, sigma: float, a: float, b: float) -> float:
    """E[X; a < X < b] for X ~ lognormal(mu, sigma) (b may be inf)."""
    shift = mu + sigma * sigma
    upper = 1.0 if math.isinf(b) else _PHI((math.log(b) - shift) / sigma)
    return math.exp(mu + sigma * sigma / 2) * (upper - _PHI((math.log(a) - shift) / sigma))


def _cdf(mu: float, sigma: float, x: float) -> float:
    return 1.0 if math.isinf(x) else _PHI((math.log(x) - mu) / sigma)


@dataclass(frozen=True)
class LogNormal(Lengths):
    """exp(N(mu, sigma)), rounded; clipped to [min, max], or resampled when ``truncate``."""

    mu: float
    sigma: float
    min: int = 1
    max: int | None = None
    truncate: bool = False
    preset: str | None = None  # "sharegpt-input" etc. when made from a preset

    low = property(lambda self: self.min)
    high = property(lambda self: self.max)

    def _bounds(self) -> tuple[float, float]:  # continuous range that rounds into [min, max]
        return self.min - 0.5, math.inf if self.max is None else self.max + 0.5

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        tokens = np.rint(rng.lognormal(self.mu, self.sigma, size)).astype(np.int64)
        high = np.iinfo(np.int64).max if self.max is None else self.max
        if not self.truncate:
            return np.clip(tokens, self.min, high)
        outside = (tokens < self.min) | (tokens > high)
        while outside.any():  # parse_lengths ensures most draws land inside
            tokens[outside] = np.rint(rng.lognormal(self.mu, self.sigma, int(outside.sum())))
            outside = (tokens < self.min) | (tokens > high)
        return tokens

    def mean(self) -> float:
        a, b = self._bounds()
        inside = _partial_mean(self.mu, self.sigma, a, b)
        below, above = _cdf(self.mu, self.sigma, a), 1.0 - _cdf(self.mu, self.sigma, b)
        if self.truncate:
            return inside / (1.0 - below - above)
        return inside + self.min * below + (0.0 if self.max is None else self.max * above)

    def as_dict(self) -> dict[str, Any]:
        if self.preset is not None:
            return {"type": "sharegpt", "min": self.min, "max": self.max}
        spec = {"type": "lognormal", "median": math.exp(self.mu), "sigma": self.sigma}
        return spec | {"min": self.min} | ({} if self.max is None else {"max": self.max})


@lru_cache(maxsize=64)
def fit_truncated_mu(mean: float, sigma: float, low: int, high: int) -> float | None:
    """mu such that lognormal(mu, sigma), rounded and truncated to [low, high], has mean
    ``mean``; None when no mu in a sensible range gets there."""

    def truncated_mean(mu: float) -> float:
        return LogNormal(mu, sigma, low, high, truncate=True).mean()

    lo, hi = math.log(low) - 3 * sigma, math.log(high) + 3 * sigma
    for _ in range(100):  # the truncated mean grows with mu: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if truncated_mean(mid) < mean else (lo, mid)
    mu = (lo + hi) / 2
    return mu if abs(truncated_mean(mu) - mean) <= 1e-6 * mean else None


# --- parsing ---------------------------------------------------------------------------


class SpecFields:
    """Reads one spec mapping; every error names ``field.key`` and the value."""

    def __init__(self, spec: Mapping[str, Any], field: str) -> None:
        self.spec, self.field, self.used = spec, field, {"type"}

    def path(self, key: str) -> str:
        return f"{self.field}.{key}"

    def tokens(self, key: str, default: Any = ...) -> Any:
        """A whole number of tokens >= 1."""
        self.used.add(key)
        value = self.spec.get(key)
        if value is None:
            if default is ...:
                raise SpecError(self.path(key), None, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(self.path(key), value, "expected a whole number of tokens >= 1")
        return value

    def positive(self, key: str) -> float | None:
        """A finite number > 0, or None when absent."""
        self.used.add(key)
        value = self.spec.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(self.path(key), value, "expected a number > 0")
        if not math.isfinite(value) or value <= 0:
            raise SpecError(self.path(key), value, "expected a finite number > 0")
        return float(value)

    def check_unknown(self, kind: str) -> None:
        for key, value in self.spec.items():
            if key not in self.used:
                allowed = ", ".join(sorted(self.used - {"type"}))
                raise SpecError(
                    self.path(str(key)), value, f"unknown field for {kind} (allowed: {allowed})"
                )

    def bounds(self, low_default: int, high_default: int | None) -> tuple[int, int | None]:
        low = self.tokens("min", low_default)
        high = self.tokens("max", high_default)
        if high is not None and high < low:
            raise SpecError(self.path("max"), high, f"must be >= min ({low})")
        return low, high


def _parse_fixed(f: SpecFields, role: str) -> Lengths:
    lengths = Fixed(f.tokens("tokens"))
    f.check_unknown("fixed lengths")
    return lengths


def _parse_uniform(f: SpecFields, role: str) -> Lengths:
    low, high = f.tokens("min"), f.tokens("max")
    if high < low:
        raise SpecError(f.path("max"), high, f"must be >= min ({low})")
    f.check_unknown("uniform lengths")
    return Uniform(low, high)


def _parse_lognormal(f: SpecFields, role: str) -> Lengths:
    mean, median = f.positive("mean"), f.positive("median")
    sigma, p90 = f.positive("sigma"), f.positive("p90")
    low, high = f.bounds(1, None)
    f.check_unknown("lognormal lengths")
    if p90 is not None:
        if median is None or mean is not None or sigma is not None:
            raise SpecError(f.path("p90"), p90, "goes with `median` only (not mean or sigma)")
        if p90 <= median:
            raise SpecError(f.path("p90"), p90, f"must be above the median ({median:g})")
        mu, sigma = math.log(median), math.log(p90 / median) / _Z90
    else:
        if sigma is None:
            raise SpecError(f.path("sigma"), None, "is required (or give median and p90)")
        if (mean is None) == (median is None):
            raise SpecError(f.path("mean"), mean, "give exactly one of `mean` or `median`")
        # The mean of exp(N(mu, sigma)) is exp(mu + sigma^2 / 2).
        mu = math.log(median) if median is not None else math.log(mean) - sigma * sigma / 2
    return LogNormal(mu, sigma, low, high)


def _parse_sharegpt(f: SpecFields, role: str) -> Lengths:
    preset = SHAREGPT[role]
    low, high = f.bounds(int(preset["min"]), int(preset["max"]))
    f.check_unknown("sharegpt lengths")
    if high is None:
        raise SpecError(f.path("max"), None, "is required")
    mu = fit_truncated_mu(preset["mean"], preset["sigma"], int(preset["min"]), int(preset["max"]))
    assert mu is not None, "the SHAREGPT presets must be reachable"
    lengths = LogNormal(mu, preset["sigma"], low, high, truncate=True, preset=f"sharegpt-{role}")
    a, b = lengths._bounds()
    if _cdf(mu, lengths.sigma, b) - _cdf(mu, lengths.sigma, a) < 1e-3:
        raise SpecError(f.field, dict(f.spec), "[min, max] keeps almost no ShareGPT lengths")
    return lengths


_PARSERS = {
    "fixed": _parse_fixed,
    "uniform": _parse_uniform,
    "lognormal": _parse_lognormal,
    "sharegpt": _parse_sharegpt,
}


def parse_lengths(spec: Any, field: str = "lengths", role: str = "input") -> Lengths:
    """A length distribution from a token count or a ``{type: ...}`` mapping.

    ``role`` (input | output) picks the ShareGPT preset; errors name ``field``."""
    if role not in ROLES:
        raise SpecError("role", role, f"expected one of {', '.join(ROLES)}")
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise SpecError(field, spec, "expected a whole number of tokens >= 1")
        return Fixed(spec)
    if not isinstance(spec, Mapping):
        raise SpecError(
            field, spec, "expected a token count or a mapping such as {type: uniform, ...}"
        )
    kind = spec.get("type")
    if kind not in _PARSERS:
        raise SpecError(f"{field}.type", kind, f"expected one of {', '.join(LENGTH_TYPES)}")
    return _PARSERS[kind](SpecFields(spec, field), role)
