"""Write ``report.html`` (self-contained), ``report.md`` and ``summary.json``.

The content is built once as a list of blocks (headings, text, tables, images) by pure
functions of the summaries; two small renderers turn the blocks into Markdown and HTML,
so both files always say the same thing.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kservebench.analysis import llm, plots, plots_llm, plots_scaling, simcompare, verdict
from kservebench.analysis.fmt import DASH, fmt, pct, prune
from kservebench.analysis.projection import RUN_KEY, Projection, load_projection
from kservebench.analysis.summary import (
    DEFAULT_WINDOW_S,
    RunData,
    jsonable,
    load_run,
    summarize,
)
from kservebench.analysis.tables import (
    KEYS,
    episodes_table,
    latency_cell,
    overview_table,
    pattern_table,
    replicas_table,
    resources_table,
    scaling_table,
)

__all__ = [  # the table builders stay importable from here (the notebook uses them)
    "Block", "blocks", "build_report", "episodes_table", "overview_table", "pattern_table",
    "render_html", "render_markdown", "replicas_table", "resources_table", "scaling_table",
]  # fmt: skip
VERSUS = "versus_measured"  # the projection's comparison with measurement in summary.json


@dataclass
class Block:
    kind: str  # h1 | h2 | h3 | text | warn | table | image
    content: Any
    caption: str = ""


def section(heading: str, table: pd.DataFrame, keys: Sequence[str], level: str = "h3") -> list:
    """A heading and its table, or nothing when no row or column has a value to show."""
    table = prune(table, keys)
    return [Block(level, heading), Block("table", table)] if len(table) else []


def run_sections(s: dict[str, Any], prefix: str = "") -> list[Block]:
    """The per-run tables (measured, or a projection's with ``prefix`` "Simulated")."""

    def name(text: str) -> str:
        return f"{prefix} {text[0].lower()}{text[1:]}" if prefix else text

    out = section(name("Latency and throughput per model and pattern"), pattern_table(s),
                  KEYS["pattern"])  # fmt: skip
    if s.get("replicas_by_pattern"):
        out += section(name("Replicas over time, per pattern"), replicas_table(s), KEYS["replicas"])
    out += section(name("Cold-start episodes"), episodes_table(s), KEYS["episodes"])
    steps = scaling_table(s)
    shown = prune(steps, KEYS["scaling"])
    out += section(name("Autoscaling responsiveness"), shown, KEYS["scaling"])
    if len(shown) and len(steps) > len(shown):
        left = len(steps) - len(shown)
        out.append(Block("text", f"{left} load step{'s' if left > 1 else ''} without any "
                                 "replica change left out."))  # fmt: skip
    out += section(name("Resources and provisioning"), resources_table(s), KEYS["resources"])
    return out


def versus_blocks(comparison: dict[str, Any], image: str | None) -> list[Block]:
    """Measured against simulated, per model, and both trajectories on one plot."""
    if not comparison:
        return []
    out = [
        Block("h3", "Simulation against measurement"),
        Block("text", "Per model over its patterns (first start to last end, each run on its "
                      "own clock); difference = (simulated - measured) / measured."),
    ]  # fmt: skip
    for model, table in simcompare.comparison_tables(comparison):
        out += [Block("text", f"{model}:"), Block("table", table)]
    if image is not None:
        caption = "Ready replicas, measured (solid) vs simulated (dashed)"
        out.append(Block("image", image, caption))
    return out


def projection_blocks(
    projection: dict[str, Any], run_label: str, image: str | None = None
) -> list[Block]:
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
            f"{fmt(summary['requests'])} requests, p95 {latency_cell('p95', summary)} ms, "
            f"SLO attainment {pct(summary['slo_attainment'])}; cold starts "
            f"{colds['count']} (p50 / max {fmt(colds['p50_s'])} / {fmt(colds['max_s'])} s); "
            f"replica-seconds {fmt(summary['replica_seconds'], 0)}.",
        )
    )
    out += versus_blocks(projection.get(VERSUS) or {}, image)
    return out + run_sections(summary, prefix="Simulated")


