"""LLM datasets: prompts of an exact token count, and the requests a dataset spec makes.
Pure: no I/O, no server; numpy and a ``tokenizers.Tokenizer`` only.

A dataset is ``{requests: N, input: <lengths>, output: <lengths>, seed: 0,
max_model_len: 1024?}``, where ``<lengths>`` is a length distribution
(``kservebench.loadgen.lengths``; its names stay importable from here); ``make_requests``
turns it into N ``LLMRequest(prompt, prompt_tokens, max_tokens)``. Token counting follows
vLLM's ``/v1/completions``: the prompt is encoded with the tokenizer's special tokens, so
``prompt_tokens`` includes the BOS the tiny LLMs' tokenizer adds, and is exactly the
server's ``usage.prompt_tokens``. (A chat request adds its template's tokens on top.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from kservebench.errors import SpecError
from kservebench.loadgen.lengths import (
    LENGTH_TYPES,
    ROLES,
    SHAREGPT,
    Fixed,
    Lengths,
    LogNormal,
    SpecFields,
    Uniform,
    fit_truncated_mu,
    parse_lengths,
)

__all__ = [  # the length distributions live in lengths.py; importable from here too
    "LENGTH_TYPES", "MARK_RATE", "ROLES", "SHAREGPT", "DatasetSpec", "Fixed", "LLMRequest",
    "Lengths", "LogNormal", "Uniform", "check_fits", "count_tokens", "fit_truncated_mu",
    "make_requests", "min_prompt_tokens", "parse_dataset", "parse_lengths", "prompt_with_tokens",
]  # fmt: skip

# --- prompts of an exact token count ----------------------------------------------------

_WORD = re.compile(r" [a-z]+")
_HEAD = re.compile(r"[A-Z][a-z]*")
_MARK = re.compile(r"[.,;?!]")
MARK_RATE = 0.08  # share of pieces that are punctuation (after a word, never two in a row)


@dataclass(frozen=True)
class _Pieces:
    """Texts that are one token each, alone and in a row, for one tokenizer."""

    specials: int  # tokens the tokenizer adds to a single text (the BOS)
    heads: tuple[str, ...]  # a first word: no leading space
    words: tuple[str, ...]  # " word": the byte-level pre-tokenizer keeps the space on it
    marks: tuple[str, ...]


_PIECES: dict[int, tuple[Any, _Pieces]] = {}  # id(tokenizer) -> (tokenizer, pieces)


def _pieces(tokenizer: Any) -> _Pieces:
    cached = _PIECES.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:  # holding it keeps the id unique
        return cached[1]
    texts = [tokenizer.decode([i]) for i in range(tokenizer.get_vocab_size())]
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    single = [t for t, e in zip(texts, encoded, strict=True) if len(e.ids) == 1]
    pieces = _Pieces(
        specials=tokenizer.num_special_tokens_to_add(False),
        heads=tuple(t for t in single if _HEAD.fullmatch(t)),
        words=tuple(t for t in single if _WORD.fullmatch(t)),
        marks=tuple(t for t in single if _MARK.fullmatch(t)),
    )
    if not pieces.heads or not pieces.words:
        raise SpecError("tokenizer", "tokenizer.json", "has no single-token words to build from")
    if len(_PIECES) >= 8:
        _PIECES.pop(next(iter(_PIECES)))
    _PIECES[id(tokenizer)] = (tokenizer, pieces)
    return pieces


def min_prompt_tokens(tokenizer: Any) -> int:
    """The shortest prompt: one text token plus the special tokens (BOS)."""
    return _pieces(tokenizer).specials + 1


def count_tokens(tokenizer: Any, text: str) -> int:
    """What vLLM's /v1/completions reports as prompt_tokens for ``text``."""
    return len(tokenizer.encode(text, add_special_tokens=True).ids)


