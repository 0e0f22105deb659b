"""``kservebench loadgen``: drive a pattern's traffic at a model and record every request.

Example::

    kservebench loadgen --url http://127.0.0.1:8080 --model sklearn-small \\
        --pattern constant --rate 40 --duration 15s --arrival poisson --out results/x

Any pattern can be given as YAML (``--pattern-file``) or as ``--pattern TYPE`` with
``--rate``/``--duration`` and ``--set field=value`` for its other fields (see
``kservebench.loadgen.patterns``). Writes DIR/records.csv, DIR/summary.json,
DIR/run.json and DIR/locust/.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
import yaml

from kservebench.errors import SpecError
from kservebench.loadgen.patterns import Pattern, load_pattern_file, parse_pattern
from kservebench.loadgen.protocols import build_template, load_instances, read_dataset_file

app = typer.Typer(add_completion=False, help="Drive traffic at a model and record it.")

TRAINED_DIR = Path("trained")  # where `make models` exports the catalogue
SAMPLE_ROWS = 16


def pattern_from_flags(
    pattern_type: str | None,
    rate: float | None,
    duration: str | None,
    settings: list[str],
    pattern_file: Path | None,
) -> tuple[Pattern, dict[str, Any]]:
    """The pattern and its spec, from a YAML file or from command-line flags."""
    if pattern_file is not None:
        if pattern_type is not None:
            raise SpecError("pattern", pattern_type, "give --pattern or --pattern-file, not both")
        pattern = load_pattern_file(pattern_file)
        return pattern, {"pattern_file": str(pattern_file)}
    spec: dict[str, Any] = {"type": pattern_type or "constant"}
    if rate is not None:
        spec["rate"] = rate
    if duration is not None:
        spec["duration"] = duration
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("set", item, "expected field=value")
        spec[key.strip()] = yaml.safe_load(value)  # so lists and numbers keep their types
    return parse_pattern(spec), spec


def default_instances(model: str) -> list[list[float]] | None:
    """Sample rows when none were given: trained/<model>, else the catalogue's data."""
    if (TRAINED_DIR / model).is_dir():
        return load_instances(model_dir=TRAINED_DIR / model)
    from kservebench.models import CATALOG

    if model not in CATALOG:
        return None
    from kservebench.models.catalog import make_dataset

    _, x_test, _, _ = make_dataset(CATALOG[model].dataset)
    return x_test[:SAMPLE_ROWS].astype(float).tolist()


