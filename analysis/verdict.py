"""HPA or Knative? The figures a user decides on, per model and pattern, side by side.

For every run of a named mode, and every model and pattern it served: what the pattern
cost (replica-seconds and CPU-seconds over the pattern's window, ``windows.py``) and what
it delivered (SLO attainment over every request sent, failures counting as misses; p95 and
p99 of the successful ones; cold starts and their penalty). The better run per figure is
marked. Per model, the idle share of time above which scale to zero pays comes from each
mode's measured cost rates, loaded (patterns) and idle (the gaps between them):

    knative is cheaper when  f*I_k + (1-f)*R_k < f*I_h + (1-f)*R_h
                       i.e.  f > (R_k - R_h) / ((R_k - R_h) + (I_h - I_k))

Pure functions of loaded runs; the report renders the dict ``verdict`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kservebench.analysis import latency, windows
from kservebench.analysis.coldstart import Episode
from kservebench.analysis.fmt import fmt, pct
from kservebench.analysis.series import per_model
from kservebench.analysis.summary import RunData, episodes_of, mode_of

NEVER = "never"
HPA, KNATIVE = "hpa", "knative"
# figure -> (column heading, which way is better; None: context, no winner)
FIGURES: dict[str, tuple[str, str | None]] = {
    "requests": ("requests", None),
    "replica_seconds": ("replica-s", "lower"),
    "cpu_seconds": ("CPU-s", "lower"),
    "slo_attainment": ("SLO attainment", "higher"),
    "p95_ms": ("p95 (ms)", "lower"),
    "p99_ms": ("p99 (ms)", "lower"),
    "cold_starts": ("cold starts", None),
    "cold_penalty_ms": ("cold-start penalty (ms)", "lower"),
}


def pattern_figures(
    data: RunData, slo_ms: float, episodes: Sequence[Episode] | None = None
) -> list[dict[str, Any]]:
    """One row per model and pattern of ``data``: the FIGURES over the pattern's window(s).

    Cold starts count the episodes whose first waiting request fell in the window; the
    penalty is the worst episode's (cold p50 - warm p50), 0 with none. Without a replica
    series no episode could have been seen, so both are unknown (NaN) then."""
    if episodes is None:
        episodes = episodes_of(data)
    spans = windows.pattern_windows(data.records, data.run)
    ready = per_model(data.series.get("replicas_ready"))
    cpu = per_model(data.series.get("cpu_cores"))
    rows = []
    for (model, pattern), group in spans.groupby(["model", "pattern"], sort=True):
        parts = [
            windows.in_window(data.records, model, w.start_s, w.end_s, pattern)
            for w in group.itertuples()
        ]
        recs = pd.concat(parts) if parts else data.records.iloc[0:0]
        ok = recs["ok"].to_numpy(dtype=bool)
        pcts = latency.latency_percentiles(recs["latency_ms"].to_numpy(dtype="float64")[ok])
        mine = [
            e
            for e in episodes
            if e.model == model
            and any(w.start_s <= e.first_waiting_s <= w.end_s for w in group.itertuples())
        ]
        seen = model in ready
        penalties = [e.penalty_ms for e in mine if math.isfinite(e.penalty_ms)]
        rows.append(
            {
                "model": model,
                "pattern": pattern,
                "start_s": float(group["start_s"].min()),
                "duration_s": float((group["end_s"] - group["start_s"]).sum()),
                "requests": len(recs),
                "replica_seconds": _sum_over(ready.get(model), group),
                "cpu_seconds": _sum_over(cpu.get(model), group),
                "slo_attainment": latency.slo_attainment(recs, slo_ms),
                "slo_ms": slo_ms,
                "p95_ms": pcts["p95"],
                "p99_ms": pcts["p99"],
                "cold_starts": len(mine) if seen else math.nan,
                "cold_waiting_requests": sum(e.waiting_requests for e in mine),
                "cold_penalty_ms": (max(penalties) if penalties else 0.0) if seen else math.nan,
            }
        )
    return rows


def _sum_over(frame: pd.DataFrame | None, spans: pd.DataFrame) -> float:
    return float(sum(windows.integral(frame, w.start_s, w.end_s) for w in spans.itertuples()))


def cost_rates(data: RunData) -> dict[str, dict[str, float]]:
    """Per model: replica-seconds per second while its patterns ran (loaded) and in the
    gaps between them (idle), with the seconds each covers. Overlapping patterns count
    their time once."""
    spans = windows.pattern_windows(data.records, data.run)
    idle = windows.idle_windows(spans)
    ready = per_model(data.series.get("replicas_ready"))
    out: dict[str, dict[str, float]] = {}
    for model in sorted(set(spans["model"])):
        loaded = _merged(spans[spans["model"] == model])
        gaps = idle[idle["model"] == model]
        loaded_s = sum(b - a for a, b in loaded)
        idle_s = float((gaps["end_s"] - gaps["start_s"]).sum())
        frame = ready.get(model)
        loaded_rs = sum(windows.integral(frame, a, b) for a, b in loaded)
        idle_rs = sum(windows.integral(frame, a, b) for a, b in gaps[["start_s", "end_s"]].values)
        out[model] = {
            "loaded_s": loaded_s,
            "idle_s": idle_s,
            "loaded_rate": _ratio(loaded_rs, loaded_s),
            "idle_rate": _ratio(idle_rs, idle_s),
        }
    return out


def _merged(spans: pd.DataFrame) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(zip(spans["start_s"], spans["end_s"], strict=True)):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((float(a), float(b)))
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and b > 0 else math.nan


def break_even_idle_fraction(
    r_hpa: float, r_knative: float, i_hpa: float, i_knative: float
) -> float | str:
    """The share of idle time above which Knative costs fewer replica-seconds than HPA.

    ``r_*`` are replica-seconds per second while loaded, ``i_*`` while idle. 0 when
    Knative costs no more either way (and less one way); ``"never"`` when no idle share in
    [0, 1) makes it cheaper; NaN when a rate is unknown."""
    rates = (r_hpa, r_knative, i_hpa, i_knative)
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in rates):
        return math.nan
    extra_loaded = r_knative - r_hpa  # what Knative costs more while loaded
    saved_idle = i_hpa - i_knative  # what it saves while idle
    if extra_loaded <= 0 and saved_idle >= 0 and (extra_loaded < 0 or saved_idle > 0):
        return 0.0
    if extra_loaded > 0 and saved_idle > 0:
        return extra_loaded / (extra_loaded + saved_idle)
    return NEVER


def scale_to_zero(
    rates: dict[str, dict[str, dict[str, float]]], episodes: dict[str, Sequence[Episode]]
) -> dict[str, dict[str, Any]]:
    """Per model served in both modes: each mode's rates, the break-even idle fraction,
    Knative's cold starts (the price) and a sentence saying what it means.

    ``rates`` maps mode -> ``cost_rates`` of that mode's run; ``episodes`` mode -> its
    run's episodes."""
    out: dict[str, dict[str, Any]] = {}
    hpa, knative = rates.get(HPA) or {}, rates.get(KNATIVE) or {}
    for model in sorted(set(hpa) & set(knative)):
        h, k = hpa[model], knative[model]
        fraction = break_even_idle_fraction(
            h["loaded_rate"], k["loaded_rate"], h["idle_rate"], k["idle_rate"]
        )
        colds = [e for e in episodes.get(KNATIVE, ()) if e.model == model]
        penalties = [e.penalty_ms for e in colds if math.isfinite(e.penalty_ms)]
        entry = {
            HPA: h,
            KNATIVE: k,
            "break_even_idle_fraction": fraction,
            "cold_starts": len(colds),
            "cold_waiting_requests": sum(e.waiting_requests for e in colds),
            "cold_penalty_p50_ms": float(np.median(penalties)) if penalties else math.nan,
        }
        entry["reading"] = reading(model, entry)
        out[model] = entry
    return out


