"""Local single-request latency of every catalogue model (``make bench-models``).

For each model: size on disk, local cold start (process start -> model ready), and
p50/p99 latency of sequential one-instance requests (v1 and v2 protocols, keep-alive
connection, after a warm-up) against a real KServe ModelServer on 127.0.0.1. Prints a
markdown table; ``--json`` also writes the numbers.

Sequential requests measure service time, not capacity: one request in flight at a
time, so no queueing. Numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import typer

from kservebench.errors import SpecError
from kservebench.models import MODEL_NAMES, LocalModelServer, read_model_info, train_models

app = typer.Typer(add_completion=False)


def v1_body(instance: list[float]) -> dict[str, Any]:
    return {"instances": [instance]}


def v2_body(instance: list[float]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input-0", "shape": [1, len(instance)], "datatype": "FP32", "data": instance}
        ]
    }


def time_requests(
    session: requests.Session, url: str, body: dict[str, Any], count: int, warmup: int
) -> np.ndarray:
    """Latencies in ms of ``count`` sequential POSTs, after ``warmup`` unrecorded ones."""
    payload = json.dumps(body)
    headers = {"Content-Type": "application/json"}
    latencies = np.empty(count)
    for i in range(warmup + count):
        started = time.perf_counter()
        response = session.post(url, data=payload, headers=headers, timeout=30)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        if i >= warmup:
            latencies[i - warmup] = elapsed * 1000.0
    return latencies


def summarize(latencies_ms: np.ndarray) -> dict[str, float]:
    p50, p99 = np.percentile(latencies_ms, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def measure_model(
    model_dir: Path, name: str, count: int, warmup: int, log_dir: Path
) -> dict[str, Any]:
    info = read_model_info(model_dir)
    instance = info["sample_instances"][0]
    with LocalModelServer(model_dir, name, log_path=log_dir / f"{name}.log") as server:
        row: dict[str, Any] = {
            "model": name,
            "library": info["library"],
            "size_bytes": info["size_bytes"],
            "test_accuracy": info["scores"]["test_accuracy"],
            "ready_after_s": round(server.ready_after_s or float("nan"), 3),
        }
        with requests.Session() as session:
            for protocol, url, body in (
                ("v1", server.v1_predict_url, v1_body(instance)),
                ("v2", server.v2_infer_url, v2_body(instance)),
            ):
                latencies = time_requests(session, url, body, count, warmup)
                row[protocol] = summarize(latencies)
    return row


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model | library | size on disk | test acc. | cold start (s) "
        "| v1 p50 (ms) | v1 p99 (ms) | v2 p50 (ms) | v2 p99 (ms) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r['model']} | {r['library']} | {human_size(r['size_bytes'])} "
        f"| {r['test_accuracy']:.3f} | {r['ready_after_s']:.2f} "
        f"| {r['v1']['p50_ms']:.2f} | {r['v1']['p99_ms']:.2f} "
        f"| {r['v2']['p50_ms']:.2f} | {r['v2']['p99_ms']:.2f} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


@app.command()
def main(
    trained: Path = typer.Option(Path("trained"), help="Model folder (trained if needed)."),
    model: list[str] = typer.Option(None, "--model", "-m", help="Model to measure; default all."),
    requests_per_protocol: int = typer.Option(300, "--requests", min=10),
    warmup: int = typer.Option(30, "--warmup", min=0),
    json_out: Path = typer.Option(None, "--json", help="Also write the rows as JSON here."),
    logs: Path = typer.Option(Path("results/bench-models-logs"), help="Server log folder."),
) -> None:
    names = model or list(MODEL_NAMES)
    try:
        dirs = train_models(trained, names)
    except SpecError as err:
        print(f"Error: --model: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    rows = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(measure_model(dirs[name], name, requests_per_protocol, warmup, logs))
    print(markdown_table(rows))
    load = os.getloadavg()
    print(
        f"\n{requests_per_protocol} sequential one-instance requests per protocol after "
        f"{warmup} warm-up; {os.cpu_count()} CPUs, load average {load[0]:.1f} at the end."
    )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    app()
