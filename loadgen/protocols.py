"""What one request looks like, per protocol: pure builders of paths and bodies.

- ``v1``: KServe v1, ``POST /v1/models/<name>:predict`` with ``{"instances": [...]}``
- ``v2``: Open Inference Protocol, ``POST /v2/models/<name>/infer`` with one FP32 tensor
- ``openai``: OpenAI-compatible ``/v1/completions`` (or ``/v1/chat/completions`` with
  ``chat``) with ``stream: true``, under a configurable prefix (KServe's huggingface
  runtime serves them under ``/openai``)

Bodies are serialised once, up front: the load generator's CPU goes to sending, not to
JSON encoding. A batch of N takes N consecutive sample instances, cycling, so requests
vary over the samples the model was trained to expect.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kservebench.errors import SpecError

PROTOCOLS = ("v1", "v2", "openai")


@dataclass(frozen=True)
class RequestTemplate:
    """The requests of a run: one path, a few pre-encoded bodies used in turn."""

    protocol: str
    path: str
    bodies: tuple[bytes, ...]
    streaming: bool = False

    def body(self, index: int) -> bytes:
        return self.bodies[index % len(self.bodies)]


def _check_instances(instances: Any, field: str) -> list[list[float]]:
    if not isinstance(instances, Sequence) or isinstance(instances, str) or not instances:
        raise SpecError(field, instances, "expected a non-empty list of instances (rows)")
    rows: list[list[float]] = []
    width = None
    for i, row in enumerate(instances):
        if not isinstance(row, Sequence) or isinstance(row, str) or not row:
            raise SpecError(f"{field}[{i}]", row, "expected a list of numbers (one row)")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SpecError(f"{field}[{i}][{j}]", value, "expected a number")
            if not math.isfinite(value):
                raise SpecError(f"{field}[{i}][{j}]", value, "expected a finite number")
        if width is not None and len(row) != width:
            raise SpecError(f"{field}[{i}]", row, f"expected {width} features like row 0")
        width = len(row)
        rows.append([float(v) for v in row])
    return rows


def _batches(rows: list[list[float]], batch: int) -> list[list[list[float]]]:
    """Enough distinct batches that every sample row is used at least once."""
    count = max(1, len(rows) // math.gcd(len(rows), batch))
    return [[rows[(k * batch + j) % len(rows)] for j in range(batch)] for k in range(count)]


def v1_template(model: str, instances: Any, batch: int = 1) -> RequestTemplate:
    rows = _check_instances(instances, "instances")
    bodies = tuple(json.dumps({"instances": b}).encode() for b in _batches(rows, batch))
    return RequestTemplate("v1", f"/v1/models/{model}:predict", bodies)


def v2_template(model: str, instances: Any, batch: int = 1) -> RequestTemplate:
    rows = _check_instances(instances, "instances")
    bodies = []
    for rows_in_batch in _batches(rows, batch):
        tensor = {
            "name": "input-0",
            "shape": [len(rows_in_batch), len(rows_in_batch[0])],
            "datatype": "FP32",
            "data": [v for row in rows_in_batch for v in row],
        }
        bodies.append(json.dumps({"inputs": [tensor]}).encode())
    return RequestTemplate("v2", f"/v2/models/{model}/infer", tuple(bodies))


def openai_template(
    model: str,
    prompts: Sequence[str],
    max_tokens: int | Sequence[int] = 64,
    chat: bool = False,
    prefix: str = "/openai",
) -> RequestTemplate:
    """One body per prompt; ``max_tokens`` one for all or one per prompt. Output lengths
    are exact (``ignore_eos``): a benchmark fixes them, a random model would stop anywhere."""
    if not prompts:
        raise SpecError("prompts", prompts, "expected at least one prompt")
    lengths = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    if len(lengths) != len(prompts):
        raise SpecError("max_tokens", len(lengths), f"need one per prompt ({len(prompts)})")
    bodies = []
    for prompt, tokens in zip(prompts, lengths, strict=True):
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise SpecError("max_tokens", tokens, "expected a whole number >= 1")
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
            # Ask for the usage chunk so token counts come from the server, not a guess.
            "stream_options": {"include_usage": True},
        }
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        bodies.append(json.dumps(body).encode())
    route = "/v1/chat/completions" if chat else "/v1/completions"
    return RequestTemplate("openai", prefix.rstrip("/") + route, tuple(bodies), streaming=True)


def read_dataset_file(path: Path) -> tuple[list[str], list[int]]:
    """Prompts and output lengths of an LLM dataset file: JSON lines with ``prompt`` and
    ``max_tokens`` (``kservebench.loadgen.datasets`` writes them; request i takes line i)."""
    prompts: list[str] = []
    lengths: list[int] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise SpecError("dataset_file", str(path), f"cannot be read: {err.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            prompt, tokens = entry["prompt"], entry["max_tokens"]
        except (ValueError, KeyError, TypeError):
            raise SpecError(
                f"dataset_file:{number}", line[:80], "expected JSON with prompt and max_tokens"
            ) from None
        if not isinstance(prompt, str) or isinstance(tokens, bool) or not isinstance(tokens, int):
            raise SpecError(f"dataset_file:{number}", line[:80], "prompt text, integer max_tokens")
        prompts.append(prompt)
        lengths.append(tokens)
    if not prompts:
        raise SpecError("dataset_file", str(path), "holds no requests")
    return prompts, lengths


def build_template(
    protocol: str,
    model: str,
    batch: int = 1,
    instances: Any = None,
    prompts: Sequence[str] = (),
    max_tokens: int | Sequence[int] = 64,
    chat: bool = False,
    openai_prefix: str = "/openai",
) -> RequestTemplate:
    if protocol not in PROTOCOLS:
        raise SpecError("protocol", protocol, f"expected one of {', '.join(PROTOCOLS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SpecError("batch", batch, "expected a whole number >= 1")
    if protocol == "openai":
        return openai_template(model, prompts or ["Hello"], max_tokens, chat, openai_prefix)
    if instances is None:
        raise SpecError("instances", None, "give --model-dir, --payload or --instances")
    builder = v1_template if protocol == "v1" else v2_template
    return builder(model, instances, batch)


def load_instances(
    model_dir: Path | None = None, payload: Path | None = None, inline: str | None = None
) -> list[list[float]] | None:
    """Sample rows from a trained model's info file, a JSON payload file, or inline JSON.

    A payload file holds either a list of rows or a v1 body ``{"instances": [...]}``.
    """
    if inline is not None:
        try:
            data = json.loads(inline)
        except json.JSONDecodeError as exc:
            raise SpecError("instances", inline, f"not valid JSON: {exc.msg}") from None
        return _check_instances(data, "instances")
    if payload is not None:
        try:
            data = json.loads(Path(payload).read_text())
        except OSError as exc:
            raise SpecError("payload", str(payload), f"cannot read it: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise SpecError("payload", str(payload), f"not valid JSON: {exc.msg}") from None
        if isinstance(data, dict):
            data = data.get("instances")
        return _check_instances(data, "payload.instances")
    if model_dir is not None:
        from kservebench.models.artifacts import read_model_info

        info = read_model_info(Path(model_dir))
        return _check_instances(info.get("sample_instances"), "model_dir.sample_instances")
    return None