def verdict_blocks(result: dict[str, Any] | None, summaries: Sequence[dict[str, Any]]) -> list:
    """The runs of different modes judged per model and pattern, and when scale to zero
    pays; nothing unless the report compares at least two modes."""
    if not result:
        return []
    slos = ", ".join(f"{s['label']} {fmt(s['slo_ms'], 0)} ms" for s in summaries)
    out = [
        Block("h2", "Verdict: " + " vs ".join(result["modes"])),
        Block("text", "Per model and pattern, one row per run; the better figure in bold. "
                      "Replica- and CPU-seconds integrate ready replicas and CPU cores (summed "
                      "over pods) over the pattern's window; SLO attainment counts every "
                      f"request, failures as misses (SLO {slos}); p95/p99 are over successful "
                      "requests; the cold-start penalty is the worst episode's waiting p50 "
                      "minus the warm p50 in that window."),
    ]  # fmt: skip
    out += section("Per model and pattern", verdict.verdict_table(result),
                   ("model", "pattern", "mode", "run"))  # fmt: skip
    stz = result.get("scale_to_zero") or {}
    if stz:
        out += [
            Block("h3", "When scale to zero pays"),
            Block("text", "From the measured replica-seconds per second of each mode while "
                          "loaded (R, during patterns) and while idle (I, between them), Knative "
                          "costs less at idle share f when f*I_k + (1-f)*R_k < f*I_h + "
                          "(1-f)*R_h, i.e. f > (R_k - R_h) / ((R_k - R_h) + (I_h - I_k)). The "
                          "idle rates include the scale-down tail of this run's idle gaps."),
            Block("table", verdict.scale_to_zero_table(result)),
        ]  # fmt: skip
        out += [Block("text", e["reading"]) for e in stz.values()]
    return out


def llm_blocks(summary: dict[str, Any] | None, index: int, images: dict[str, bytes]) -> list:
    """A run's LLM serving sections (nothing for a run without streaming records)."""
    keys = ("model", "pattern")
    if not summary or not summary["by_model_pattern"]:
        return []
    out = section("LLM serving: token latency per model and pattern",
                  llm.latency_table(summary), keys)  # fmt: skip
    out.insert(1, Block("text", llm.reading_text(summary)))
    out += section("LLM serving: tokens/s, goodput and SLO attainment",
                   llm.goodput_table(summary), keys)  # fmt: skip
    if not summary["series_models"]:
        return [*out, Block("text", llm.NO_SERIES)]
    out += section("LLM serving: vLLM engine per replica", llm.replicas_table(summary),
                   ("model", "replica"))  # fmt: skip
    for j, model in enumerate(summary["series_models"]):
        if llm_image(index, j) in images:
            caption = f"{model}: KV-cache usage and queue per replica"
            out.append(Block("image", llm_image(index, j), caption))
    return out


def llm_image(run: int, model: int) -> str:
    return f"llm_kv_queue_{run}_{model}"


