"""Run ``kservebench loadgen`` as a child process (for the bench orchestrator).

Locust monkey-patches the standard library with gevent on import, so a process that
also runs asyncio, kopf or a model server must not import ``runner``. This module is
light (no Locust): it builds the command line, runs it, and reads the summary.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kservebench.loadgen.summary import SUMMARY_FILE
from kservebench.procs import kservebench_argv


def loadgen_argv(
    url: str,
    model: str,
    pattern_file: Path,
    out_dir: Path,
    arrival: str = "poisson",
    **options: Any,
) -> list[str]:
    """The command line; ``options`` are further flags by name (``users=8``,
    ``drain_timeout="60s"``, ``protocol="v2"``, ``chat=True``, ``prompt=["a", "b"]``)."""
    argv = kservebench_argv("loadgen", "--url", url, "--model", model)
    argv += ["--pattern-file", str(pattern_file), "--arrival", arrival, "--out", str(out_dir)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def write_pattern_file(pattern_spec: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"pattern": pattern_spec}, sort_keys=False))
    return path


def run_loadgen(
    url: str,
    model: str,
    pattern_spec: dict[str, Any],
    out_dir: Path,
    arrival: str = "poisson",
    timeout_s: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run one load in a child process; its summary. Raises RuntimeError if it fails."""
    out_dir = Path(out_dir)
    pattern_file = write_pattern_file(pattern_spec, out_dir / "pattern.yaml")
    argv = loadgen_argv(url, model, pattern_file, out_dir, arrival, **options)
    env = {**os.environ, "PYTHONSAFEPATH": "1", "CI": os.environ.get("CI", "1")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen exited with {done.returncode}: {done.stderr[-2000:]}")
    return json.loads((out_dir / SUMMARY_FILE).read_text())
