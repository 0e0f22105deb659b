"""Strict structural check of a manifest against the KServe SDK's model classes.

The KServe Python SDK (and the kubernetes client it builds on) describes every field of
an InferenceService in each model class's ``openapi_types`` (python name -> type name)
and ``attribute_map`` (python name -> JSON name). Walking those recursively finds any
misspelt or invented field anywhere in a manifest, plus wrong value types, without a
cluster. A few type names in the generated SDK point at classes it does not ship;
``TYPE_ALIASES`` maps them to the kubernetes client class or scalar they stand for.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import kserve.models
import kubernetes.client

from kservebench.errors import SpecError

QUANTITY = "quantity"  # int-or-string
TYPE_ALIASES = {
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
    "ResourceQuantity": QUANTITY,
    "V1beta1MetricQuantity": QUANTITY,
    "V1Time": "datetime",
    "KnativeURL": "str",
    "KnativeVolatileTime": "datetime",
    "KnativeDevServingPkgApisServingV1TrafficTarget": "object",
}
SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str, datetime),
    "date": (str, date),
    QUANTITY: (str, int, float),
}
_LIST = re.compile(r"^(?:list|List)\[(.*)\]$")
_DICT = re.compile(r"^(?:dict|Dict)\((?:str), (.*)\)$|^Dict\[str, (.*)\]$")


def model_class(type_name: str) -> type | None:
    """The SDK class for a type name (KServe first, then the kubernetes client)."""
    type_name = TYPE_ALIASES.get(type_name, type_name)
    return getattr(kserve.models, type_name, None) or getattr(kubernetes.client, type_name, None)


def validate_model(value: Any, type_name: str, path: str = "") -> None:
    """Raise SpecError at the first field of ``value`` that ``type_name`` does not allow.

    ``path`` is the dotted JSON path of ``value`` (e.g. ``spec.predictor``) for messages.
    """
    type_name = TYPE_ALIASES.get(type_name, type_name)
    where = path or "(root)"
    if value is None:
        return  # JSON null: "not set", valid for any optional field
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            raise SpecError(where, value, f"must be a list ({type_name})")
        for index, item in enumerate(value):
            validate_model(item, match.group(1), f"{path}[{index}]")
        return
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            raise SpecError(where, value, f"must be a mapping ({type_name})")
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(where, key, "mapping keys must be strings")
            validate_model(item, match.group(1) or match.group(2), f"{path}.{key}")
        return
    if type_name in SCALARS:
        allowed = SCALARS[type_name]
        wrong_bool = isinstance(value, bool) and bool not in allowed and object not in allowed
        if wrong_bool or not isinstance(value, allowed):
            raise SpecError(where, value, f"must be {type_name}")
        return
    cls = model_class(type_name)
    if cls is None:
        raise SpecError(where, value, f"has SDK type {type_name!r}, which no SDK class defines")
    if not isinstance(value, dict):
        raise SpecError(where, value, f"must be a mapping ({type_name})")
    json_to_python = {json: python for python, json in cls.attribute_map.items()}
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if key not in json_to_python:
            known = ", ".join(sorted(json_to_python))
            raise SpecError(child, item, f"is not a field of {type_name} (known: {known})")
        validate_model(item, cls.openapi_types[json_to_python[key]], child)


def validate_inference_service(manifest: dict[str, Any]) -> None:
    """Strictly check an InferenceService manifest against ``V1beta1InferenceService``."""
    validate_model(manifest, "V1beta1InferenceService")
    if manifest.get("apiVersion") != "serving.kserve.io/v1beta1":
        raise SpecError(
            "apiVersion", manifest.get("apiVersion"), "must be serving.kserve.io/v1beta1"
        )
    if manifest.get("kind") != "InferenceService":
        raise SpecError("kind", manifest.get("kind"), "must be InferenceService")