def reading(model: str, entry: dict[str, Any]) -> str:
    """What the break-even fraction means for ``model``, and what scale to zero costs."""
    h, k, f = entry[HPA], entry[KNATIVE], entry["break_even_idle_fraction"]
    rates = (
        f"replicas while loaded: HPA {fmt(h['loaded_rate'], 2)}, Knative "
        f"{fmt(k['loaded_rate'], 2)}; while idle: HPA {fmt(h['idle_rate'], 2)}, Knative "
        f"{fmt(k['idle_rate'], 2)}"
    )
    if f == NEVER:
        head = f"{model}: Knative never costs fewer replica-seconds than HPA, at any idle share"
    elif isinstance(f, float) and math.isnan(f):
        return (
            f"{model}: cannot tell when scale to zero pays: a run has no idle gap between "
            f"patterns or no replica series ({rates})."
        )
    elif f == 0:
        head = f"{model}: Knative costs no more replica-seconds than HPA, loaded or idle"
    else:
        head = (
            f"{model}: scale to zero pays once the model is idle more than {pct(f)} of the "
            "time; above that Knative costs fewer replica-seconds than HPA"
        )
    n = entry["cold_starts"]
    price = "no cold start was measured" if not n else (
        f"{n} cold start{'s' if n > 1 else ''}, {entry['cold_waiting_requests']} requests "
        f"waited, p50 penalty {fmt(entry['cold_penalty_p50_ms'])} ms"
    )  # fmt: skip
    return f"{head} ({rates}). The price is the cold-start penalty: {price}."


