"""Run an experiment end to end: deploy, wait ready, warm up, patterns, series, report.

One results folder per run (``<results>/<name>-<UTC timestamp>/``)::

    run.json                 spec, versions, git revision, target, start/end, status
    logs/                    model server logs (local target)
    warmup/<model>/          warm-up load (records kept as warmup-records.csv, not analysed)
    loads/<model>/<i>-<type>/  one `kservebench loadgen` run per pattern: records.csv, ...
                             (`<i>-<type>` is also the records' `pattern` label)
    series/                  Prometheus series for the run's window (parquet)
    simulated/               local target: the simulated HPA/KPA projection, calibrated
                             from this run (a `kservebench simulate` results folder)
    report/                  `kservebench report` output

Traffic runs through the ``kservebench loadgen`` command in a child process: Locust's
gevent patching stays out of this process, and a pattern runs exactly as it would by hand.
Whatever ends the run (success, a failure, Ctrl-C, SIGTERM), the folder is left consistent:
run.json says ``finished``, ``failed`` or ``interrupted``, the series and report cover what
was collected, and every server the run started is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from kservebench.bench.plan import (
    Phase,
    arrival_seed,
    plan_phases,
    seconds_left,
    warmup_pattern,
)
from kservebench.bench.progress import Progress, live_numbers
from kservebench.bench.spec import Experiment, ModelRef
from kservebench.procs import ManagedProcess, kservebench_argv
from kservebench.records import RECORDS_FILE
from kservebench.results import finish_run, start_run, write_run

_CHILD_ENV = {"PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}
PATTERN_FILE = "pattern.yaml"
DATASET_FILE = "dataset.jsonl"  # an LLM phase's requests: prompt, prompt_tokens, max_tokens
WARMUP_RECORDS = "warmup-records.csv"  # renamed so the analysis leaves warm-up out
INTERRUPT_GRACE_S = 15.0  # loadgen writes its summary after SIGINT
TICK_S = 0.5
FINISHED_WITH_INCIDENTS = "finished with incidents"
FINISHED = ("finished", FINISHED_WITH_INCIDENTS)

# Called after a finished run's traffic, servers stopped, before the report: the local
# target adds the simulated HPA/KPA projection (kservebench.sim.project_run). What it
# returns goes to run.json under PROJECTION_KEY; if it raises, the error does, and the
# measured results are reported all the same.
AfterRun = Callable[[Path, Experiment], dict[str, Any]]
PROJECTION_KEY = "simulated_projection"


class Target(Protocol):
    name: str

    def start(self, on_step: Callable[[str], None]) -> None: ...
    def refresh(self) -> None: ...
    def stop(self) -> None: ...
    def endpoint(self, model: str) -> str: ...
    def model_dir(self, model: str) -> Path | None: ...
    @property
    def prometheus_url(self) -> str | None: ...
    def collect_options(self) -> dict[str, Any]: ...
    def describe(self) -> dict[str, Any]: ...


def results_folder(root: Path, name: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path(root) / f"{name}-{stamp}"


def loadgen_args(
    experiment: Experiment,
    phase: Phase,
    url: str,
    out: Path,
    model_dir: Path | None,
    openai_prefix: str = "/openai",
) -> list[str]:
    """The ``kservebench loadgen`` arguments for one phase (its pattern file is in ``out``;
    an LLM's requests in ``out/dataset.jsonl``)."""
    args = [
        "loadgen",
        "--url", url,
        "--model", phase.model.name,
        "--protocol", phase.model.protocol,
        "--batch", str(phase.model.batch),
        "--pattern-file", str(out / PATTERN_FILE),
        "--arrival", experiment.arrival,
        # The pattern's name in the spec (`1-ramp`): records of two patterns of one type
        # stay apart, and the simulated projection writes the same names.
        "--pattern-label", phase.pattern.label if phase.pattern else phase.kind,
        "--out", str(out),
        "--seed", str(arrival_seed(phase)),
        "--no-progress",
    ]  # fmt: skip
    llm = phase.model.llm
    if llm is not None:
        args += ["--dataset-file", str(out / DATASET_FILE), "--openai-prefix", openai_prefix]
        args += ["--chat"] if llm.chat else []
        # Long generations under load outlast a tabular request's minute.
        args += ["--timeout", "300s", "--drain-timeout", "120s"]
    elif model_dir is not None:
        args += ["--model-dir", str(model_dir)]  # payload rows from the model's own test set
    return args


def write_dataset(model: ModelRef, model_dir: Path | None, out: Path) -> None:
    """The LLM's requests as JSON lines (prompt text of an exact token count, max_tokens),
    made with the served model's own tokenizer; the same for every phase of a seed."""
    from kservebench.loadgen.datasets import make_requests
    from kservebench.models.llm import load_tokenizer

    if model_dir is None:
        raise RuntimeError(f"{model.name}: no model folder to take the tokenizer from")
    requests = make_requests(load_tokenizer(model_dir), model.dataset, f"{model.name}.dataset")
    with (out / DATASET_FILE).open("w") as f:
        for r in requests:
            f.write(json.dumps(r._asdict()) + "\n")


class ExperimentRun:
    def __init__(
        self,
        experiment: Experiment,
        target_factory: Callable[[Path], Target],
        results_root: Path,
        live: bool | None = None,
        after_run: AfterRun | None = None,
        spec_path: Path | None = None,
    ) -> None:
        self.experiment = experiment
        self.out = results_folder(results_root, experiment.name)
        self.target = target_factory(self.out)
        self.progress = Progress(experiment.name, live)
        self.after_run = after_run
        self.phases = plan_phases(experiment)
        self.run: dict[str, Any] = start_run(
            self.out,
            "bench",
            experiment.raw,
            name=experiment.name,
            mode=experiment.mode,
            slo_ms=experiment.slo_latency_ms,  # the report's default SLO
            spec_file=str(spec_path) if spec_path else None,
            plan=[{"kind": p.kind, "title": p.title, "duration_s": p.duration_s,
                   "folder": str(p.folder) if p.folder else None} for p in self.phases],
        )  # fmt: skip

    # --- the whole run ---------------------------------------------------------------------

    def execute(self) -> str:
        status = "failed"
        with self.progress:
            try:
                self.progress.step(f"results in {self.out}")
                self.target.start(self.progress.step)
                self.run.update(self.target.describe())
                self.run["traffic_started_at"] = time.time()
                write_run(self.out, self.run)
                for index, phase in enumerate(self.phases):
                    left_s = seconds_left(self.phases, index, 0.0)
                    self.progress.phase(index, len(self.phases), phase.title, left_s)
                    self._run_phase(index, phase)
                status = "finished"
            except KeyboardInterrupt:
                status = "interrupted"
                self.progress.step("interrupted: collecting what there is, then stopping")
            except Exception as err:
                self.run["error"] = f"{type(err).__name__}: {err}"
                self.progress.step(f"failed: {self.run['error']}")
            finally:
                self.run["traffic_ended_at"] = time.time()
                self._collect_series()
                self.progress.step("stopping servers")
                try:
                    self.target.stop()
                except Exception as err:  # still finish run.json; say what may be left
                    self.run["teardown_error"] = f"{type(err).__name__}: {err}"
            # What failed during the run and what was done about it (crashed replicas
            # restarted, Prometheus restarted): the run finished, but not cleanly.
            self.run.update(self.target.describe())
            incidents = list(getattr(self.target, "incidents", []))
            self.run["incidents"] = incidents
            if status == "finished" and incidents:
                status = FINISHED_WITH_INCIDENTS
            if self.after_run is not None and status in FINISHED:
                # The projection calibrates from run.json: the control plane's final
                # account (every pod's ready time, every cold start) must be on disk.
                write_run(self.out, self.run)
                self._after_run(self.after_run)
            # The report reads run.json: give it the final status and window first.
            finish_run(self.out, self.run, status=status)
            self._report()
            write_run(self.out, self.run)
        return status

    # --- phases ----------------------------------------------------------------------------

    def _run_phase(self, index: int, phase: Phase) -> None:
        if phase.kind == "cooldown":
            self._idle(index, phase)
            return
        assert phase.folder is not None
        out = self.out / phase.folder
        out.mkdir(parents=True, exist_ok=True)
        pattern = warmup_pattern(self.experiment) if phase.kind == "warmup" else phase.pattern.spec
        (out / PATTERN_FILE).write_text(yaml.safe_dump(pattern, sort_keys=False))
        model_dir = self.target.model_dir(phase.model.name)
        if phase.model.llm is not None:
            write_dataset(phase.model, model_dir, out)
        args = loadgen_args(
            self.experiment,
            phase,
            self.target.endpoint(phase.model.name),
            out,
            model_dir,
            getattr(self.target, "openai_prefix", "/openai"),
        )
        process = ManagedProcess(kservebench_argv(*args), out / "loadgen.log", env=_CHILD_ENV)
        started = time.monotonic()
        process.start()
        try:
            while process.alive():
                self.target.refresh()
                elapsed = time.monotonic() - started
                numbers = live_numbers(out / RECORDS_FILE, time.time())
                left = seconds_left(self.phases, index, elapsed)
                self.progress.tick(elapsed, phase.duration_s, left, numbers)
                time.sleep(TICK_S)
        except BaseException:
            _interrupt(process)
            raise
        finally:
            if phase.kind == "warmup" and (out / RECORDS_FILE).exists():
                (out / RECORDS_FILE).replace(out / WARMUP_RECORDS)
        code = process.popen.returncode if process.popen else None
        if code != 0:
            raise RuntimeError(
                f"kservebench loadgen exited with {code} for {phase.title}; "
                f"log {out / 'loadgen.log'}:\n{process.log_tail(15)}"
            )

    def _idle(self, index: int, phase: Phase) -> None:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < phase.duration_s:
            self.target.refresh()
            left = seconds_left(self.phases, index, elapsed)
            self.progress.tick(elapsed, phase.duration_s, left, None)
            time.sleep(min(TICK_S, phase.duration_s - elapsed))

    # --- after the traffic -----------------------------------------------------------------

    def _collect_series(self) -> None:
        url = self.target.prometheus_url
        if url is None:
            self.run["series"] = "not collected: no Prometheus URL"
            return
        from kservebench.analysis.collect import collect, prometheus_range_query, save_collection

        self.progress.step(f"collecting series from {url}")
        try:
            start, end = self.run["started_at"], time.time()
            collection = collect(
                prometheus_range_query(url), start, end, "1s", **self.target.collect_options()
            )
            save_collection(self.out, collection)
            self.run["series"] = {"prometheus_url": url, **collection.manifest()}
        except (Exception, KeyboardInterrupt) as err:  # a second Ctrl-C skips collection
            self.run["series"] = f"not collected: {type(err).__name__}: {err}"

    def _after_run(self, hook: AfterRun) -> None:
        self.progress.step("simulating the autoscaler's projection, calibrated from this run")
        started = time.monotonic()
        try:
            entry = hook(self.out, self.experiment)
        except (Exception, KeyboardInterrupt) as err:  # never at the measured results' cost
            entry = {"error": f"{type(err).__name__}: {err}", "mode": self.experiment.mode}
            self.progress.step(f"no simulated projection: {entry['error']}")
        self.run[PROJECTION_KEY] = {**entry, "wall_s": round(time.monotonic() - started, 2)}

    def _report(self) -> None:
        if not any((self.out / "loads").rglob(RECORDS_FILE)):
            self.run["report"] = "not written: no load records"
            return
        self.progress.step("writing the report")
        report_dir = self.out / "report"
        try:
            result = subprocess.run(
                kservebench_argv("report", str(self.out), "--out", str(report_dir)),
                capture_output=True,
                text=True,
                env={**os.environ, **_CHILD_ENV},
                timeout=600,
            )
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as err:
            self.run["report"] = f"not written: {type(err).__name__}"
            return
        if result.returncode == 0:
            self.run["report"] = str(report_dir.relative_to(self.out))
        else:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            self.run["report"] = f"failed (exit {result.returncode}): {tail}"


def _interrupt(process: ManagedProcess) -> None:
    """Ask loadgen to stop as Ctrl-C would (it then writes its summary), then make sure."""
    if process.alive():
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.popen.wait(timeout=INTERRUPT_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
    process.stop()
