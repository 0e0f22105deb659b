"""Traffic patterns: one definition of the offered rate r(t), shared by loadgen and sim.

A pattern is written as a small dict (YAML or built from command-line flags), e.g.
``{"type": "steps", "stages": [{"duration": "30s", "rate": 10}, ...]}``, and parsed by
``parse_pattern`` into a frozen object with ``.name``, ``.duration_s``, ``.rate(t)`` and
``.phase(t)``. ``arrival_offsets`` turns a pattern into the send offsets of an open-loop
run (Poisson or evenly spaced). Everything here is pure: no Locust, no I/O except reading
a trace file named in a spec, so the simulator imports it freely.

Pattern types (fields; durations accept 15s, 2m, 1h or seconds):

- ``constant``: ``rate``, ``duration``
- ``steps``: ``stages`` = list of ``{duration, rate, name?}``
- ``ramp``: ``start_rate``, ``end_rate``, ``duration`` (linear)
- ``spike``: ``baseline``, ``spike_rate``, ``spike_at``, ``spike_duration``, ``duration``
- ``sinusoidal`` (alias ``diurnal``): ``min_rate``, ``max_rate``, ``period``, ``duration``;
  starts at ``min_rate`` (night) and peaks at period/2
- ``on-off``: ``rate``, ``on``, ``off``, and ``cycles`` or ``duration``; the idle phases
  should outlast Knative's stable window plus grace period (60 s + 30 s by default) so the
  revision scales to zero and the next active phase meets cold starts
- ``trace``: ``file`` (CSV with a ``rate`` column, one row per second, or an ``offset_s``
  column of request send offsets) or inline ``rates`` / ``offsets``; optional ``scale``
  (multiplies rates) and ``duration`` (cuts the trace)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kservebench.errors import SpecError, read_yaml
from kservebench.loadgen.arrivals import ARRIVALS, arrival_offsets, midpoint_grid
from kservebench.loadgen.traces import TRACES_DIR, parse_offset, read_trace_csv, resolve_trace_file
from kservebench.loadgen.units import parse_duration, parse_positive_duration, parse_rate

# Re-exported: other stages import these from here (one place to look for patterns).
__all__ = [
    "ARRIVALS",
    "TRACES_DIR",
    "Pattern",
    "arrival_offsets",
    "load_pattern_file",
    "parse_duration",
    "parse_pattern",
    "resolve_trace_file",
]


@dataclass(frozen=True)
class Pattern:
    """Base of every pattern: the offered request rate as a function of time."""

    duration_s: float

    name = "pattern"

    def rate(self, t: float) -> float:  # requests/s at t seconds after the start
        raise NotImplementedError

    def phase(self, t: float) -> str:  # a label for the part of the pattern t falls in
        return self.name

    def breakpoints(self) -> list[float]:
        """Times where rate(t) jumps or changes form (the integrator keeps them exact)."""
        return [0.0, self.duration_s]

    def peak_rate(self) -> float:
        grid = np.union1d(np.linspace(0, self.duration_s, 2001), self.breakpoints())
        return float(max(self.rate(float(t)) for t in grid if t < self.duration_s))

    def expected_requests(self) -> float:
        """The integral of rate(t) over the whole pattern."""
        grid, rates = midpoint_grid(self)
        return float(np.sum(rates * np.diff(grid)))


@dataclass(frozen=True)
class Constant(Pattern):
    rate_rps: float = 0.0
    name = "constant"

    def rate(self, t: float) -> float:
        return self.rate_rps if 0 <= t < self.duration_s else 0.0

    def phase(self, t: float) -> str:
        return "steady"


@dataclass(frozen=True)
class Stage:
    start_s: float
    duration_s: float
    rate_rps: float
    label: str


@dataclass(frozen=True)
class Steps(Pattern):
    stages: tuple[Stage, ...] = ()
    name = "steps"

    def _stage(self, t: float) -> Stage | None:
        for stage in self.stages:
            if stage.start_s <= t < stage.start_s + stage.duration_s:
                return stage
        return None

    def rate(self, t: float) -> float:
        stage = self._stage(t)
        return stage.rate_rps if stage else 0.0

    def phase(self, t: float) -> str:
        stage = self._stage(t)
        return stage.label if stage else (self.stages[-1].label if t >= 0 else "")

    def breakpoints(self) -> list[float]:
        return [s.start_s for s in self.stages] + [self.duration_s]


@dataclass(frozen=True)
class Ramp(Pattern):
    start_rate: float = 0.0
    end_rate: float = 0.0
    name = "ramp"

    def rate(self, t: float) -> float:
        if not 0 <= t < self.duration_s:
            return 0.0
        return self.start_rate + (self.end_rate - self.start_rate) * t / self.duration_s

    def phase(self, t: float) -> str:
        return "ramp"


@dataclass(frozen=True)
class Spike(Pattern):
    baseline: float = 0.0
    spike_rate: float = 0.0
    spike_at_s: float = 0.0
    spike_duration_s: float = 0.0
    name = "spike"

    def _in_spike(self, t: float) -> bool:
        return self.spike_at_s <= t < self.spike_at_s + self.spike_duration_s

    def rate(self, t: float) -> float:
        if not 0 <= t < self.duration_s:
            return 0.0
        return self.spike_rate if self._in_spike(t) else self.baseline

    def phase(self, t: float) -> str:
        return "burst" if self._in_spike(t) else "baseline"

    def breakpoints(self) -> list[float]:
        end = min(self.spike_at_s + self.spike_duration_s, self.duration_s)
        return [0.0, self.spike_at_s, end, self.duration_s]


@dataclass(frozen=True)
class Sinusoidal(Pattern):
    min_rate: float = 0.0
    max_rate: float = 0.0
    period_s: float = 1.0
    name = "sinusoidal"

    def rate(self, t: float) -> float:
        if not 0 <= t < self.duration_s:
            return 0.0
        # Starts at the trough, like a day that starts at night.
        wave = (1 - math.cos(2 * math.pi * t / self.period_s)) / 2
        return self.min_rate + (self.max_rate - self.min_rate) * wave

    def phase(self, t: float) -> str:
        return "rising" if (t % self.period_s) < self.period_s / 2 else "falling"


@dataclass(frozen=True)
class OnOff(Pattern):
    rate_rps: float = 0.0
    on_s: float = 1.0
    off_s: float = 0.0
    name = "on-off"

    def _active(self, t: float) -> bool:
        return (t % (self.on_s + self.off_s)) < self.on_s

    def rate(self, t: float) -> float:
        if not 0 <= t < self.duration_s:
            return 0.0
        return self.rate_rps if self._active(t) else 0.0

    def phase(self, t: float) -> str:
        return "active" if self._active(t) else "idle"

    def breakpoints(self) -> list[float]:
        cycle = self.on_s + self.off_s
        starts = np.arange(0.0, self.duration_s, cycle)
        points = np.concatenate([starts, starts + self.on_s, [self.duration_s]])
        return sorted(float(p) for p in points if p <= self.duration_s)


@dataclass(frozen=True)
class Trace(Pattern):
    """Replay of a recorded load: per-second rates, or exact request offsets."""

    rates_per_s: tuple[float, ...] = ()
    offsets_s: tuple[float, ...] | None = field(default=None)  # exact send offsets
    source: str = ""
    name = "trace"

    def rate(self, t: float) -> float:
        if not 0 <= t < self.duration_s:
            return 0.0
        second = int(t)
        return self.rates_per_s[second] if second < len(self.rates_per_s) else 0.0

    def phase(self, t: float) -> str:
        return "trace"

    def breakpoints(self) -> list[float]:
        return [float(s) for s in range(math.ceil(self.duration_s))] + [self.duration_s]


# --- parsing ---------------------------------------------------------------------------


class _Fields:
    """Reads a spec mapping, naming ``field.key`` in every error; flags unknown keys."""

    def __init__(self, spec: Any, field: str) -> None:
        if not isinstance(spec, Mapping):
            raise SpecError(field, spec, "expected a mapping such as {type: constant, ...}")
        self.spec = dict(spec)
        self.field = field
        self.used = {"type"}

    def path(self, key: str) -> str:
        return f"{self.field}.{key}"

    def get(self, key: str, convert: Callable[[Any, str], Any], default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.spec or self.spec[key] is None:
            if default is ...:
                raise SpecError(self.path(key), None, "is required")
            return default
        return convert(self.spec[key], self.path(key))

    def check_unknown(self, type_name: str) -> None:
        for key in self.spec:
            if key not in self.used:
                allowed = ", ".join(sorted(self.used - {"type"}))
                raise SpecError(
                    self.path(str(key)),
                    self.spec[key],
                    f"unknown field for a {type_name} pattern (allowed: {allowed})",
                )


def _int_count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(field, value, "expected a whole number >= 1")
    return value


def _parse_constant(f: _Fields, base_dir: Path | None) -> Pattern:
    return Constant(
        duration_s=f.get("duration", parse_positive_duration), rate_rps=f.get("rate", parse_rate)
    )


def _parse_steps(f: _Fields, base_dir: Path | None) -> Pattern:
    raw = f.get("stages", lambda v, p: v)
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise SpecError(f.path("stages"), raw, "expected a non-empty list of {duration, rate}")
    stages, start = [], 0.0
    for i, item in enumerate(raw):
        sf = _Fields(item, f"{f.path('stages')}[{i}]")
        sf.used.discard("type")
        duration = sf.get("duration", parse_positive_duration)
        rate = sf.get("rate", parse_rate)
        label = sf.get("name", lambda v, p: str(v), default=f"stage-{i}")
        sf.check_unknown("steps stage")
        stages.append(Stage(start, duration, rate, label))
        start += duration
    return Steps(duration_s=start, stages=tuple(stages))


def _parse_ramp(f: _Fields, base_dir: Path | None) -> Pattern:
    return Ramp(
        duration_s=f.get("duration", parse_positive_duration),
        start_rate=f.get("start_rate", parse_rate),
        end_rate=f.get("end_rate", parse_rate),
    )


def _parse_spike(f: _Fields, base_dir: Path | None) -> Pattern:
    pattern = Spike(
        duration_s=f.get("duration", parse_positive_duration),
        baseline=f.get("baseline", parse_rate),
        spike_rate=f.get("spike_rate", parse_rate),
        spike_at_s=f.get("spike_at", parse_duration),
        spike_duration_s=f.get("spike_duration", parse_positive_duration),
    )
    if pattern.spike_at_s >= pattern.duration_s:
        raise SpecError(f.path("spike_at"), f.spec["spike_at"], "must fall before `duration`")
    return pattern


def _parse_sinusoidal(f: _Fields, base_dir: Path | None) -> Pattern:
    pattern = Sinusoidal(
        duration_s=f.get("duration", parse_positive_duration),
        min_rate=f.get("min_rate", parse_rate),
        max_rate=f.get("max_rate", parse_rate),
        period_s=f.get("period", parse_positive_duration),
    )
    if pattern.max_rate < pattern.min_rate:
        raise SpecError(f.path("max_rate"), f.spec["max_rate"], "must be >= min_rate")
    return pattern


def _parse_on_off(f: _Fields, base_dir: Path | None) -> Pattern:
    rate = f.get("rate", parse_rate)
    on = f.get("on", parse_positive_duration)
    off = f.get("off", parse_duration)
    cycles = f.get("cycles", _int_count, default=None)
    duration = f.get("duration", parse_positive_duration, default=None)
    if (cycles is None) == (duration is None):
        raise SpecError(f.path("cycles"), cycles, "give exactly one of `cycles` or `duration`")
    if duration is None:
        # The last idle phase is kept: it is when the scale-down to zero is observed.
        duration = cycles * (on + off)
    return OnOff(duration_s=duration, rate_rps=rate, on_s=on, off_s=off)


def _float_list(values: Any, field: str, check: Callable[[Any, str], float]) -> tuple[float, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise SpecError(field, values, "expected a list of numbers")
    return tuple(check(v, f"{field}[{i}]") for i, v in enumerate(values))


def _parse_trace(f: _Fields, base_dir: Path | None) -> Pattern:
    file = f.get("file", lambda v, p: resolve_trace_file(v, p, base_dir), default=None)
    rates = f.get("rates", lambda v, p: _float_list(v, p, parse_rate), default=None)
    offsets = f.get("offsets", lambda v, p: _float_list(v, p, parse_offset), default=None)
    scale = f.get("scale", parse_rate, default=1.0)
    cut = f.get("duration", parse_positive_duration, default=None)
    given = [k for k, v in (("file", file), ("rates", rates), ("offsets", offsets)) if v]
    if len(given) != 1:
        raise SpecError(f.path("file"), given, "give exactly one of `file`, `rates`, `offsets`")
    source = "inline"
    if file is not None:
        kind, values = read_trace_csv(file, f.path("file"))
        source = str(file)
        rates, offsets = (values, None) if kind == "rate" else (None, values)
    if offsets is not None:
        if scale != 1.0:
            raise SpecError(f.path("scale"), scale, "only applies to rate traces")
        ordered = np.sort(np.asarray(offsets, dtype=float))
        duration = cut if cut is not None else math.floor(ordered[-1]) + 1.0 if len(ordered) else 0
        ordered = ordered[ordered < duration]
        counts = np.bincount(ordered.astype(int), minlength=math.ceil(duration))
        per_second = tuple(float(c) for c in counts)
        return Trace(duration, per_second, tuple(float(o) for o in ordered), source)
    assert rates is not None
    if not rates:
        raise SpecError(f.path("rates"), rates, "the trace has no rows")
    duration = cut if cut is not None else float(len(rates))
    return Trace(duration, tuple(r * scale for r in rates), None, source)


PARSERS: dict[str, Callable[[_Fields, Path | None], Pattern]] = {
    "constant": _parse_constant,
    "steps": _parse_steps,
    "ramp": _parse_ramp,
    "spike": _parse_spike,
    "sinusoidal": _parse_sinusoidal,
    "diurnal": _parse_sinusoidal,
    "on-off": _parse_on_off,
    "onoff": _parse_on_off,
    "trace": _parse_trace,
}


def parse_pattern(spec: Any, field: str = "pattern", base_dir: Path | None = None) -> Pattern:
    """Validate a pattern spec; ``base_dir`` resolves relative trace files (the YAML's folder)."""
    fields = _Fields(spec, field)
    kind = fields.spec.get("type")
    if kind not in PARSERS:
        raise SpecError(
            fields.path("type"), kind, f"unknown pattern type (one of: {', '.join(PARSERS)})"
        )
    pattern = PARSERS[kind](fields, base_dir)
    fields.check_unknown(kind)
    return pattern


def load_pattern_file(path: Path, field: str = "pattern") -> Pattern:
    """A pattern from a YAML file: the spec itself, or a mapping with a ``pattern`` key."""
    path = Path(path)
    spec = read_yaml(path, "pattern_file")
    if spec is None:
        raise SpecError("pattern_file", str(path), "the file is empty")
    if isinstance(spec, Mapping) and "pattern" in spec and "type" not in spec:
        spec = spec["pattern"]
    return parse_pattern(spec, field, base_dir=path.parent)
