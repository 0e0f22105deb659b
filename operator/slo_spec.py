"""The ``spec.slo`` block of ``mode: slo``: objectives and knobs -> ``SloParams``, no I/O.

``SLO_FIELDS`` is the one table of what the block holds: the parser below reads it and
the CRD generator (``crd.py``) builds the schema from it, with the bounds of
``vocabulary.BOUNDS``, so the API server and the operator refuse the same values.
Replica bounds are ``spec.scaling``'s (minReplicas >= 1, maxReplicas; scale to zero
is refused: KServe Standard has nothing that holds a request at zero, so nothing would
tell the loop to come back up; the policy's ``retention_s`` waits for that); the
optional ``variants`` list describes the one way the InferenceService serves the model
(one predictor Deployment: one variant per ModelDeployment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kservebench.errors import SpecError
from kservebench.operator.vocabulary import (
    DEFAULT_PROMETHEUS_ADDRESS,
    check_known,
    parse_duration,
    read_mapping,
    read_number,
    read_string,
)
from kservebench.policies.llm_signals import VariantSpec
from kservebench.policies.slo import SloParams

# spec.slo field -> (SloParams attribute, reader: number | duration | bool, description)
SLO_FIELDS: dict[str, tuple[str, str, str]] = {
    "ttftMs": ("ttft_ms", "number", "Time-to-first-token objective, milliseconds (required)."),
    "itlMs": ("itl_ms", "number", "Inter-token latency objective, milliseconds (required)."),
    "e2eMs": ("e2e_ms", "number", "End-to-end latency objective, milliseconds (optional)."),
    "headroom": ("headroom", "number", "Size to the objectives scaled by 1 - headroom."),
    "kvTarget": ("kv_target", "number", "Fraction of the KV cache a replica may fill."),
    "interval": ("interval_s", "duration", "How often the operator decides (15s)."),
    "coldStart": ("cold_start_s", "duration", "Start-up horizon until one is measured (2m)."),
    "staleAfter": ("stale_after_s", "duration", "Older metrics fail static (60s)."),
    "scaleDownStabilization": (
        "scale_down_stabilization_s",
        "duration",
        "Scale down only below the highest demand of this window (3m).",
    ),
}
REQUIRED_SLO_FIELDS = ("ttftMs", "itlMs")
# spec.slo.variants[] field -> (VariantSpec attribute, description)
VARIANT_FIELDS: dict[str, tuple[str, str]] = {
    "name": ("name", "The variant's name (default: the ModelDeployment's)."),
    "accelerator": ("accelerator", "GPU model, e.g. H100 (informational)."),
    "gpus": ("gpus_per_replica", "GPUs per replica; must equal spec.model.llm.gpus."),
    "costPerHour": ("cost_per_hour", "Cost of one replica-hour (default 10)."),
    "minReplicas": ("min_replicas", "Fewest replicas of the variant."),
    "maxReplicas": ("max_replicas", "Most replicas of the variant."),
}
MAX_VARIANTS = 1  # one InferenceService predictor = one Deployment = one variant


@dataclass(frozen=True)
class SloSpec:
    params: SloParams
    variant: VariantSpec
    prometheus_url: str = DEFAULT_PROMETHEUS_ADDRESS

    def settings(self) -> dict[str, Any]:
        """The resolved settings in spec terms (for the render and the InferenceService)."""
        out: dict[str, Any] = {
            key: getattr(self.params, attr)
            for key, (attr, _, _) in SLO_FIELDS.items()
            if getattr(self.params, attr) is not None
        }
        out["prometheusUrl"] = self.prometheus_url
        v = self.variant
        out["variant"] = {
            "name": v.name,
            "accelerator": v.accelerator,
            "gpus": v.gpus_per_replica,
            "costPerHour": v.cost_per_hour,
            "minReplicas": v.min_replicas,
            "maxReplicas": v.max_replicas,
        }
        return out


def parse_slo(
    raw: Any,
    *,
    name: str,
    gpus: int,
    min_replicas: int,
    max_replicas: int,
    path: str = "spec.slo",
) -> SloSpec:
    """``spec.slo`` -> SloSpec; the replica bounds come from spec.scaling."""
    raw = read_mapping(raw, path)
    check_known(raw, path, {*SLO_FIELDS, "prometheusUrl", "variants"})
    for key in REQUIRED_SLO_FIELDS:
        if raw.get(key) is None:
            raise SpecError(f"{path}.{key}", None, "is required in mode slo (the objective)")
    values: dict[str, Any] = {}
    for key, (attr, reader, _) in SLO_FIELDS.items():
        if raw.get(key) is None:
            continue
        where, bound = f"{path}.{key}", f"slo.{key}"
        if reader == "duration":
            values[attr] = float(parse_duration(raw[key], where, bound))
        else:
            values[attr] = read_number(raw[key], where, bound, integer=False)
    url = read_string(
        raw.get("prometheusUrl", DEFAULT_PROMETHEUS_ADDRESS),
        f"{path}.prometheusUrl",
        r"^https?://",
        "an http(s) URL",
    )
    try:
        params = SloParams(**values)
    except SpecError as err:  # a rule beyond the bounds: name the spec's field
        key = next((k for k, (a, _, _) in SLO_FIELDS.items() if a == err.field), err.field)
        raise SpecError(f"{path}.{key}", err.value, err.problem) from None
    variant = _parse_variants(
        raw.get("variants"), f"{path}.variants", name, gpus, min_replicas, max_replicas
    )
    return SloSpec(params, variant, url)


def _parse_variants(
    raw: Any, path: str, name: str, gpus: int, min_replicas: int, max_replicas: int
) -> VariantSpec:
    if raw is None:
        raw = [{}]
    if not isinstance(raw, list) or not raw:
        raise SpecError(path, raw, "must be a non-empty list")
    if len(raw) > MAX_VARIANTS:
        raise SpecError(
            path,
            len(raw),
            f"at most {MAX_VARIANTS}: one InferenceService runs one predictor Deployment",
        )
    where = f"{path}[0]"
    item = read_mapping(raw[0], where)
    check_known(item, where, set(VARIANT_FIELDS))
    variant_name = name
    if item.get("name") is not None:
        variant_name = read_string(item["name"], f"{where}.name", r"^[a-z0-9]([-a-z0-9]*)$")
    accelerator = ""
    if item.get("accelerator") is not None:
        accelerator = read_string(item["accelerator"], f"{where}.accelerator")
    per_replica = gpus
    if item.get("gpus") is not None:
        per_replica = read_number(item["gpus"], f"{where}.gpus", "slo.variants.gpus")
        if per_replica != gpus:
            raise SpecError(
                f"{where}.gpus", per_replica, f"must equal spec.model.llm.gpus ({gpus})"
            )
    cost = 10.0
    if item.get("costPerHour") is not None:
        cost = read_number(
            item["costPerHour"], f"{where}.costPerHour", "slo.variants.costPerHour", integer=False
        )
    low, high = min_replicas, max_replicas
    if item.get("minReplicas") is not None:
        low = read_number(item["minReplicas"], f"{where}.minReplicas", "slo.variants.minReplicas")
        if low < min_replicas:
            raise SpecError(
                f"{where}.minReplicas", low, f"must be >= spec.scaling.minReplicas ({min_replicas})"
            )
    if item.get("maxReplicas") is not None:
        high = read_number(item["maxReplicas"], f"{where}.maxReplicas", "slo.variants.maxReplicas")
        if high > max_replicas:
            raise SpecError(
                f"{where}.maxReplicas",
                high,
                f"must be <= spec.scaling.maxReplicas ({max_replicas})",
            )
    if high < max(1, low):
        raise SpecError(f"{where}.maxReplicas", high, f"must be >= 1 and >= minReplicas ({low})")
    return VariantSpec(
        name=variant_name,
        accelerator=accelerator,
        gpus_per_replica=per_replica,
        cost_per_hour=cost,
        min_replicas=low,
        max_replicas=high,
    )
