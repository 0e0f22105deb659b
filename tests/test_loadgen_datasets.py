"""LLM datasets: length distributions, seeds, prompts of an exact token count, spec errors.

Token counts are checked with the tiny LLM's own tokenizer.json, loaded by ``tokenizers``
as vLLM's tokenizer wraps it (special tokens included, as /v1/completions counts them)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kservebench.errors import SpecError
from kservebench.loadgen.datasets import (
    SHAREGPT,
    Fixed,
    LLMRequest,
    LogNormal,
    Uniform,
    count_tokens,
    make_requests,
    min_prompt_tokens,
    parse_dataset,
    parse_lengths,
    prompt_with_tokens,
)
from kservebench.models.llm import export_llms, load_tokenizer

SAMPLES = 200_000


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    model_dir = export_llms(tmp_path_factory.mktemp("llm"), ["tiny-llama"])["tiny-llama"]
    return load_tokenizer(model_dir)


def draw(spec, role: str = "input", seed: int = 1) -> np.ndarray:
    return parse_lengths(spec, "lengths", role).sample(np.random.default_rng(seed), SAMPLES)


def test_fixed_and_uniform_lengths():
    assert parse_lengths(128) == Fixed(128)
    assert np.all(draw({"type": "fixed", "tokens": 64}) == 64)
    values = draw({"type": "uniform", "min": 10, "max": 20})
    assert values.dtype == np.int64
    assert set(np.unique(values)) == set(range(10, 21))  # both ends included
    assert values.mean() == pytest.approx(15, abs=0.05)
    assert parse_lengths({"type": "uniform", "min": 10, "max": 20}).mean() == 15


def test_lognormal_from_mean_and_sigma():
    lengths = parse_lengths({"type": "lognormal", "mean": 220, "sigma": 0.8})
    values = lengths.sample(np.random.default_rng(2), SAMPLES)
    assert lengths.mean() == pytest.approx(220, rel=1e-3)  # clipping at min 1 barely moves it
    assert values.mean() == pytest.approx(220, rel=0.02)
    assert np.std(np.log(values)) == pytest.approx(0.8, rel=0.03)
    assert values.min() >= 1


def test_lognormal_from_median_and_p90_clipped():
    spec = {"type": "lognormal", "median": 150, "p90": 500, "min": 20, "max": 1000}
    values = draw(spec)
    assert np.median(values) == pytest.approx(150, rel=0.02)
    assert np.percentile(values, 90) == pytest.approx(500, rel=0.03)
    assert values.min() == 20 and values.max() == 1000  # clipped, so the bounds are hit
    assert values.mean() == pytest.approx(parse_lengths(spec).mean(), rel=0.02)


def test_sharegpt_lengths_have_the_published_means_and_vllms_bounds():
    for role, published in SHAREGPT.items():
        lengths = parse_lengths({"type": "sharegpt"}, "lengths", role)
        values = lengths.sample(np.random.default_rng(3), SAMPLES)
        assert lengths.mean() == pytest.approx(published["mean"], rel=1e-4)
        assert values.mean() == pytest.approx(published["mean"], rel=0.02)
        assert values.min() >= 4 and values.max() <= 1024
        # Truncated, not clipped: no spike at the upper bound, a long right tail.
        assert np.mean(values == 1024) < 0.001
        assert np.median(values) < 0.8 * values.mean()
    prompts = draw({"type": "sharegpt"}, "input")
    answers = draw({"type": "sharegpt"}, "output")
    assert np.std(np.log(prompts)) > np.std(np.log(answers))
    narrowed = draw({"type": "sharegpt", "max": 256}, "output")
    assert narrowed.max() <= 256 and narrowed.mean() < 200


def test_as_dict_reads_back_into_the_same_distribution():
    for spec, role in [
        (64, "input"),
        ({"type": "uniform", "min": 1, "max": 9}, "input"),
        ({"type": "lognormal", "mean": 100, "sigma": 0.5, "max": 900}, "output"),
        ({"type": "sharegpt", "max": 512}, "output"),
    ]:
        lengths = parse_lengths(spec, "x", role)
        again = parse_lengths(lengths.as_dict(), "x", role)
        if isinstance(lengths, LogNormal):
            assert math.isclose(again.mu, lengths.mu) and again.sigma == lengths.sigma
            assert (again.min, again.max, again.truncate) == (
                lengths.min,
                lengths.max,
                lengths.truncate,
            )
        else:
            assert again == lengths


def test_prompts_have_exactly_the_asked_token_count(tokenizer):
    rng = np.random.default_rng(7)
    least = min_prompt_tokens(tokenizer)
    assert least == 2  # one text token + the BOS the tokenizer adds
    for n in [*range(least, 260), 511, 1000, 1024, 2047]:
        prompt = prompt_with_tokens(tokenizer, n, rng)
        assert len(tokenizer.encode(prompt).ids) == n, (n, prompt)
        assert count_tokens(tokenizer, prompt) == n
    assert prompt_with_tokens(tokenizer, 2, rng).strip()  # never an empty prompt


def test_prompts_are_words_and_reproducible(tokenizer):
    a = prompt_with_tokens(tokenizer, 300, np.random.default_rng(1))
    b = prompt_with_tokens(tokenizer, 300, np.random.default_rng(1))
    c = prompt_with_tokens(tokenizer, 300, np.random.default_rng(2))
    assert a == b and a != c
    assert a[0].isupper() and len(a.split()) > 100
    assert tokenizer.decode(tokenizer.encode(a).ids) == a


@pytest.mark.parametrize("n", [1, 0, -3, True, 2.5])
def test_too_short_or_bad_prompt_lengths_are_spec_errors(tokenizer, n):
    with pytest.raises(SpecError) as err:
        prompt_with_tokens(tokenizer, n, np.random.default_rng(0), field="input")
    assert err.value.field == "input" and err.value.value == n


def test_datasets_are_seeded_and_exact(tokenizer):
    spec = {
        "requests": 200,
        "input": {"type": "sharegpt", "max": 700},
        "output": {"type": "uniform", "min": 16, "max": 64},
        "seed": 11,
        "max_model_len": 1024,
    }
    requests = make_requests(tokenizer, parse_dataset(spec))
    assert len(requests) == 200 and all(isinstance(r, LLMRequest) for r in requests)
    assert all(count_tokens(tokenizer, r.prompt) == r.prompt_tokens for r in requests)
    assert all(16 <= r.max_tokens <= 64 for r in requests)
    assert all(r.prompt_tokens + r.max_tokens <= 1024 for r in requests)
    assert make_requests(tokenizer, parse_dataset(spec)) == requests
    other_seed = make_requests(tokenizer, parse_dataset({**spec, "seed": 12}))
    assert [r.prompt for r in other_seed] != [r.prompt for r in requests]
    # Prompts and input lengths come from their own streams: other outputs, same prompts.
    other_output = make_requests(tokenizer, parse_dataset({**spec, "output": 32}))
    assert [r[:2] for r in other_output] == [r[:2] for r in requests]
    assert {r.max_tokens for r in other_output} == {32}
    assert parse_dataset(parse_dataset(spec).as_dict()) == parse_dataset(spec)


def test_dataset_lengths_below_the_tokenizer_minimum_name_the_field(tokenizer):
    for lengths, field in [
        (1, "dataset.input.tokens"),
        ({"type": "uniform", "min": 1, "max": 5}, "dataset.input.min"),
    ]:
        dataset = parse_dataset({"requests": 3, "input": lengths, "output": 8})
        with pytest.raises(SpecError) as err:
            make_requests(tokenizer, dataset)
        assert err.value.field == field and err.value.value == 1


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        ({"type": "gaussian"}, "in.type", "gaussian"),
        ({"tokens": 5}, "in.type", None),
        ("many", "in", "many"),
        (0, "in", 0),
        ({"type": "fixed", "tokens": 0}, "in.tokens", 0),
        ({"type": "fixed", "tokens": "5"}, "in.tokens", "5"),
        ({"type": "fixed"}, "in.tokens", None),
        ({"type": "fixed", "tokens": 5, "max": 9}, "in.max", 9),
        ({"type": "uniform", "min": 10, "max": 5}, "in.max", 5),
        ({"type": "uniform", "min": 10}, "in.max", None),
        ({"type": "lognormal", "mean": 100}, "in.sigma", None),
        ({"type": "lognormal", "mean": 100, "median": 90, "sigma": 1}, "in.mean", 100),
        ({"type": "lognormal", "mean": -1, "sigma": 1}, "in.mean", -1),
        ({"type": "lognormal", "median": 100, "p90": 50}, "in.p90", 50),
        ({"type": "lognormal", "median": 100, "p90": 200, "sigma": 1}, "in.p90", 200),
        ({"type": "lognormal", "median": 100, "sigma": math.inf}, "in.sigma", math.inf),
        ({"type": "lognormal", "median": 100, "sigma": 1, "min": 50, "max": 10}, "in.max", 10),
        ({"type": "sharegpt", "sigma": 2}, "in.sigma", 2),
        ({"type": "sharegpt", "min": 10000, "max": 20000}, "in", None),
    ],
)
def test_bad_length_specs_name_the_field_and_value(spec, field, value):
    with pytest.raises(SpecError) as err:
        parse_lengths(spec, "in", "input")
    assert err.value.field == field
    if value is not None:
        assert err.value.value == value
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ([], "dataset"),
        ({"input": 8, "output": 8}, "dataset.requests"),
        ({"requests": 0, "input": 8, "output": 8}, "dataset.requests"),
        ({"requests": 2, "output": 8}, "dataset.input"),
        ({"requests": 2, "input": 8, "output": {"type": "nope"}}, "dataset.output.type"),
        ({"requests": 2, "input": 8, "output": 8, "seed": -1}, "dataset.seed"),
        ({"requests": 2, "input": 8, "output": 8, "prompts": 3}, "dataset.prompts"),
        (
            {"requests": 2, "input": 600, "output": 600, "max_model_len": 1024},
            "dataset.max_model_len",
        ),
        (
            {
                "requests": 2,
                "input": {"type": "lognormal", "median": 9, "sigma": 1},
                "output": 8,
                "max_model_len": 1024,
            },
            "dataset.max_model_len",
        ),
    ],
)
def test_bad_dataset_specs_name_the_field(spec, field):
    with pytest.raises(SpecError) as err:
        parse_dataset(spec)
    assert err.value.field == field


def test_uniform_and_fixed_are_plain_values():
    # Frozen and comparable: a parsed spec can be recorded and compared across runs.
    assert parse_lengths({"type": "uniform", "min": 3, "max": 4}) == Uniform(3, 4)
    with pytest.raises(AttributeError):
        Fixed(3).tokens = 4  # type: ignore[misc]
