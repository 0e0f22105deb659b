"""An experiment as a plan: the ordered phases a run goes through, and where each writes.

Pure: the runner walks this list, the progress display sums its durations for the time
left, and the tests check the order without starting anything. For every repetition and
model: warm-up traffic (kept out of the results), then each pattern with an idle
cooldown between patterns (Knative's scale-down window on a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from kservebench.bench.spec import Experiment, ModelRef, PatternSpec

LOADS_DIR = "loads"
WARMUP_DIR = "warmup"


@dataclass(frozen=True)
class Phase:
    kind: str  # "warmup" | "load" | "cooldown"
    model: ModelRef
    duration_s: float
    repetition: int = 0
    pattern: PatternSpec | None = None

    @property
    def folder(self) -> PurePosixPath | None:
        """Where the phase's load generator writes, relative to the results folder."""
        suffix = f"-rep{self.repetition}" if self.repetition else ""
        if self.kind == "load" and self.pattern is not None:
            return PurePosixPath(LOADS_DIR, self.model.name, f"{self.pattern.label}{suffix}")
        if self.kind == "warmup":
            return PurePosixPath(WARMUP_DIR, f"{self.model.name}{suffix}")
        return None

    @property
    def title(self) -> str:
        what = self.pattern.label if self.pattern is not None else self.kind
        rep = f" (repetition {self.repetition + 1})" if self.repetition else ""
        return f"{self.model.name}: {what}{rep}"


def arrival_seed(phase: Phase) -> int:
    """Seed of a phase's request times: the same pattern gets the same arrivals in every
    experiment and for every model (hpa and knative runs, and the simulated projection,
    see identical traffic); repetitions differ."""
    return 1000 * phase.repetition + (phase.pattern.index if phase.pattern is not None else 999)


def warmup_pattern(experiment: Experiment) -> dict[str, Any]:
    """Warm-up traffic: a constant load at the first pattern's mean rate.

    Enough to load the model, fill caches and JIT paths before the measured patterns,
    at a rate the patterns themselves ask the server to sustain.
    """
    from kservebench.loadgen.patterns import parse_pattern

    first = parse_pattern(experiment.patterns[0].spec, "patterns[0]")
    rate = max(1.0, round(first.expected_requests() / first.duration_s, 2))
    return {"type": "constant", "rate": rate, "duration": f"{experiment.warmup_s:g}s"}


def plan_phases(experiment: Experiment) -> list[Phase]:
    phases: list[Phase] = []
    for repetition in range(experiment.repetitions):
        for model in experiment.models:
            if experiment.warmup_s > 0:
                phases.append(Phase("warmup", model, experiment.warmup_s, repetition))
            for i, pattern in enumerate(experiment.patterns):
                if i and experiment.cooldown_s > 0:
                    phases.append(Phase("cooldown", model, experiment.cooldown_s, repetition))
                phases.append(Phase("load", model, pattern.duration_s, repetition, pattern))
    return phases


def seconds_left(phases: list[Phase], current: int, elapsed_in_current_s: float) -> float:
    """Planned seconds from now to the end of the last phase."""
    rest = sum(p.duration_s for p in phases[current + 1 :])
    return rest + max(0.0, phases[current].duration_s - elapsed_in_current_s)


def planned_seconds(experiment: Experiment) -> float:
    """Seconds of warm-up, traffic and cooldown: the run's length, start-up aside."""
    return sum(p.duration_s for p in plan_phases(experiment))
