"""Write ``report.html`` (self-contained), ``report.md`` and ``summary.json``.

The content is built once as a list of blocks (headings, text, tables, images) by pure
functions of the summaries; two small renderers turn the blocks into Markdown and HTML,
so both files always say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from kservebench.analysis import plots
from kservebench.analysis.projection import RUN_KEY, Projection, load_projection
from kservebench.analysis.summary import (
    DEFAULT_WINDOW_S,
    RunData,
    jsonable,
    load_run,
    summarize,
)


@dataclass
class Block:
    kind: str  # h1 | h2 | h3 | text | warn | table | image
    content: Any
    caption: str = ""


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _pct(value: Any) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value * 100:.2f}%"


def _latency_cell(key: str, summary: dict[str, Any]) -> str:
    return _fmt(summary["latency_ms"][key])


def overview_table(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One column per run, one row per headline metric."""
    rows: dict[str, Callable[[dict[str, Any]], str]] = {
        "kind": lambda s: str(s.get("kind") or "–") + (" (SIMULATED)" if s["simulated"] else ""),
        "requests": lambda s: _fmt(s["requests"]),
        **{
            f"latency {k} (ms)": partial(_latency_cell, k)
            for k in ("p50", "p90", "p95", "p99", "max")
        },
        "throughput (req/s)": lambda s: _fmt(s["throughput_rps"], 2),
        "error rate": lambda s: _pct(s["error_rate"]),
        "SLO attainment": lambda s: f"{_pct(s['slo_attainment'])} within {_fmt(s['slo_ms'], 0)} ms",
        "server p95 (ms)": lambda s: (
            ", ".join(
                f"{m or 'all'} {_fmt(v['p95'], 2)}" for m, v in s["server_latency_ms"].items()
            )
            or "–"
        ),
        "cold starts": lambda s: str(s["cold_starts"]["count"]),
        "cold start p50 / max (s)": lambda s: (
            f"{_fmt(s['cold_starts']['p50_s'])} / {_fmt(s['cold_starts']['max_s'])}"
        ),
        "replica-seconds": lambda s: _fmt(s["replica_seconds"], 0),
        "CPU-seconds per 1k requests": lambda s: _fmt(s["cpu_seconds_per_1k"], 2),
    }
    data = {s["label"]: [fn(s) for fn in rows.values()] for s in summaries}
    return pd.DataFrame(data, index=list(rows)).rename_axis("metric").reset_index()


