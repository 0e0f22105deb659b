"""Deterministic tiny LLMs in the Hugging Face layout KServe's huggingface runtime loads.

Real weights cannot be downloaded here, and the benchmark does not need them: with random
weights the text is gibberish, but vLLM's engine (scheduler, continuous batching, paged KV
cache, streaming, metrics) does the real work, and ``ignore_eos`` plus ``max_tokens`` fix
the output lengths. Each catalogue entry is a Llama (``LlamaForCausalLM``) exported
without torch: numpy arrays written with ``safetensors.numpy``, JSON configs written by
hand, a tokenizer trained offline (``llm_tokenizer``). Exporting twice gives the same bytes.

| name | hidden | interm. | layers | heads/kv | head_dim | vocab | parameters | weights |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
| tiny-llama | 128 | 256 | 2 | 2/1 | 64 | 1024 | 557,696 | 1.1 MB |
| small-llama | 256 | 512 | 4 | 4/2 | 64 | 1024 | 2,885,888 | 5.8 MB |

(weights: model.safetensors in float16.)
head_dim is 64 because vLLM's CPU attention supports it (16 fails with "Unsupported CPU
attention configuration"). Both share one tokenizer, so a dataset made for one fits the
other token for token. A model folder (``OUT/<name>/``) holds::

    config.json  generation_config.json  model.safetensors
    tokenizer.json  tokenizer_config.json  special_tokens_map.json  model-info.yaml

``export_llms`` is the I/O shell: it keeps a folder that is already current (same
fingerprint, same library versions, same file hashes) and otherwise exports into a
temporary folder that is then moved into place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from kservebench.errors import SpecError
from kservebench.models.artifacts import INFO_FILE, read_model_info, write_model_info
from kservebench.models.llm_tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TokenizerSpec,
    special_tokens_map,
    tokenizer_config,
    train_tokenizer,
)

# Bump when the exported layout changes, so existing folders are re-exported.
EXPORT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
LLM_FILES = (
    "config.json",
    "generation_config.json",
    WEIGHTS_FILE,
    TOKENIZER_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
)
INIT_STD = 0.02  # Llama's initializer_range
OnModel = Callable[[str, str], None]  # (model name, "exported" | "kept")


@dataclass(frozen=True)
class LlamaSpec:
    """One catalogue entry: a Llama architecture, its weight seed and its tokenizer."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    description: str
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    dtype: str = "float16"  # the safetensors arrays; vLLM casts to its --dtype on load
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight by its Hugging Face Llama name, in export order."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for n in range(self.num_hidden_layers):
            p = f"model.layers.{n}"
            shapes[f"{p}.self_attn.q_proj.weight"] = (h, h)
            shapes[f"{p}.self_attn.k_proj.weight"] = (kv * self.head_dim, h)
            shapes[f"{p}.self_attn.v_proj.weight"] = (kv * self.head_dim, h)
            shapes[f"{p}.self_attn.o_proj.weight"] = (h, h)
            shapes[f"{p}.mlp.gate_proj.weight"] = (i, h)
            shapes[f"{p}.mlp.up_proj.weight"] = (i, h)
            shapes[f"{p}.mlp.down_proj.weight"] = (h, i)
            shapes[f"{p}.input_layernorm.weight"] = (h,)
            shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    def parameter_count(self) -> int:
        return sum(int(np.prod(s)) for s in self.tensor_shapes().values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Stable hash of the entry and the export format."""
        text = json.dumps({"format": EXPORT_FORMAT, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


LLM_CATALOG: dict[str, LlamaSpec] = {
    spec.name: spec
    for spec in (
        LlamaSpec("tiny-llama", 128, 256, 2, 2, 1, "Llama, 2 layers of width 128 (0.56 M)"),
        LlamaSpec("small-llama", 256, 512, 4, 4, 2, "Llama, 4 layers of width 256 (2.9 M)"),
    )
}
LLM_NAMES: list[str] = list(LLM_CATALOG)


def get_llm_spec(name: str, field_path: str = "model") -> LlamaSpec:
    try:
        return LLM_CATALOG[name]
    except KeyError:
        known = ", ".join(LLM_NAMES)
        raise SpecError(field_path, name, f"unknown LLM; known: {known}") from None


def hf_config(spec: LlamaSpec) -> dict[str, Any]:
    """``config.json`` as transformers' LlamaConfig reads it."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "initializer_range": INIT_STD,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": spec.dtype,
    }


def generation_config() -> dict[str, Any]:
    return {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}


def make_weights(spec: LlamaSpec) -> dict[str, np.ndarray]:
    """Random normal weights (std 0.02), RMSNorm weights 1.

    Each tensor has its own stream, seeded by (seed, crc32 of its name), so a tensor's
    values do not depend on which other tensors exist."""
    tensors: dict[str, np.ndarray] = {}
    for name, shape in spec.tensor_shapes().items():
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, dtype=spec.dtype)
            continue
        rng = np.random.default_rng([spec.seed, zlib.crc32(name.encode())])
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
        tensors[name] = values.astype(spec.dtype)
    return tensors


