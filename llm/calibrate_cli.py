"""``kservebench calibrate``: fit the engine model of a variant to a measured vLLM run.

Example::

    kservebench calibrate results/bench-llm-20261204 --variant tiny-llama-cpu \\
        --out calibration.json

``SOURCE`` is a results folder (every ``records.csv`` below it, e.g. ``loads/*/*/``) or one
records file. The server's settings come from, in this order: the flags; ``metrics.txt``
next to the records (a ``/metrics`` dump: ``vllm:cache_config_info`` gives num_gpu_blocks
and block_size); ``run.json`` (a ``vllm`` mapping with the EngineSettings field names, or a
bench spec's ``models[].llm`` with maxNumSeqs, numGpuBlocks, ...); the variant. The gauges
for the fidelity check come from ``--gauges`` or ``gauges.csv`` (columns t_s, running,
waiting) when present. Writes the calibration as JSON (``load_calibration`` reads it back,
``variant_from_calibration`` turns it into a Variant) and prints the fit and the fidelity.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import typer

from kservebench.errors import SpecError
from kservebench.llm.calibrate import TTFT_ROWS, Calibration, calibrate
from kservebench.llm.fidelity import Fidelity, compare, quiet_requests
from kservebench.llm.replay import (
    DECODE_FROM,
    EngineSettings,
    cache_config_from_metrics,
    trace_from_records,
)
from kservebench.llm.variants import Variant, get_variant

app = typer.Typer(add_completion=False, help="Fit the engine model to a measured vLLM run.")

METRICS_FILE = "metrics.txt"
GAUGES_FILE = "gauges.csv"
CAMEL = {
    "num_gpu_blocks": "numGpuBlocks",
    "block_size": "blockSize",
    "max_num_seqs": "maxNumSeqs",
    "max_num_batched_tokens": "maxNumBatchedTokens",
    "max_model_len": "maxModelLen",
}


@app.command()
def calibrate_command(
    source: Path = typer.Argument(..., help="Results folder or one records.csv."),
    variant: str = typer.Option("tiny-llama-cpu", "--variant", help="Variant to calibrate."),
    model: str | None = typer.Option(None, "--model", help="Only records of this model."),
    num_gpu_blocks: int | None = typer.Option(
        None, "--num-gpu-blocks", help="vLLM's num_gpu_blocks (cache_config_info)."
    ),
    block_size: int | None = typer.Option(None, "--block-size", help="KV block size."),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs"),
    max_num_batched_tokens: int | None = typer.Option(None, "--max-num-batched-tokens"),
    max_model_len: int | None = typer.Option(None, "--max-model-len"),
    free: str | None = typer.Option(
        None, "--free", help="Coefficients to fit, comma-separated (default: the variant's)."
    ),
    ttft_rows: str = typer.Option("idle", "--ttft-rows", help="idle|all: TTFT rows fitted."),
    decode_from: str = typer.Option("auto", "--decode-from", help="auto|latency|itl."),
    quiet_only: bool = typer.Option(
        False, "--quiet-only/--all-requests", help="Leave out disturbed busy periods."
    ),
    gauges: Path | None = typer.Option(None, "--gauges", help="CSV: t_s, running, waiting."),
    out: Path | None = typer.Option(None, "--out", help="Write the calibration JSON here."),
) -> None:
    """Fit step coefficients and request overheads; print the fit and its fidelity."""
    try:
        result = run_calibration(
            source,
            variant_name=variant,
            model=model,
            flags={
                "num_gpu_blocks": num_gpu_blocks,
                "block_size": block_size,
                "max_num_seqs": max_num_seqs,
                "max_num_batched_tokens": max_num_batched_tokens,
                "max_model_len": max_model_len,
            },
            free=None if free is None else [f.strip() for f in free.split(",") if f.strip()],
            ttft_rows=ttft_rows,
            decode_from=decode_from,
            quiet_only=quiet_only,
            gauges_path=gauges,
        )
    except SpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    calibration, fidelity, used = result
    document = calibration.to_dict() | {
        "fidelity": fidelity.to_dict(),
        "source": str(source),
        "requests_used": used,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    _print(calibration, fidelity, out)


def run_calibration(
    source: Path,
    variant_name: str = "tiny-llama-cpu",
    model: str | None = None,
    flags: dict[str, int | None] | None = None,
    free: list[str] | None = None,
    ttft_rows: str = "idle",
    decode_from: str = "auto",
    quiet_only: bool = False,
    gauges_path: Path | None = None,
) -> tuple[Calibration, Fidelity, int]:
    """The command without the printing: calibration, fidelity, requests used."""
    from kservebench.records import read_records

    if ttft_rows not in TTFT_ROWS:
        raise SpecError("--ttft-rows", ttft_rows, f"must be one of {', '.join(TTFT_ROWS)}")
    if decode_from not in DECODE_FROM:
        raise SpecError("--decode-from", decode_from, f"must be one of {', '.join(DECODE_FROM)}")
    source = Path(source)
    if not source.exists():
        raise SpecError("SOURCE", str(source), "no such results folder or records file")
    variant = get_variant(variant_name)
    records = _llm_records(read_records(source), model)
    folder = source if source.is_dir() else source.parent
    gauges = _read_gauges(gauges_path or folder / GAUGES_FILE, required=gauges_path is not None)
    if quiet_only:
        records = records[quiet_requests(records, gauges)]
    settings = engine_settings(folder, variant, flags or {})
    trace = trace_from_records(records, decode_from)
    calibration = calibrate(trace, settings, variant, free=free, ttft_rows=ttft_rows)
    fidelity = compare(trace, calibration, calibration.step_time_model(variant), gauges)
    return calibration, fidelity, len(trace)


def _llm_records(records: pd.DataFrame, model: str | None) -> pd.DataFrame:
    if "prompt_tokens" not in records.columns:
        raise SpecError("SOURCE", "records", "holds no streaming LLM records (no prompt_tokens)")
    llm = records[records["prompt_tokens"].notna() | ~records["ok"]]
    if "model" in llm.columns:
        names = sorted({str(m) for m in llm.loc[llm["ok"], "model"] if str(m)})
        if model is not None:
            if model not in names:
                raise SpecError("--model", model, f"no records of it (models: {names})")
            llm = llm[llm["model"] == model]
        elif len(names) > 1:
            raise SpecError("--model", None, f"the records hold several models: {names}")
    return llm


def _read_gauges(path: Path, required: bool) -> pd.DataFrame | None:
    if not path.is_file():
        if required:
            raise SpecError("--gauges", str(path), "no such file")
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise SpecError("--gauges", str(path), f"cannot be read: {err}") from None
    if "rtt_s" in frame.columns:  # a sample that took long has no precise time
        frame = frame[pd.to_numeric(frame["rtt_s"], errors="coerce") < 0.1]
    return frame


def engine_settings(folder: Path, variant: Variant, flags: dict[str, int | None]) -> EngineSettings:
    """Flags, then metrics.txt, then run.json, then the variant (see the module docstring)."""
    values: dict[str, Any] = {}
    run_file = folder / "run.json"
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text())
        except (OSError, ValueError) as err:
            raise SpecError("run.json", str(run_file), f"cannot be read: {err}") from None
        values.update(_settings_from_run(run))
    metrics = folder / METRICS_FILE
    if metrics.is_file():
        labels = cache_config_from_metrics(metrics.read_text())
        for key in ("num_gpu_blocks", "block_size"):
            if str(labels.get(key, "None")).isdigit():
                values[key] = int(labels[key])
    values.update({k: v for k, v in flags.items() if v is not None})
    return EngineSettings.from_variant(variant, **values)


def _settings_from_run(run: dict[str, Any]) -> dict[str, Any]:
    block = run.get("vllm") or run.get("engine")
    if isinstance(block, dict):
        return {k: block[k] for k in CAMEL if isinstance(block.get(k), int)}
    models = ((run.get("spec") or {}).get("models")) or []
    llms = [m.get("llm") for m in models if isinstance(m, dict) and isinstance(m.get("llm"), dict)]
    if len(llms) != 1:
        return {}
    return {k: llms[0][c] for k, c in CAMEL.items() if isinstance(llms[0].get(c), int)}


def load_calibration(path: Path) -> Calibration:
    """A calibration JSON written by ``kservebench calibrate --out``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise SpecError("calibration", str(path), f"cannot be read ({err.strerror})") from None
    except ValueError as err:
        raise SpecError("calibration", str(path), f"is not valid JSON: {err}") from None
    return Calibration.from_dict(data, where=str(path))