def verdict(runs: Sequence[tuple[RunData, float]]) -> dict[str, Any] | None:
    """The comparison of runs of different modes (``(run, slo_ms)`` each); None unless at
    least two modes are named. Rows: one per run, model and pattern, with ``better_on``
    listing the figures on which that run did best among the runs of that model/pattern."""
    named = [(data, slo, mode_of(data.run)) for data, slo in runs]
    named = [(d, s, m) for d, s, m in named if m]
    if len({m for _, _, m in named}) < 2:
        return None
    rows: list[dict[str, Any]] = []
    rates: dict[str, dict[str, dict[str, float]]] = {}
    episodes: dict[str, list[Episode]] = {}
    for data, slo, mode in named:
        found = episodes_of(data)
        for row in pattern_figures(data, slo, found):
            rows.append({"mode": mode, "run": data.label, **row})
        if mode not in rates:  # the first run of each mode stands for it
            rates[mode], episodes[mode] = cost_rates(data), found
    _mark_winners(rows)
    return {
        "modes": sorted({m for _, _, m in named}),
        "rows": rows,
        "scale_to_zero": scale_to_zero(rates, episodes),
    }


def _mark_winners(rows: list[dict[str, Any]]) -> None:
    """Add ``better_on`` to each row: the figures where it is strictly best of its group."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        row["better_on"] = []
        groups.setdefault((row["model"], row["pattern"]), []).append(row)
    for group in groups.values():
        if len(group) < 2:
            continue
        for figure, (_, better) in FIGURES.items():
            if better is None:
                continue
            values = [(r[figure], r) for r in group if _finite(r[figure])]
            if len(values) < 2:
                continue
            sign = 1.0 if better == "lower" else -1.0
            values.sort(key=lambda v: sign * v[0])
            if not math.isclose(values[0][0], values[1][0], rel_tol=1e-9, abs_tol=1e-12):
                values[0][1]["better_on"].append(figure)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


CELLS = {
    "requests": lambda v: fmt(v),
    "replica_seconds": lambda v: fmt(v, 0),
    "cpu_seconds": lambda v: fmt(v, 1),
    "slo_attainment": pct,
    "p95_ms": fmt,
    "p99_ms": fmt,
    "cold_starts": lambda v: fmt(v if not _finite(v) else int(v)),
    "cold_penalty_ms": fmt,
}


def verdict_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per model, pattern and run; the best value of each figure in **bold**."""
    rows = []
    for r in sorted(result["rows"], key=lambda r: (r["model"], r["pattern"], r["mode"])):
        row = {"model": r["model"], "pattern": r["pattern"], "mode": r["mode"], "run": r["run"]}
        for figure, (heading, _) in FIGURES.items():
            cell = CELLS[figure](r[figure])
            row[heading] = f"**{cell}**" if figure in r["better_on"] else cell
        rows.append(row)
    return pd.DataFrame(rows)


def scale_to_zero_table(result: dict[str, Any]) -> pd.DataFrame:
    """Per model: loaded and idle replica rates of each mode and the break-even idle share."""
    rows = []
    for model, e in result["scale_to_zero"].items():
        f = e["break_even_idle_fraction"]
        rows.append(
            {
                "model": model,
                "HPA replicas loaded / idle": f"{fmt(e[HPA]['loaded_rate'], 2)} / "
                f"{fmt(e[HPA]['idle_rate'], 2)}",
                "Knative replicas loaded / idle": f"{fmt(e[KNATIVE]['loaded_rate'], 2)} / "
                f"{fmt(e[KNATIVE]['idle_rate'], 2)}",
                "scale to zero pays above idle share": f if f == NEVER else pct(f),
                "cold starts (Knative)": str(e["cold_starts"]),
                "penalty p50 (ms)": fmt(e["cold_penalty_p50_ms"]),
            }
        )
    return pd.DataFrame(rows)