def _show_progress(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return sys.stderr.isatty() and not os.environ.get("CI")


@app.command()
def loadgen(
    url: str = typer.Option(..., "--url", help="Base URL of the model server."),
    model: str = typer.Option(..., "--model", help="Model name in the request paths."),
    out: Path = typer.Option(..., "--out", help="Results folder to write."),
    pattern: str | None = typer.Option(
        None, "--pattern", help="constant|steps|ramp|spike|sinusoidal|on-off|trace"
    ),
    rate: float | None = typer.Option(None, "--rate", help="Requests/s (constant, on-off)."),
    duration: str | None = typer.Option(None, "--duration", help="e.g. 15s, 2m, 1h."),
    settings: list[str] = typer.Option(
        [], "--set", help="Another pattern field, field=value (YAML value); repeatable."
    ),
    pattern_file: Path | None = typer.Option(
        None, "--pattern-file", help="YAML pattern spec (or a mapping with `pattern:`)."
    ),
    pattern_label: str | None = typer.Option(
        None,
        "--pattern-label",
        help="Name in the records' `pattern` column and summary.json (default: the type); "
        "e.g. `1-ramp` keeps two patterns of one type apart.",
    ),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson|constant|closed"),
    users: int = typer.Option(4, "--users", help="Closed loop: number of users."),
    think_time: str = typer.Option("0s", "--think-time", help="Closed loop: minimum think time."),
    protocol: str = typer.Option("v1", "--protocol", help="v1|v2|openai"),
    batch: int = typer.Option(1, "--batch", help="Instances per request."),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="Trained model folder: its sample instances are the payload."
    ),
    payload: Path | None = typer.Option(
        None, "--payload", help="JSON file: a list of rows or {'instances': [...]}."
    ),
    instances: str | None = typer.Option(None, "--instances", help="Rows as JSON, inline."),
    prompts: list[str] = typer.Option([], "--prompt", help="OpenAI: a prompt; repeatable."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="OpenAI: max_tokens."),
    chat: bool = typer.Option(False, "--chat", help="OpenAI: use /v1/chat/completions."),
    dataset_file: Path | None = typer.Option(
        None,
        "--dataset-file",
        help="OpenAI: JSON lines of prompt and max_tokens, one per request (in turn).",
    ),
    openai_prefix: str = typer.Option("/openai", "--openai-prefix", help="OpenAI route prefix."),
    drain_timeout: str = typer.Option(
        "30s", "--drain-timeout", help="Wait this long for requests in flight at the end."
    ),
    request_timeout: str = typer.Option("60s", "--timeout", help="Per-request timeout."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Poisson arrivals."),
    pod_header: str = typer.Option(
        "x-serving-pod", "--pod-header", help="Response header naming the serving pod."
    ),
    connections: int = typer.Option(
        1000, "--connections", help="Open loop: most concurrent connections."
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Live status line (default: on a terminal)."
    ),
) -> None:
    """Drive a traffic pattern at a model server; write records.csv and summary.json."""
    try:
        summary = _run(**locals())
    except SpecError as exc:
        typer.echo(f"error: {exc}", err=True)
        # SystemExit, not typer.Exit: the outer `kservebench` group is plain click.
        raise SystemExit(2) from None
    keys = ("requests", "errors", "unfinished", "achieved_rps")
    typer.echo(
        json.dumps(
            {k: summary[k] for k in keys}
            | {
                "latency_ms": summary["latency_ms"],
                "send_lag_ms": summary["send_lag_ms"],
                "out": str(out),
            }
        )
    )


def _run(**opts: Any) -> dict[str, Any]:
    from kservebench.loadgen.patterns import parse_duration

    pattern, pattern_spec = pattern_from_flags(
        opts["pattern"], opts["rate"], opts["duration"], opts["settings"], opts["pattern_file"]
    )
    rows = load_instances(opts["model_dir"], opts["payload"], opts["instances"])
    if rows is None and opts["protocol"] in ("v1", "v2"):
        rows = default_instances(opts["model"])
    prompts, max_tokens = opts["prompts"], opts["max_tokens"]
    if opts["dataset_file"] is not None:
        if opts["protocol"] != "openai":
            raise SpecError("dataset_file", str(opts["dataset_file"]), "is for --protocol openai")
        prompts, max_tokens = read_dataset_file(opts["dataset_file"])
    template = build_template(
        opts["protocol"],
        opts["model"],
        batch=opts["batch"],
        instances=rows,
        prompts=prompts,
        max_tokens=max_tokens,
        chat=opts["chat"],
        openai_prefix=opts["openai_prefix"],
    )
    if opts["users"] < 1:
        raise SpecError("users", opts["users"], "expected a whole number >= 1")
    if opts["connections"] < 1:
        raise SpecError("connections", opts["connections"], "expected a whole number >= 1")
    label = opts["pattern_label"]
    if label is not None and not label.strip():
        raise SpecError("pattern_label", label, "must not be empty")
    spec = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in opts.items()
        if k not in ("instances",)
    } | {"pattern_spec": pattern_spec, "batch_rows": len(rows) if rows else None}

    # Imported here: Locust's gevent patching must not happen for `--help` or a bad spec.
    from kservebench.loadgen.runner import LoadConfig, run_load

    config = LoadConfig(
        url=opts["url"],
        model=opts["model"],
        pattern=pattern,
        pattern_label=label,
        template=template,
        out_dir=opts["out"],
        arrival=opts["arrival"],
        users=opts["users"],
        think_time_s=parse_duration(opts["think_time"], "think_time"),
        drain_timeout_s=parse_duration(opts["drain_timeout"], "drain_timeout"),
        seed=opts["seed"],
        pod_header=opts["pod_header"],
        request_timeout_s=parse_duration(opts["request_timeout"], "timeout"),
        connections=opts["connections"],
        progress=_show_progress(opts["progress"]),
        spec=spec,
    )
    config.validate()
    return run_load(config)