def prompt_with_tokens(
    tokenizer: Any, n: int, rng: np.random.Generator, field: str = "prompt_tokens"
) -> str:
    """A text prompt that ``tokenizer`` encodes, special tokens included, to exactly n ids.

    Built from single-token words (the byte-level pre-tokenizer splits before each space,
    so their counts add up), then checked by encoding the whole text and, should a
    tokenizer merge across pieces, corrected one piece at a time."""
    pieces = _pieces(tokenizer)
    least = pieces.specials + 1
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < least:
        raise SpecError(field, n, f"a prompt needs at least {least} tokens (text + special tokens)")
    n = int(n)
    parts = [pieces.heads[rng.integers(len(pieces.heads))]]
    words = rng.integers(len(pieces.words), size=n)
    marks = rng.integers(len(pieces.marks), size=n) if pieces.marks else None
    punctuate = rng.random(n) < MARK_RATE
    for i in range(n - least):
        if marks is not None and punctuate[i] and not _MARK.fullmatch(parts[-1]):
            parts.append(pieces.marks[marks[i]])
        else:
            parts.append(pieces.words[words[i]])
    text = "".join(parts)
    # The first count is right with the tiny LLMs' tokenizer (see the tests); the loop
    # only corrects tokenizers whose merges cross the pieces.
    for _ in range(2 * n):
        got = count_tokens(tokenizer, text)
        if got == n:
            return text
        if got < n:
            parts.append(pieces.words[rng.integers(len(pieces.words))])
        elif len(parts) > 1:
            parts.pop()
        else:
            break
        text = "".join(parts)
    raise SpecError(field, n, "this tokenizer cannot make a prompt of exactly that length")


# --- datasets ------------------------------------------------------------------------------


class LLMRequest(NamedTuple):
    """One request of a dataset; ``prompt_tokens`` counts the BOS (vLLM's usage count)."""

    prompt: str
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class DatasetSpec:
    requests: int
    input: Lengths
    output: Lengths
    seed: int = 0
    max_model_len: int | None = None  # vLLM's --max-model-len: prompt + output must fit

    def as_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"requests": self.requests, "seed": self.seed}
        spec |= {"input": self.input.as_dict(), "output": self.output.as_dict()}
        return spec | ({} if self.max_model_len is None else {"max_model_len": self.max_model_len})


def parse_dataset(spec: Any, field: str = "dataset") -> DatasetSpec:
    """``{requests, input, output, seed?, max_model_len?}``; errors name ``field.key``."""
    if not isinstance(spec, Mapping):
        raise SpecError(field, spec, "expected a mapping such as {requests: 100, input: ...}")
    f = SpecFields(spec, field)
    f.used.discard("type")
    requests = f.tokens("requests")
    f.used |= {"input", "output", "seed"}
    for key in ("input", "output"):
        if spec.get(key) is None:
            raise SpecError(f.path(key), None, "is required (a token count or {type: ...})")
    lengths_in = parse_lengths(spec["input"], f.path("input"), "input")
    lengths_out = parse_lengths(spec["output"], f.path("output"), "output")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f.path("seed"), seed, "expected a whole number >= 0")
    max_model_len = f.tokens("max_model_len", None)
    f.check_unknown("a dataset")
    dataset = DatasetSpec(requests, lengths_in, lengths_out, seed, max_model_len)
    check_fits(dataset, field)
    return dataset


def check_fits(dataset: DatasetSpec, field: str = "dataset") -> None:
    """Every prompt + output must fit ``max_model_len`` (vLLM rejects what does not)."""
    if dataset.max_model_len is None:
        return
    worst_in, worst_out = dataset.input.high, dataset.output.high
    if worst_in is None or worst_out is None or worst_in + worst_out > dataset.max_model_len:
        raise SpecError(
            f"{field}.max_model_len",
            dataset.max_model_len,
            f"input can reach {worst_in or 'any number of'} and output "
            f"{worst_out or 'any number of'} tokens: bound them (input.max, output.max) "
            "so that they sum to at most max_model_len",
        )


def make_requests(tokenizer: Any, dataset: DatasetSpec, field: str = "dataset") -> list[LLMRequest]:
    """``dataset.requests`` requests, the same for the same seed and tokenizer.

    Input lengths, output lengths and prompt texts come from three independent streams of
    the seed, so changing the output distribution keeps the prompts."""
    check_fits(dataset, field)
    least = min_prompt_tokens(tokenizer)
    if dataset.input.low < least:
        raise SpecError(
            f"{field}.input.{dataset.input.low_key}",
            dataset.input.low,
            f"prompts need at least {least} tokens with this tokenizer (text + special tokens)",
        )
    streams = np.random.SeedSequence(dataset.seed).spawn(3)
    rng_in, rng_out, rng_text = (np.random.default_rng(s) for s in streams)
    prompt_tokens = dataset.input.sample(rng_in, dataset.requests)
    max_tokens = dataset.output.sample(rng_out, dataset.requests)
    return [
        LLMRequest(prompt_with_tokens(tokenizer, int(n), rng_text), int(n), int(m))
        for n, m in zip(prompt_tokens, max_tokens, strict=True)
    ]
