"""What a Benchmark's Job runs: ``kservebench loadgen``, then its key figures as the
container's termination message.

A finished Job's pod cannot be exec'd (so ``kubectl cp`` cannot reach an emptyDir), but
Kubernetes keeps each terminated container's message, read from its
``terminationMessagePath`` (at most 4096 bytes), in the pod's status. The operator reads
it from there after the Job ends and puts the figures in the Benchmark's status; the full
results (records, summary, Locust's files) stay in the results folder, on a PVC when the
Benchmark names one.

``python -m kservebench.operator.benchmark_run --summary DIR/summary.json --message PATH
-- kservebench loadgen ... --out DIR`` runs the command, writes the message, and exits
with the command's status. ``key_figures`` and ``read_message`` are the pure halves.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

# Kubernetes truncates a termination message to this many bytes.
MESSAGE_LIMIT = 4096
DEFAULT_MESSAGE_PATH = "/dev/termination-log"  # Kubernetes' default terminationMessagePath
PERCENTILES = ("p50", "p95", "p99")


def key_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The Benchmark status's ``results`` from a loadgen summary.json (camelCase, small)."""
    latency = summary.get("latency_ms") or {}
    figures = {
        "requests": summary.get("requests"),
        "ok": summary.get("ok"),
        "errors": summary.get("errors"),
        "unfinished": summary.get("unfinished"),
        "achievedRps": summary.get("achieved_rps"),
        "durationSeconds": summary.get("duration_s"),
        "latencyMs": {key: latency.get(key) for key in PERCENTILES},
    }
    return _finite(figures)


def _finite(value: Any) -> Any:
    # JSON has no NaN: a load with no successful request has no percentiles.
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def message_text(figures: dict[str, Any]) -> str:
    text = json.dumps(figures, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > MESSAGE_LIMIT:  # never a truncated, unreadable JSON
        text = json.dumps({"error": "key figures exceed the termination message limit"})
    return text


def read_message(text: str | None) -> dict[str, Any] | None:
    """The figures a termination message carries, or None when it is not ours."""
    if not text:
        return None
    try:
        figures = json.loads(text)
    except ValueError:
        return None  # e.g. a crash's last log lines (terminationMessagePolicy fallback)
    return figures if isinstance(figures, dict) and "exitCode" in figures else None


def run(command: list[str], summary: Path, message: Path) -> int:
    code = subprocess.call(command)
    figures: dict[str, Any] = {}
    try:
        figures = key_figures(json.loads(summary.read_text()))
    except (OSError, ValueError) as err:
        figures = {"error": f"no summary at {summary}: {err}"[:300]}
    figures["exitCode"] = code
    message.write_text(message_text(figures))
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kservebench.operator.benchmark_run")
    parser.add_argument("--summary", type=Path, required=True, help="loadgen's summary.json")
    parser.add_argument("--message", type=Path, default=Path(DEFAULT_MESSAGE_PATH))
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required after --")
    sys.exit(run(command, args.summary, args.message))


if __name__ == "__main__":
    main()
