"""The shared core: lazy CLI, spec errors, record schema, run metadata."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from kservebench.cli import COMMANDS
from kservebench.errors import SpecError
from kservebench.procs import ManagedProcess, free_port
from kservebench.records import RECORD_COLUMNS, coerce_records, read_records
from kservebench.results import finish_run, read_run, start_run


def test_help_lists_every_command_without_importing_locust():
    code = (
        "import sys\n"
        "from kservebench.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'locust' not in sys.modules, 'help imported locust'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert name in out.stdout


def test_spec_error_names_field_and_value():
    err = SpecError("spec.scaling.maxReplicas", 0, "must be >= minReplicas (2)")
    assert "spec.scaling.maxReplicas" in str(err)
    assert "0" in str(err)
    assert err.field == "spec.scaling.maxReplicas"


def test_records_round_trip_through_csv(tmp_path):
    frame = coerce_records(
        pd.DataFrame({"intended_s": [1.0, 2.0], "latency_ms": [5.0, None], "status": [200, None]})
    )
    assert list(frame.columns) == list(RECORD_COLUMNS)
    (tmp_path / "a").mkdir()
    frame.to_csv(tmp_path / "a" / "records.csv", index=False)
    frame.to_csv(tmp_path / "records.csv", index=False)
    back = read_records(tmp_path)
    assert len(back) == 4
    assert back["latency_ms"].isna().sum() == 2
    assert back["status"].tolist() == [200, 0, 200, 0]


def test_run_json_records_versions_and_times(tmp_path):
    run = start_run(tmp_path, "test", {"a": 1})
    assert read_run(tmp_path)["status"] == "running"
    finish_run(tmp_path, run)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["status"] == "finished"
    assert saved["ended_at"] >= saved["started_at"]
    assert saved["versions"]["kserve"]


def test_managed_process_reports_early_exit(tmp_path):
    proc = ManagedProcess(
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "p.log"
    )
    with proc, pytest.raises(RuntimeError, match="boom"):
        proc.wait_ready(lambda: False, 10, "dying process")
    assert free_port() > 0


def _kservebench(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from kservebench.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_subcommand_help_and_usage_errors_exit_cleanly():
    shown = _kservebench("render", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stdout + shown.stderr
    wrong = _kservebench("render", "--no-such-option")
    assert wrong.returncode == 2
    assert "Traceback" not in wrong.stderr
    unknown = _kservebench("no-such-command")
    assert unknown.returncode == 2
    assert "unknown command 'no-such-command'" in unknown.stderr
