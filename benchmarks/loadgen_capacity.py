"""How much open-loop traffic one core of `kservebench loadgen` can offer, next to wrk.

For two targets, a trivial local HTTP endpoint and a real KServe ModelServer
(sklearn-small), the load generator runs pinned to one core (taskset) at increasing
constant-arrival rates; its capacity is the highest rate where every scheduled request
was sent with send-lag p99 under 10 ms and the achieved rate stayed within 5% of the
target. wrk (closed loop, 1 thread pinned to one core, 64 connections) gives the
maximum request rate of a C load generator against the same target; the ratio is
loadgen capacity / wrk rate. When the target itself saturates first, the figure is a
lower bound of the generator's capacity (the table says which).

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/loadgen_capacity.py [--duration 5s]

Numbers depend on the machine and on what else runs on it: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kservebench.loadgen.patterns import parse_duration
from kservebench.procs import ManagedProcess, free_port, http_ok, kservebench_argv

LAG_P99_LIMIT_MS = 10.0
RATES = (100, 200, 400, 700, 1000, 1400, 2000, 2800, 4000)
ENV = {**os.environ, "PYTHONSAFEPATH": "1", "CI": "1"}


def pinned(argv: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def loadgen_run(url: str, model: str, rate: int, duration: str, out: Path, rows: str) -> dict:
    argv = kservebench_argv(
        "loadgen",
        "--url",
        url,
        "--model",
        model,
        "--instances",
        rows,
        "--pattern",
        "constant",
        "--rate",
        str(rate),
        "--duration",
        duration,
        "--arrival",
        "constant",
        "--drain-timeout",
        "10s",
        "--out",
        str(out),
    )
    done = subprocess.run(pinned(argv, 0), capture_output=True, text=True, env=ENV, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed at {rate}/s:\n{done.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def sustains(summary: dict, rate: int) -> bool:
    lag = summary["send_lag_ms"]["p99"]
    return (
        lag is not None
        and lag < LAG_P99_LIMIT_MS
        and summary["achieved_rps"] >= 0.95 * rate
        and summary["unfinished"] == 0
    )


def capacity(url: str, model: str, duration: str, work: Path, rows: str) -> dict:
    best, runs = None, []
    for rate in RATES:
        summary = loadgen_run(url, model, rate, duration, work / f"{model}-{rate}", rows)
        ok = sustains(summary, rate)
        runs.append(
            {
                "rate": rate,
                "achieved_rps": summary["achieved_rps"],
                "send_lag_p99_ms": summary["send_lag_ms"]["p99"],
                "latency_p99_ms": summary["latency_ms"]["p99"],
                "errors": summary["errors"],
                # CPU the generator spent per request: a figure other work on the
                # machine does not distort the way it distorts send lag.
                "cpu_ms_per_request": round(
                    1000 * summary["generator_cpu_s"] / max(1, summary["requests"]), 3
                ),
                "sustained": ok,
            }
        )
        print(f"  loadgen {rate:5d}/s -> {runs[-1]}", flush=True)
        if not ok:
            break
        best = rate
    return {"capacity_rps": best, "runs": runs}


def wrk_rate(url: str, path: str, body: str | None, duration_s: float, work: Path) -> float:
    argv = ["wrk", "-t1", "-c64", f"-d{max(1, round(duration_s))}s"]
    if body is not None:
        script = work / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        argv += ["-s", str(script)]
    done = subprocess.run(pinned([*argv, url + path], 0), capture_output=True, text=True)
    match = re.search(r"Requests/sec:\s*([\d.]+)", done.stdout)
    if not match:
        raise RuntimeError(f"wrk gave no rate:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="5s", help="per rate step (and for wrk)")
    parser.add_argument("--out", type=Path, default=Path("results/bench-loadgen"))
    args = parser.parse_args()
    duration_s = parse_duration(args.duration, "duration")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from kservebench.models import LocalModelServer, read_model_info, train_models

        trained = train_models(work / "trained", ["sklearn-small"])["sklearn-small"]
        rows = read_model_info(trained)["sample_instances"][:1]
        body = json.dumps({"instances": rows})
        port = free_port()
        endpoint = ManagedProcess(
            pinned([sys.executable, "-m", "kservebench.loadgen.endpoint", "--port", str(port)], 1),
            work / "endpoint.log",
            env=ENV,
        )
        kserve = LocalModelServer(trained, "sklearn-small", log_path=work / "kserve.log")
        with endpoint, kserve:
            endpoint_url = f"http://127.0.0.1:{port}"
            endpoint.wait_ready(lambda: http_ok(endpoint_url + "/"), 30, "endpoint")
            kserve.wait_ready(90)
            targets = {
                "trivial endpoint": (endpoint_url, "m"),
                "KServe sklearn-small": (kserve.url, "sklearn-small"),
            }
            for label, (url, model) in targets.items():
                print(f"{label}:", flush=True)
                found = capacity(url, model, args.duration, work, json.dumps(rows))
                path = f"/v1/models/{model}:predict"
                wrk = wrk_rate(url, path, body, duration_s, work)
                cap = found["capacity_rps"]
                found.update(wrk_rps=wrk, ratio=None if cap is None else round(cap / wrk, 3))
                results[label] = found
    print(f"\nopen-loop capacity with send-lag p99 < {LAG_P99_LIMIT_MS:.0f} ms, one core")
    print(f"{'target':<24}{'loadgen req/s':>14}{'wrk req/s':>12}{'ratio':>8}")
    for label, found in results.items():
        cap = found["capacity_rps"]
        print(
            f"{label:<24}{cap if cap is not None else '-':>14}"
            f"{found['wrk_rps']:>12.0f}{found['ratio'] if found['ratio'] else '-':>8}"
        )
    (args.out / "loadgen_capacity.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out / 'loadgen_capacity.json'}")


if __name__ == "__main__":
    main()
