"""The timeline of one simulated deployment: the bench's plan as segments of traffic.

Pure. The bench's own plan (``kservebench.bench.plan``) is the one definition of the
order, the warm-up traffic, the cooldowns and the arrivals' seeds; this module reads it
as the start times and patterns the simulator's arrivals need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kservebench.bench.plan import arrival_seed, plan_phases, warmup_pattern
from kservebench.loadgen.patterns import Pattern, parse_pattern

WARMUP = "warmup"  # the warm-up's requests shape the autoscaler but are not recorded


@dataclass(frozen=True)
class Segment:
    label: str  # the records' ``pattern`` column (PatternSpec.label), or WARMUP
    pattern: Pattern
    start_s: float  # from the model's timeline start
    seed: int = 0  # of its arrivals: the bench's (plan.arrival_seed), so the traffic is the same


def plan_segments(experiment: Any, repetition: int = 0) -> list[Segment]:
    """Warm-up and patterns of one model in one repetition, with their start times (pure).

    The bench's own plan (``kservebench.bench.plan``) decides the order, the warm-up
    traffic, the cooldowns and the arrivals' seeds, so a simulated deployment sees what a
    measured one does. Every model runs the same plan; the first one's phases are its
    timeline.
    """
    phases = [p for p in plan_phases(experiment) if p.repetition == repetition]
    first = phases[0]
    segments: list[Segment] = []
    start = 0.0
    for phase in phases:
        if (phase.model.name, phase.repetition) != (first.model.name, first.repetition):
            break  # the next deployment: the same plan again
        if phase.kind == "warmup":
            warm = parse_pattern(warmup_pattern(experiment), "warmup")
            segments.append(Segment(WARMUP, warm, start, arrival_seed(phase)))
        elif phase.kind == "load" and phase.pattern is not None:
            pattern = parse_pattern(phase.pattern.spec, f"patterns[{phase.pattern.index}]")
            segments.append(Segment(phase.pattern.label, pattern, start, arrival_seed(phase)))
        start += phase.duration_s  # cooldowns only move the clock
    return segments