def variant_from_calibration(
    calibration: Calibration, variant: Variant | None = None, settings: bool = False
) -> Variant:
    """The calibrated variant (``calibration.variant`` unless given) with the fitted step
    coefficients; ``settings`` also takes the measured block size and scheduler limits.
    The request overheads are not part of a Variant: give ``calibration.overheads`` to
    the ``Engine``."""
    base = variant or get_variant(calibration.variant)
    out = base.with_coefficients(calibration.coefficients)
    if settings:
        s = calibration.settings
        out = replace(
            out,
            block_size=s.block_size,
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=s.max_num_batched_tokens,
            max_model_len=s.max_model_len or out.max_model_len,
        )
    return out


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _print(calibration: Calibration, fidelity: Fidelity, out: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    fit = Table(title=f"calibration of {calibration.variant}")
    fit.add_column("value")
    fit.add_column("fitted", justify="right")
    for name, value in vars(calibration.coefficients).items():
        mark = " *" if name in calibration.free else ""
        fit.add_row(name + mark, f"{value:.4g}")
    for name, value in vars(calibration.overheads).items():
        fit.add_row(name, f"{value:.4g}")
    d = calibration.diagnostics
    if d is not None:
        fit.caption = (
            f"* fitted; {d.requests} requests ({d.idle_requests} found the engine idle), "
            f"{d.iterations} iterations, {'converged' if d.converged else 'not converged'}"
        )
    console.print(fit)
    table = Table(title=f"fidelity (gauges from {fidelity.gauges_source})")
    for column in ("figure", "measured", "predicted", "error", "threshold", "verdict"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for f in fidelity.figures:
        if f.relative:
            row = [f"{f.measured:.2f} ms", f"{f.predicted:.2f} ms", f"{f.error:.1%}"]
            limit = "" if f.threshold is None else f"{f.threshold:.0%}"
        else:
            row = [f"{f.measured:.2f}", f"{f.predicted:.2f}", f"{f.error:.2f}"]
            limit = "" if f.threshold is None else f"{f.threshold:g}"
        verdict = {True: "pass", False: "FAIL", None: ""}[f.passed]
        table.add_row(f.name, *row, limit, verdict)
    console.print(table)
    if out is not None:
        console.print(f"wrote {out}")


if __name__ == "__main__":
    app()
