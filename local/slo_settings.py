"""The ``autoscaler:`` block of an experiment in ``mode: slo``: which LLM policy scales the
replicas and with what parameters, validated before any process starts.

::

    mode: slo
    scaling: {minReplicas: 1, maxReplicas: 4}      # scaleToZero: true -> minReplicas 0
    slo: {ttft_ms: 1000, itl_ms: 50}               # the SLO policy's targets
    autoscaler:
      policy: slo          # slo (ours) | wva-v1 | wva-v2 | keda-waiting | hpa-cpu
      interval: 5s         # one decision every ...; default: the policy's own
      scrape: 1s           # replicas' /metrics read every ... (the peak views' samples)
      params: {headroom: 0.2, coldStart: 15s}      # the policy's scalar parameters

``params`` keys are the policy's parameter fields in camelCase; those ending in ``_s`` drop
the suffix and take a duration (``cold_start_s`` -> ``coldStart: 15s``). The policy table
is the simulator's (``kservebench.sim.llm_autoscale.POLICIES``), so both run the same calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kservebench.errors import SpecError

FIELDS = {"policy", "interval", "scrape", "params"}
DEFAULT_POLICY = "slo"
DEFAULT_SCRAPE_S = 1.0
SLO_FIELDS = ("ttft_ms", "itl_ms", "e2e_ms")  # set in the experiment's slo: block
SCALARS = (bool, int, float, type(None))


@dataclass(frozen=True)
class SloSettings:
    policy: str
    params: Any  # the policy's params dataclass, every bound applied
    min_replicas: int
    max_replicas: int
    scale_to_zero: bool
    scrape_s: float

    @property
    def interval_s(self) -> float:
        return float(self.params.interval_s)

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "interval_s": self.interval_s,
            "scrape_s": self.scrape_s,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "scale_to_zero": self.scale_to_zero,
            "params": repr(self.params),
        }


def camel(name: str) -> str:
    """``cold_start_s`` -> ``coldStart``; ``kv_target`` -> ``kvTarget``."""
    base = name[:-2] if name.endswith("_s") else name
    head, *rest = base.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def tunable(params_cls: type) -> dict[str, str]:
    """camelCase key -> field, for the scalar fields a spec may set (not the SLO targets)."""
    out = {}
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name in SLO_FIELDS or not isinstance(default, SCALARS):
            continue
        out[camel(f.name)] = f.name
    return out


def _value(raw: Any, field_name: str, where: str) -> Any:
    from kservebench.loadgen.patterns import parse_duration

    if field_name.endswith("_s") and isinstance(raw, str):
        return float(parse_duration(raw, where))
    return raw


def parse_autoscaler(
    value: Any,
    scaling: Any,
    llm_slos: Mapping[str, float],
    cpu_request_cores: float = 1.0,
    where: str = "autoscaler",
) -> SloSettings:
    """The block as ``SloSettings``; ``scaling`` is the experiment's parsed scaling block
    (replica bounds, scale to zero), ``llm_slos`` its ``slo:`` targets."""
    from kservebench.sim.llm_autoscale import POLICIES

    value = {} if value is None else value
    if not isinstance(value, Mapping):
        raise SpecError(where, value, "must be a mapping")
    for key in value:
        if key not in FIELDS:
            known = ", ".join(sorted(FIELDS))
            raise SpecError(f"{where}.{key}", value[key], f"unknown field (known: {known})")
    policy = value.get("policy", DEFAULT_POLICY)
    if policy not in POLICIES:
        raise SpecError(f"{where}.policy", policy, f"must be one of {', '.join(POLICIES)}")
    kind = POLICIES[policy]
    params_cls = type(kind.params())
    raw_params = value.get("params", {}) or {}
    if not isinstance(raw_params, Mapping):
        raise SpecError(f"{where}.params", raw_params, "must be a mapping")
    keys = tunable(params_cls)
    overrides: dict[str, Any] = {}
    for key, raw in raw_params.items():
        at = f"{where}.params.{key}"
        if key in {camel(s) for s in SLO_FIELDS}:
            raise SpecError(at, raw, f"is set in the experiment's slo: block ({key} -> slo.*_ms)")
        if key not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise SpecError(at, raw, f"unknown parameter of policy {policy} (known: {known})")
        overrides[keys[key]] = _value(raw, keys[key], at)
    if policy == "slo":
        overrides |= {k: float(v) for k, v in llm_slos.items() if k in SLO_FIELDS}
    scale_to_zero = bool(scaling.scale_to_zero)
    fields = {f.name for f in dataclasses.fields(params_cls)}
    if "scale_to_zero" in fields:
        overrides["scale_to_zero"] = scale_to_zero
    elif scale_to_zero:
        raise SpecError("scaling.scaleToZero", True, f"policy {policy} cannot scale to zero")
    if "cpu_request_cores" in fields:
        overrides.setdefault("cpu_request_cores", cpu_request_cores)
    if "interval" in value:
        overrides["interval_s"] = _value(value["interval"], "interval_s", f"{where}.interval")
    params = _build(params_cls, overrides, scaling, where)
    scrape = _value(value.get("scrape", DEFAULT_SCRAPE_S), "scrape_s", f"{where}.scrape")
    if isinstance(scrape, bool) or not isinstance(scrape, int | float) or scrape <= 0:
        raise SpecError(f"{where}.scrape", value.get("scrape"), "must be a duration above 0")
    if scrape > float(params.interval_s):
        raise SpecError(f"{where}.scrape", value.get("scrape"), "must not exceed the interval")
    return SloSettings(
        policy,
        params,
        scaling.min_replicas,
        scaling.max_replicas,
        scale_to_zero,
        float(scrape),
    )


def _build(params_cls: type, overrides: dict[str, Any], scaling: Any, where: str) -> Any:
    """The params with the overrides; an HPA-based policy's HPA gets the interval and the
    replica bounds. A bad value raises the policy's own SpecError, renamed to the key."""
    interval = overrides.pop("interval_s", None)
    if interval is not None:
        interval = _positive(interval, f"{where}.interval")
    fields = {f.name for f in dataclasses.fields(params_cls)}
    if "interval_s" in fields and interval is not None:
        overrides["interval_s"] = interval
    try:
        params = params_cls(**overrides)
        if "hpa" in fields:
            rules: dict[str, Any] = {"min_replicas": max(1, scaling.min_replicas)}
            rules["max_replicas"] = scaling.max_replicas
            if interval is not None:
                rules["sync_period_s"] = interval
            params = replace(params, hpa=replace(params.hpa, **rules))
    except SpecError as err:
        key = camel(err.field) if err.field in fields else err.field
        raise SpecError(f"{where}.params.{key}", err.value, err.problem) from None
    except TypeError as err:  # a wrong type the policy's check did not catch
        raise SpecError(f"{where}.params", overrides, str(err)) from None
    return params


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SpecError(where, value, "must be a duration above 0")
    return float(value)