def _with_projections(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run followed by its projection's summary, where it has one."""
    out: list[dict[str, Any]] = []
    for s in summaries:
        out.append(s)
        projected = (s.get(RUN_KEY) or {}).get("summary")
        if projected is not None:
            out.append(projected)
    return out


def _notes(s: dict[str, Any]) -> list[Block]:
    out = []
    if s["simulated"]:
        out.append(Block("warn", f"{s['label']}: SIMULATED run — numbers come from the "
                                 "discrete-event simulator, not from real servers."))  # fmt: skip
    if s.get("target") == "local" and s.get("replicas"):
        if str(s["replicas"]).startswith("fixed"):
            what = ("The measured numbers show the data plane only; what the autoscaler "
                    "would do comes from the simulated projection.")  # fmt: skip
        else:
            what = ("Replica trajectories, cold starts and CPU were measured on the local "
                    "control plane.")  # fmt: skip
        out.append(Block("warn", f"{s['label']}: replicas {s['replicas']}. {what}"))
    if s["missing_families"]:
        out.append(Block("warn", f"{s['label']}: missing metric families: "
                                 f"{', '.join(s['missing_families'])} "
                                 "(the sections that need them are left out)."))  # fmt: skip
    return out


def blocks(
    summaries: Sequence[dict[str, Any]],
    images: dict[str, bytes],
    result: dict[str, Any] | None = None,
) -> list[Block]:
    """The whole report; ``result`` is ``verdict.verdict`` of the runs (None: no verdict)."""
    title = "kservebench report" + (" — comparison" if len(summaries) > 1 else "")
    out = [Block("h1", title)]
    for s in summaries:
        out += _notes(s)
    out += section("Overview", overview_table(_with_projections(summaries)), KEYS["overview"],
                   "h2")  # fmt: skip
    out += verdict_blocks(result, summaries)
    for name, (caption, _) in plots.PLOTS.items():
        if name in images:
            out += [Block("h2", caption), Block("image", name, caption)]
    for i, s in enumerate(summaries):
        out.append(Block("h2", f"Run {s['label']}"))
        out.append(
            Block(
                "text",
                f"Folder `{s['path']}`, kind {s.get('kind') or DASH}, target "
                f"{s.get('target') or DASH}, status {s.get('status') or DASH}, "
                f"{fmt(s['window']['duration_s'])} s.",
            )
        )
        out += run_sections(s)
        out += llm_blocks(s.get("llm"), i, images)
        sources = (s.get("collection") or {}).get("sources") or {}
        if sources:
            text = ", ".join(f"{k} ← {v}" for k, v in sorted(sources.items()))
            out += [Block("h3", "Series sources"), Block("text", text)]
        if s.get(RUN_KEY):
            image = versus_image(i)
            out += projection_blocks(s[RUN_KEY], s["label"], image if image in images else None)
    return out


def versus_image(index: int) -> str:
    return f"versus_measured_{index}"


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


BOLD = re.compile(r"\*\*(.+?)\*\*")


def render_html(content: list[Block], images: dict[str, bytes]) -> str:
    parts = []
    for b in content:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "warn":
            parts.append(f'<p class="warn">{html.escape(b.content)}</p>')
        elif b.kind == "table":
            table = b.content.to_html(index=False, border=0, escape=True)
            parts.append(BOLD.sub(r"<b>\1</b>", table))  # the markdown's **best** cells
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
    plotted: list[tuple[RunData, dict[str, Any], bool]] = []  # each run, then its projection
    images: dict[str, bytes] = {}
    for i, d in enumerate(dirs):
        say(f"loading {d}")
        runs.append(load_run(Path(d)))
        say(f"computing metrics for {d}")
        summaries.append(summarize(runs[-1], slo_ms, window_s, rps_per_replica))
        plotted.append((runs[-1], summaries[-1], False))
        served = llm.summarize(runs[-1])
        if served is not None:
            summaries[-1]["llm"] = served
            start = summaries[-1]["window"]["start_s"]
            for j, png in enumerate(plots_llm.kv_queue_plots(runs[-1], start).values()):
                images[llm_image(i, j)] = png
        slo = slo_ms or summaries[-1]["slo_ms"]
        projection: Projection | None = load_projection(runs[-1], slo, window_s, rps_per_replica)
        if projection is None:
            continue
        summaries[-1][RUN_KEY] = projection.as_dict()
        if projection.data is not None and projection.summary is not None:
            plotted.append((projection.data, projection.summary, True))
            if simcompare.has_live_replicas(runs[-1]):
                say(f"comparing {d} with its simulated projection")
                summaries[-1][RUN_KEY][VERSUS] = simcompare.compare_projection(
                    runs[-1], projection.data, slo
                )
                png = plots_scaling.projection_overlay(runs[-1], projection.data)
                if png is not None:
                    images[versus_image(i)] = png
    say("judging the modes")
    result = verdict.verdict([(r, s["slo_ms"]) for r, s in zip(runs, summaries, strict=True)])
    inputs = [plots.prepare(r, s, window_s, projection=p) for r, s, p in plotted]
    for name, (_, build) in plots.PLOTS.items():
        say(f"plotting {name}")
        png = build(inputs)
        if png is not None:
            images[name] = png
    say(f"writing {out}")
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        (out / "plots" / f"{name}.png").write_bytes(png)
    content = blocks(summaries, images, result)
    written = {
        "html": out / "report.html",
        "md": out / "report.md",
        "json": out / "summary.json",
    }
    written["md"].write_text(render_markdown(content))
    written["html"].write_text(render_html(content, images))
    payload: Any = summaries[0] if len(summaries) == 1 else {"runs": summaries}
    if result is not None:
        payload["verdict"] = result
    written["json"].write_text(json.dumps(jsonable(payload), indent=2, allow_nan=False))
    return written