@functools.lru_cache(maxsize=4)
def tokenizer_json(spec: TokenizerSpec) -> str:
    """``tokenizer.json``'s text (trained once per process: the models share it)."""
    return train_tokenizer(spec).to_str(pretty=True) + "\n"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in ("numpy", "safetensors", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def llm_info(spec: LlamaSpec, model_dir: Path) -> dict[str, Any]:
    """The metadata written as model-info.yaml, like the tabular models' (plain types)."""
    files = {name: sha256_file(model_dir / name) for name in LLM_FILES}
    return {
        "name": spec.name,
        "library": "transformers",
        "framework": "huggingface",  # KServe's huggingface runtime (vLLM backend)
        "architecture": "LlamaForCausalLM",
        "description": spec.description,
        "artifact": WEIGHTS_FILE,
        "size_bytes": (model_dir / WEIGHTS_FILE).stat().st_size,
        "parameters": spec.parameter_count(),
        "dtype": spec.dtype,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "tokens": {
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID,
            "bos_added_by_tokenizer": True,
        },
        "seed": spec.seed,
        "spec": spec.as_dict(),
        "files": files,
        "fingerprint": spec.fingerprint(),
        "versions": library_versions(),
    }


def export_llm(spec: LlamaSpec, model_dir: Path) -> dict[str, Any]:
    """Write ``spec`` into the (existing) folder ``model_dir``; returns its metadata."""
    from safetensors.numpy import save_file

    model_dir = Path(model_dir)
    _write_json(model_dir / "config.json", hf_config(spec))
    _write_json(model_dir / "generation_config.json", generation_config())
    # "format": "pt" is what transformers expects of a safetensors checkpoint it loads.
    save_file(make_weights(spec), str(model_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (model_dir / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; others serve it
    (model_dir / TOKENIZER_FILE).write_text(tokenizer_json(spec.tokenizer))
    _write_json(model_dir / "tokenizer_config.json", tokenizer_config(spec.tokenizer))
    _write_json(model_dir / "special_tokens_map.json", special_tokens_map())
    info = llm_info(spec, model_dir)
    write_model_info(model_dir, info)
    return info


def is_current_llm(model_dir: Path, spec: LlamaSpec) -> bool:
    """True when ``model_dir`` holds ``spec`` as this code and these libraries export it."""
    try:
        info = read_model_info(model_dir)
    except SpecError:
        return False
    files = info.get("files")
    if (
        info.get("fingerprint") != spec.fingerprint()
        or info.get("versions") != library_versions()
        or not isinstance(files, dict)
        or sorted(files) != sorted(LLM_FILES)
    ):
        return False
    return all(
        (model_dir / name).is_file() and sha256_file(model_dir / name) == digest
        for name, digest in files.items()
    )


def resolve_llm_names(names: list[str] | None, field_path: str = "models") -> list[str]:
    """Catalogue order, without duplicates; all LLMs when ``names`` is None or empty."""
    if not names:
        return list(LLM_NAMES)
    for i, name in enumerate(names):
        get_llm_spec(name, f"{field_path}[{i}]")
    return [n for n in LLM_NAMES if n in set(names)]


def export_llms(
    out_dir: Path,
    names: list[str] | None = None,
    *,
    force: bool = False,
    on_model: OnModel | None = None,
) -> dict[str, Path]:
    """Export (or keep, when already current) the named LLMs as ``out_dir/<name>/``.

    Returns ``{name: model directory}`` in catalogue order; an unknown name raises
    SpecError before anything is written."""
    out_dir = Path(out_dir)
    selected = resolve_llm_names(names)
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs: dict[str, Path] = {}
    for name in selected:
        spec = LLM_CATALOG[name]
        target = out_dir / name
        event = "kept"
        if force or not is_current_llm(target, spec):
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
            try:
                export_llm(spec, staging)
                staging.chmod(0o755)  # mkdtemp makes 0700 folders; others may serve them
                if target.exists():
                    shutil.rmtree(target, ignore_errors=True)
                try:
                    staging.rename(target)
                except OSError:  # another process exported the same model meanwhile
                    if not is_current_llm(target, spec):
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            event = "exported"
        dirs[name] = target
        if on_model is not None:
            on_model(name, event)
    return dirs


def load_tokenizer(model_dir: Path) -> Any:
    """The ``tokenizers.Tokenizer`` of an exported model (what vLLM's tokenizer wraps)."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise SpecError("model_dir", str(model_dir), f"no {TOKENIZER_FILE} (export it first)")
    return Tokenizer.from_file(str(path))


__all__ = [
    "INFO_FILE",
    "LLM_CATALOG",
    "LLM_FILES",
    "LLM_NAMES",
    "LlamaSpec",
    "export_llm",
    "export_llms",
    "get_llm_spec",
    "load_tokenizer",
]
