"""The scrape config of a local Prometheus, rendered from Python values.

``scrape_config`` builds prometheus.yml (as a dict) from static jobs (job -> targets) and
file_sd jobs (job -> a targets file); ``target_groups`` is the target-group form that
static_configs and file_sd files share. A target is ``"host:port"`` or ``("host:port",
{label: value})``; every problem is a SpecError naming the job and entry.
``promql_string`` quotes a label value for a selector. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kservebench.errors import SpecError

# A scrape target: "host:port", or ("host:port", {label: value}) with target labels.
Target = str | tuple[str, Mapping[str, str]]

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _split_target(target: Target, where: str) -> tuple[str, dict[str, str]]:
    """(address, labels) of a target in either form, validated."""
    if isinstance(target, str):
        address, labels = target, {}
    else:
        try:
            address, raw_labels = target
            labels = dict(raw_labels)
        except (TypeError, ValueError):
            raise SpecError(where, target, "expected host:port or (host:port, labels)") from None
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit():
        raise SpecError(where, address, "expected host:port")
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
            raise SpecError(
                f"{where}.labels", name, "a label name must match [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if not isinstance(value, str):
            raise SpecError(f"{where}.labels.{name}", value, "a label value must be a string")
    return address, labels


def target_groups(targets: Sequence[Target], where: str = "targets") -> list[dict[str, Any]]:
    """``targets`` as Prometheus target groups, the form static_configs and file_sd share:
    one group per distinct label set in first-seen order (plain addresses: no labels)."""
    if isinstance(targets, str):
        raise SpecError(where, targets, "expected a list of targets, not one string")
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for i, target in enumerate(targets):
        address, labels = _split_target(target, f"{where}[{i}]")
        key = tuple(sorted(labels.items()))
        group = groups.setdefault(key, {"targets": [], **({"labels": labels} if labels else {})})
        group["targets"].append(address)
    return list(groups.values())


def scrape_config(
    targets: Mapping[str, Sequence[Target]],
    scrape_interval: str,
    out_of_order_window: str | None = None,
    file_sd: Mapping[str, str | Path] | None = None,
    refresh_interval: str = "1s",
) -> dict[str, Any]:
    """The prometheus.yml, as a dict: ``targets`` (job -> targets) as static configs and
    ``file_sd`` (job -> targets file; relative to the config file's folder) as file_sd
    configs. A job in both gets both."""
    jobs: dict[str, dict[str, Any]] = {}

    def job_entry(job: str, field: str) -> dict[str, Any]:
        if not job:
            raise SpecError(field, job, "a job name must not be empty")
        entry = {"job_name": job, "scrape_interval": scrape_interval}
        return jobs.setdefault(job, {**entry, "scrape_timeout": scrape_interval})

    for job, entries in targets.items():
        groups = target_groups(entries, f"targets.{job}")
        job_entry(job, "targets")["static_configs"] = groups or [{"targets": []}]
    for job, path in (file_sd or {}).items():
        job_entry(job, "dynamic_jobs")["file_sd_configs"] = [
            {"files": [str(path)], "refresh_interval": refresh_interval}
        ]
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": list(jobs.values()),
    }
    if out_of_order_window:
        config["storage"] = {"tsdb": {"out_of_order_time_window": out_of_order_window}}
    return config


def promql_string(value: str) -> str:
    """``value`` as a PromQL string literal (JSON's escapes are a subset of PromQL's)."""
    return json.dumps(value)
