"""What the local control plane's router costs: added latency, and the cold path.

1. Router overhead. A real KServe ModelServer replica of sklearn-small; an open-loop client
   (constant arrivals, aiohttp, in this script) sends v1 predicts at ``--rate`` req/s to the
   replica directly and through a ``Router`` in hpa mode, in alternating blocks (ABBA, so
   drift on a shared machine hits both alike). The router runs in a child process of its own,
   as it runs beside the load generator in a bench, on uvloop or the default asyncio loop
   (``--loop``). Reported: p50/p99 both ways, the added p50 (goal <= 0.5 ms) and the router's
   CPU per request.
2. Activator cold path. A knative-mode router at zero replicas; one request arrives, its
   ``on_cold_request`` starts a real replica process (``LocalModelServer``), and the replica
   becomes an endpoint once it answers ready. Reported per repetition: arrival -> response
   (the cold start the client sees), split into replica start -> ready and ready -> response
   (the router's dispatch of the buffered request plus the predict itself).

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/local_plane.py [--duration 10] [--rate 200]

Numbers depend on the machine and on what else runs on it: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from kservebench.local.router import POD_HEADER, Endpoint, Router
from kservebench.procs import ManagedProcess, free_port, http_ok

MODEL = "sklearn-small"
PREDICT = f"/v1/models/{MODEL}:predict"
HEADERS = {"Content-Type": "application/json"}
REQUEST_TIMEOUT_S = 10.0
GOAL_ADDED_P50_MS = 0.5
ENV = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve_router(upstream: str, port: int, loop_kind: str) -> None:
    """Child mode: one hpa router in front of ``upstream`` until terminated."""
    loop = new_loop(loop_kind)

    async def run() -> None:
        router = Router(MODEL, "hpa", port=port)
        await router.start()
        router.set_endpoints([Endpoint(f"{MODEL}-predictor-1", upstream)])
        await asyncio.Event().wait()

    loop.run_until_complete(run())


async def open_loop(
    session: aiohttp.ClientSession, url: str, body: bytes, rate: float, count: int
) -> tuple[list[float], int]:
    """``count`` requests at constant arrivals of ``rate``/s; latencies (ms) of the 200s
    and the number of failures. Bounded: each request has a timeout."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures = 0

    async def one() -> None:
        nonlocal failures
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            latencies.append(1000 * (time.perf_counter() - start))
        else:
            failures += 1

    first = loop.time()
    tasks = []
    for i in range(count):
        delay = first + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT_S + count / rate)
    return latencies, failures


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


