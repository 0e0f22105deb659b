"""Token timing of an OpenAI-compatible streaming response (server-sent events).

Each ``data: {...}`` event of ``/v1/completions`` or ``/v1/chat/completions`` with
``stream: true`` carries a piece of text (``choices[0].text`` or
``choices[0].delta.content``); the optional last event carries ``usage``; ``data: [DONE]``
ends the stream. Measured here:

- ``ttft_ms``: request start -> first event with non-empty text
- ``itl_ms``: mean gap between consecutive text events (inter-token latency)
- ``prompt_tokens`` / ``output_tokens``: from ``usage`` when the server sends it, else
  output tokens = number of text events (one token per event, as vLLM streams)

``tpot_ms`` (time per output token after the first) needs the whole response time, which
ends after the stream: the record writer derives it (``kservebench.records.tpot_ms``).
Unlike ITL it counts tokens, not events, so the two differ when an event carries several.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any


def _text_of(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta") or {}
    return choice.get("text") or delta.get("content") or ""


def read_stream(
    chunks: Iterable[bytes | str],
    started: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Consume the event stream; ``started`` is the request start on the same clock."""
    buffer = b""
    size = 0
    token_times: list[float] = []
    usage: dict[str, Any] = {}
    done = False
    error = ""
    for chunk in chunks:
        data = chunk.encode() if isinstance(chunk, str) else chunk
        size += len(data)
        buffer += data
        # Events end with a blank line; lines inside start with "data:".
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            try:
                event = json.loads(payload)
            except json.JSONDecodeError:
                error = f"bad event: {payload[:80]!r}"
                continue
            if event.get("error"):
                error = str(event["error"])[:200]
            if _text_of(event):
                token_times.append(clock())
            if event.get("usage"):
                usage = event["usage"]
    if not done and not error:
        error = "stream ended without [DONE]"
    gaps = [b - a for a, b in itertools.pairwise(token_times)]
    return {
        "ttft_ms": (token_times[0] - started) * 1000 if token_times else math.nan,
        "itl_ms": (sum(gaps) / len(gaps)) * 1000 if gaps else math.nan,
        "prompt_tokens": usage.get("prompt_tokens", ""),
        "output_tokens": usage.get("completion_tokens", len(token_times)),
        "bytes": size,
        "error": error,
    }