def pattern_table(summary: dict[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame(summary["by_model_pattern"])
    if table.empty:
        return table
    out = table[["model", "pattern", "requests"]].copy()
    for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"):
        out[key] = table[key].map(_fmt)
    out["throughput_rps"] = table["throughput_rps"].map(lambda v: _fmt(v, 2))
    out["error_rate"] = table["error_rate"].map(_pct)
    out["slo_attainment"] = table["slo_attainment"].map(_pct)
    return out


def episodes_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    start = summary["window"]["start_s"]
    for e in summary["cold_starts"]["episodes"]:
        phases = ", ".join(f"{k} {_fmt(v)}" for k, v in e["phases_s"].items() if k != "pod")
        rows.append(
            {
                "model": e["model"],
                "at (s)": _fmt(e["first_waiting_s"] - start),
                "length (s)": _fmt(e["length_s"], 2),
                "waiting requests": e["waiting_requests"],
                "cold p50 (ms)": _fmt(e["cold_p50_ms"]),
                "warm p50 (ms)": _fmt(e["warm_p50_ms"]),
                "penalty (ms)": _fmt(e["penalty_ms"]),
                "pod phases (s)": phases or "–",
            }
        )
    return pd.DataFrame(rows)


def scaling_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    start = summary["window"]["start_s"]
    for model, steps in summary["responsiveness"].items():
        for step in steps:
            rows.append(
                {
                    "model": model or "all",
                    "load step at (s)": _fmt(step["step_s"] - start),
                    "replicas before": _fmt(step["replicas_before"], 0),
                    "first change after (s)": _fmt(step["first_change_s"]),
                    "settled after (s)": _fmt(step["settled_s"]),
                    "settled replicas": _fmt(step["settled_replicas"], 0),
                }
            )
    return pd.DataFrame(rows)


def resources_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for model, u in summary["utilization"].items():
        p = summary["provisioning"].get(model, {})
        rows.append(
            {
                "model": model or "all",
                "CPU cores mean / p95": f"{_fmt(u['cpu_cores_mean'], 3)} / "
                f"{_fmt(u['cpu_cores_p95'], 3)}",
                "CPU requested": _fmt(u["cpu_requested_cores"], 2),
                "memory MiB mean / max": f"{_fmt(u['memory_bytes_mean'] / 2**20)} / "
                f"{_fmt(u['memory_bytes_max'] / 2**20)}",
                "CPU-s per 1k req": _fmt(u["cpu_seconds_per_1k"], 2),
                "replica-s": _fmt(p.get("replica_seconds"), 0),
                "over / under replica-s": f"{_fmt(p.get('over_replica_seconds'), 0)} / "
                f"{_fmt(p.get('under_replica_seconds'), 0)}",
            }
        )
    return pd.DataFrame(rows)


def replicas_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Replicas over time, per model and pattern (a projection's ``replicas_by_pattern``)."""
    rows = []
    start = summary["window"]["start_s"]
    for r in summary.get("replicas_by_pattern") or []:
        rows.append(
            {
                "model": r["model"],
                "pattern": r["pattern"],
                "from / to (s)": f"{_fmt(r['from_s'] - start, 0)} / {_fmt(r['to_s'] - start, 0)}",
                "replicas mean": _fmt(r["replicas_mean"], 2),
                "min / max": f"{_fmt(r['replicas_min'], 0)} / {_fmt(r['replicas_max'], 0)}",
                "most desired": _fmt(r["desired_max"], 0),
                "replica-s": _fmt(r["replica_seconds"], 0),
            }
        )
    return pd.DataFrame(rows)


def projection_blocks(projection: dict[str, Any], run_label: str) -> list[Block]:
    """A run's simulated projection beside its measured sections, labelled as simulated;
    a missing one says so (the measured sections stand on their own)."""
    title = projection["title"]
    out = [Block("h2", f"{title} — {run_label}")]
    summary = projection.get("summary")
    if projection.get("error") or summary is None:
        reason = projection.get("error") or "its folder was not found"
        out.append(
            Block("warn", f"{title}: missing ({reason}). The measured results above are complete.")
        )
        return out
    plane = projection.get("control_plane") or projection.get("mode") or "the autoscaler"
    out.append(
        Block(
            "warn",
            f"SIMULATED, not measured: the discrete-event simulator's {plane} control plane "
            "playing this experiment's traffic, with the service times and cold starts "
            f"measured in this run (folder `{projection.get('folder', '')}`).",
        )
    )
    colds = summary["cold_starts"]
    out.append(
        Block(
            "text",
            f"{_fmt(summary['requests'])} requests, p95 {_latency_cell('p95', summary)} ms, "
            f"SLO attainment {_pct(summary['slo_attainment'])}; cold starts "
            f"{colds['count']} (p50 / max {_fmt(colds['p50_s'])} / {_fmt(colds['max_s'])} s); "
            f"replica-seconds {_fmt(summary['replica_seconds'], 0)}.",
        )
    )
    for heading, table in (
        ("Simulated latency and throughput per model and pattern", pattern_table(summary)),
        ("Simulated replicas over time, per pattern", replicas_table(summary)),
        ("Simulated cold-start episodes", episodes_table(summary)),
        ("Simulated resources and provisioning", resources_table(summary)),
    ):
        out.append(Block("h3", heading))
        out.append(Block("table", table) if len(table) else Block("text", "none"))
    return out


def _with_projections(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run followed by its projection's summary, where it has one."""
    out: list[dict[str, Any]] = []
    for s in summaries:
        out.append(s)
        projected = (s.get(RUN_KEY) or {}).get("summary")
        if projected is not None:
            out.append(projected)
    return out


def blocks(summaries: Sequence[dict[str, Any]], images: dict[str, bytes]) -> list[Block]:
    title = "kservebench report" + (" — comparison" if len(summaries) > 1 else "")
    out = [Block("h1", title)]
    for s in summaries:
        if s["simulated"]:
            out.append(
                Block(
                    "warn",
                    f"{s['label']}: SIMULATED run — numbers come from the "
                    "discrete-event simulator, not from real servers.",
                )
            )
        if s.get("target") == "local" and s.get("replicas"):
            out.append(
                Block(
                    "warn",
                    f"{s['label']}: replicas {s['replicas']}. The measured numbers show "
                    "the data plane only; what the autoscaler would do comes from the "
                    "simulated projection.",
                )
            )
        if s["missing_families"]:
            out.append(
                Block(
                    "warn",
                    f"{s['label']}: missing metric families: "
                    f"{', '.join(s['missing_families'])} "
                    "(the sections that need them are left out).",
                )
            )
    out += [Block("h2", "Overview"), Block("table", overview_table(_with_projections(summaries)))]
    for name, (caption, _) in plots.PLOTS.items():
        if name in images:
            out += [Block("h2", caption), Block("image", name, caption)]
    for s in summaries:
        out.append(Block("h2", f"Run {s['label']}"))
        out.append(
            Block(
                "text",
                f"Folder `{s['path']}`, kind {s.get('kind') or '–'}, target "
                f"{s.get('target') or '–'}, status {s.get('status') or '–'}, "
                f"{_fmt(s['window']['duration_s'])} s.",
            )
        )
        for heading, table in (
            ("Latency and throughput per model and pattern", pattern_table(s)),
            ("Cold-start episodes", episodes_table(s)),
            ("Autoscaling responsiveness", scaling_table(s)),
            ("Resources and provisioning", resources_table(s)),
        ):
            out.append(Block("h3", heading))
            out.append(Block("table", table) if len(table) else Block("text", "none"))
        sources = (s.get("collection") or {}).get("sources") or {}
        if sources:
            text = ", ".join(f"{k} ← {v}" for k, v in sorted(sources.items()))
            out += [Block("h3", "Series sources"), Block("text", text)]
        if s.get(RUN_KEY):
            out += projection_blocks(s[RUN_KEY], s["label"])
    return out


def _md_table(frame: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def render_markdown(content: list[Block]) -> str:
    parts = []
    for b in content:
        if b.kind in ("h1", "h2", "h3"):
            parts.append("#" * int(b.kind[1]) + " " + b.content)
        elif b.kind == "warn":
            parts.append(f"> **Note:** {b.content}")
        elif b.kind == "table":
            parts.append(_md_table(b.content))
        elif b.kind == "image":
            parts.append(f"![{b.caption}](plots/{b.content}.png)")
        else:
            parts.append(b.content)
    return "\n\n".join(parts) + "\n"


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}.warn{background:#fff3cd;
border:1px solid #e0c060;padding:.5em 1em}img{max-width:100%}"""


def render_html(content: list[Block], images: dict[str, bytes]) -> str:
    parts = []
    for b in content:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "warn":
            parts.append(f'<p class="warn">{html.escape(b.content)}</p>')
        elif b.kind == "table":
            parts.append(b.content.to_html(index=False, border=0, escape=True))
        elif b.kind == "image":
            data = base64.b64encode(images[b.content]).decode("ascii")
            parts.append(f'<img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">')
        else:
            parts.append(f"<p>{html.escape(b.content)}</p>")
    title = html.escape(content[0].content if content else "report")
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def default_out(dirs: Sequence[Path]) -> Path:
    return Path(dirs[0]) / "report" if len(dirs) == 1 else Path("report-compare")


def build_report(
    dirs: Sequence[Path],
    out: Path | None = None,
    slo_ms: float | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    rps_per_replica: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Load, summarize, plot and write; returns the paths written."""
    say = progress or (lambda _msg: None)
    out = Path(out) if out else default_out(dirs)
    runs: list[RunData] = []
    summaries: list[dict[str, Any]] = []
    plotted: list[tuple[RunData, dict[str, Any]]] = []  # each run, then its projection
    for d in dirs:
        say(f"loading {d}")
        runs.append(load_run(Path(d)))
        say(f"computing metrics for {d}")
        summaries.append(summarize(runs[-1], slo_ms, window_s, rps_per_replica))
        plotted.append((runs[-1], summaries[-1]))
        projection: Projection | None = load_projection(
            runs[-1], slo_ms or summaries[-1]["slo_ms"], window_s, rps_per_replica
        )
        if projection is not None:
            summaries[-1][RUN_KEY] = projection.as_dict()
            if projection.data is not None and projection.summary is not None:
                plotted.append((projection.data, projection.summary))
    inputs = [plots.prepare(r, s, window_s) for r, s in plotted]
    images: dict[str, bytes] = {}
    for name, (_, build) in plots.PLOTS.items():
        say(f"plotting {name}")
        png = build(inputs)
        if png is not None:
            images[name] = png
    say(f"writing {out}")
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        (out / "plots" / f"{name}.png").write_bytes(png)
    content = blocks(summaries, images)
    written = {
        "html": out / "report.html",
        "md": out / "report.md",
        "json": out / "summary.json",
    }
    written["md"].write_text(render_markdown(content))
    written["html"].write_text(render_html(content, images))
    payload: Any = summaries[0] if len(summaries) == 1 else {"runs": summaries}
    written["json"].write_text(json.dumps(jsonable(payload), indent=2, allow_nan=False))
    return written