async def overhead(replica_url: str, router_url: str, router_pid: int, args) -> dict:
    body = json.dumps({"instances": [[0.1] * 20]}).encode()
    targets = {"direct": replica_url + PREDICT, "router": router_url + PREDICT}
    per_block = max(1, round(args.rate * args.block))
    blocks = max(1, round(args.duration / args.block))
    order = [("direct", "router") if b % 2 == 0 else ("router", "direct") for b in range(blocks)]
    latencies: dict[str, list[float]] = {"direct": [], "router": []}
    failures = {"direct": 0, "router": 0}
    router_cpu_s = 0.0
    process = psutil.Process(router_pid)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.post(targets["router"], data=body, headers=HEADERS) as response:
            assert response.headers[POD_HEADER] == f"{MODEL}-predictor-1"
        for url in targets.values():  # warm-up: connections, caches
            await open_loop(session, url, body, args.rate, per_block // 2)
        for pair in order:
            for label in pair:
                before = sum(process.cpu_times()[:2])
                got, failed = await open_loop(session, targets[label], body, args.rate, per_block)
                if label == "router":
                    router_cpu_s += sum(process.cpu_times()[:2]) - before
                latencies[label] += got
                failures[label] += failed
    result = {label: {**percentiles(v), "requests": len(v)} for label, v in latencies.items()}
    d, r = result["direct"], result["router"]
    added = None if d["p50"] is None or r["p50"] is None else round(r["p50"] - d["p50"], 3)
    return {
        **result,
        "failures": failures,
        "added_p50_ms": added,
        "added_p99_ms": None if added is None else round(r["p99"] - d["p99"], 3),
        "router_cpu_ms_per_request": round(1000 * router_cpu_s / max(1, r["requests"]), 3),
        "goal_added_p50_ms": GOAL_ADDED_P50_MS,
        "rate": args.rate,
        "seconds_each_way": blocks * per_block / args.rate,
        "router_loop": args.loop,
    }


async def cold_start(model_dir: Path, logs: Path, rep: int) -> dict:
    """One request at zero replicas: the router pokes, a replica starts, the request is
    served once the replica is ready."""
    from kservebench.models import LocalModelServer

    loop = asyncio.get_running_loop()
    marks: dict[str, float] = {}
    server = LocalModelServer(model_dir, MODEL, log_path=logs / f"cold-{rep}.log")
    router: Router

    def start_replica() -> None:  # in a thread: spawning and polling must not stall the loop
        server.start()
        marks["spawned"] = time.time()
        server.wait_ready(90)
        marks["ready"] = time.time()
        endpoint = Endpoint(f"{MODEL}-predictor-1", server.url)
        loop.call_soon_threadsafe(router.set_endpoints, [endpoint])

    def on_cold() -> None:
        if "poked" not in marks:
            marks["poked"] = time.time()
            threading.Thread(target=start_replica, daemon=True).start()

    router = Router(MODEL, "knative", container_concurrency=0, on_cold_request=on_cold)
    url = await router.start()
    body = json.dumps({"instances": [[0.1] * 20]}).encode()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            sent = time.time()
            async with session.post(url + PREDICT, data=body, headers=HEADERS) as response:
                await response.read()
                status = response.status
            answered = time.time()
    finally:
        await router.stop()
        await asyncio.to_thread(server.stop)
    return {
        "status": status,
        "arrival_to_response_s": round(answered - sent, 3),
        "arrival_to_poke_ms": round(1000 * (marks["poked"] - sent), 3),
        "replica_start_to_ready_s": round(marks["ready"] - marks["spawned"], 3),
        "ready_to_response_ms": round(1000 * (answered - marks["ready"]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds each way")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--block", type=float, default=2.0, help="seconds per block")
    parser.add_argument("--cold-reps", type=int, default=3)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--trained", type=Path, default=Path("trained"))
    parser.add_argument("--out", type=Path, default=Path("results/bench-local"))
    parser.add_argument("--serve-router", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_router:
        serve_router(args.serve_router, args.port, args.loop)
        return

    from kservebench.models import LocalModelServer, train_models

    model_dir = train_models(args.trained, [MODEL])[MODEL]
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    port = free_port()
    replica = LocalModelServer(model_dir, MODEL, log_path=logs / "replica.log")
    here = str(Path(__file__).resolve())
    router_argv = [sys.executable, here, "--serve-router", replica.url, "--port", str(port)]
    router = ManagedProcess([*router_argv, "--loop", args.loop], logs / "router.log", env=ENV)
    print(f"router overhead: {args.rate:.0f} req/s open loop, {args.duration:.0f} s each way")
    with replica, router:
        router_url = f"http://127.0.0.1:{port}"
        router.wait_ready(lambda: http_ok(router_url + "/"), 30, "router")
        over = asyncio.run(overhead(replica.url, router_url, router.pid, args))
    print("activator cold path:", flush=True)
    cold = []
    for rep in range(args.cold_reps):
        cold.append(asyncio.run(cold_start(model_dir, logs, rep)))
        print(f"  {rep + 1}: {cold[-1]}", flush=True)

    print(f"\nrouter overhead, v1 predict {MODEL} (router on {args.loop})")
    print(f"{'path':<10}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}")
    for label in ("direct", "router"):
        row = over[label]
        print(f"{label:<10}{row['p50']:>10.3f}{row['p99']:>10.3f}{row['requests']:>10}")
    verdict = "meets" if (over["added_p50_ms"] or 0) <= GOAL_ADDED_P50_MS else "misses"
    print(
        f"added p50 {over['added_p50_ms']} ms ({verdict} the {GOAL_ADDED_P50_MS} ms goal), "
        f"added p99 {over['added_p99_ms']} ms, router CPU "
        f"{over['router_cpu_ms_per_request']} ms/request, failures {over['failures']}"
    )
    print("\nactivator cold path (knative, zero replicas, one request)")
    print(f"{'rep':<5}{'arrival->response s':>21}{'start->ready s':>16}{'ready->response ms':>20}")
    for rep, row in enumerate(cold, 1):
        print(
            f"{rep:<5}{row['arrival_to_response_s']:>21.3f}"
            f"{row['replica_start_to_ready_s']:>16.3f}{row['ready_to_response_ms']:>20.1f}"
        )
    path = args.out / "local_plane.json"
    path.write_text(json.dumps({"router_overhead": over, "cold_path": cold}, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
