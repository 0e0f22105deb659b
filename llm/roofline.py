"""How long one engine step takes: a roofline of the (model, GPU) variant plus overheads.

A vLLM step runs every scheduled token through the model once. Its time is bounded by the
larger of two costs, each on one GPU of the tensor-parallel group:

* compute: FLOPs / (peak * MFU), with FLOPs = 2 * matmul params * tokens (the GEMMs) plus
  4 * layers * heads * head_dim per (query, key) pair (QK^T and AV);
* memory: bytes / (bandwidth * MBU), with bytes = the weights (read once per step whatever
  the batch, which is why small-batch decode is memory-bound) + the KV cache read for the
  batch's context + the KV written for the new tokens.

On top of that come a tensor-parallel all-reduce after attention and after the MLP of every
layer (latency + ring traffic; not overlapped with compute in vLLM) and CPU-side costs
(scheduling, input preparation, sampling) per step and per sequence.

The model is linear in its coefficients: ``step_s = coefficients . features(step)``. The
physical terms enter as the features ``roofline_s`` and ``tp_comm_s`` (computed with the
nominal MFU/MBU and scaled by a fitted factor); the token counts enter raw, so a variant
without a roofline (the local CPU model) is a plain linear model in tokens. A calibration
command fits the coefficient vector by least squares on measured steps (or, summed over a
request's steps, on measured requests): ``fit_coefficients``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from kservebench.errors import SpecError

# Order of the feature vector and of the coefficient vector (one coefficient per feature).
FEATURES = (
    "step",  # 1 per step: scheduler, input preparation, kernel launch gaps
    "seqs",  # sequences in the step: per-sequence metadata, sampling, output handling
    "prefill_tokens",  # prompt tokens in the step
    "decode_tokens",  # decode tokens in the step (one per decoding sequence)
    "context_tokens",  # KV tokens read (the context already cached for scheduled sequences)
    "roofline_s",  # max(compute_s, memory_s) at the nominal MFU/MBU
    "tp_comm_s",  # tensor-parallel all-reduce time
)

StepTimeFn = Callable[[int, int, int, int, int], float]


@dataclass(frozen=True)
class StepCoefficients:
    """Coefficients of the step-time model, one per entry of ``FEATURES`` (seconds per unit).

    ``roofline`` and ``tp_comm`` are dimensionless scale factors on the physical terms (1.0
    = the nominal roofline); the others are the CPU-side and per-token costs the roofline
    does not see."""

    overhead_step_s: float = 0.0
    per_seq_s: float = 0.0
    per_prefill_token_s: float = 0.0
    per_decode_token_s: float = 0.0
    per_context_token_s: float = 0.0
    roofline: float = 1.0
    tp_comm: float = 1.0

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=float)

    @classmethod
    def from_vector(cls, values: Sequence[float]) -> StepCoefficients:
        names = [f.name for f in fields(cls)]
        if len(values) != len(names):
            raise SpecError("coefficients", list(values), f"need {len(names)} values")
        return cls(**{n: float(v) for n, v in zip(names, values, strict=True)})


@dataclass(frozen=True)
class Roofline:
    """Per-GPU work and speed of one step of a (model, GPU, tensor parallel) variant."""

    flops_per_token: float  # 2 * matmul params / tp
    attn_flops_per_pair: float  # 4 * layers * heads * head_dim / tp
    weight_bytes: float  # weights one GPU reads every step
    kv_bytes_per_token: float  # KV bytes of one token on one GPU (all layers, K and V)
    peak_flops: float  # dense BF16 FLOP/s of one GPU
    mem_bw: float  # bytes/s of one GPU
    mfu: float  # achievable fraction of peak FLOP/s on large GEMMs
    mbu: float  # achievable fraction of memory bandwidth on streaming reads
    tensor_parallel: int = 1
    allreduces_per_step: int = 0  # 2 per layer when tensor_parallel > 1
    allreduce_bytes_per_token: float = 0.0  # hidden * activation bytes
    allreduce_bw: float = math.inf  # achievable ring bus bandwidth, bytes/s per GPU
    allreduce_latency_s: float = 0.0  # fixed cost of one small all-reduce

    def compute_s(self, tokens: float, attention_pairs: float) -> float:
        flops = self.flops_per_token * tokens + self.attn_flops_per_pair * attention_pairs
        return flops / (self.peak_flops * self.mfu)

    def memory_s(self, tokens: float, context_tokens: float) -> float:
        kv = self.kv_bytes_per_token * (context_tokens + tokens)  # read the context, write new
        return (self.weight_bytes + kv) / (self.mem_bw * self.mbu)

    def roofline_s(self, tokens: float, context_tokens: float, attention_pairs: float) -> float:
        return max(self.compute_s(tokens, attention_pairs), self.memory_s(tokens, context_tokens))

    def tp_comm_s(self, tokens: float) -> float:
        if self.allreduces_per_step == 0 or tokens <= 0:
            return 0.0
        tp = self.tensor_parallel
        ring = 2.0 * (tp - 1) / tp * self.allreduce_bytes_per_token * tokens / self.allreduce_bw
        return self.allreduces_per_step * (self.allreduce_latency_s + ring)


@dataclass(frozen=True)
class StepTimeModel:
    """Seconds of one engine step, from what the scheduler put in it.

    A step is described by five counts: sequences, prefill tokens, decode tokens, context
    tokens read from the KV cache, and attention (query, key) pairs. Without a roofline the
    physical features are 0 and only the linear token terms count."""

    coefficients: StepCoefficients
    roofline: Roofline | None = None

    def features(
        self,
        num_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        context_tokens: int,
        attention_pairs: int,
    ) -> np.ndarray:
        tokens = prefill_tokens + decode_tokens
        rf = self.roofline
        roof = rf.roofline_s(tokens, context_tokens, attention_pairs) if rf and tokens else 0.0
        comm = rf.tp_comm_s(tokens) if rf else 0.0
        step = 1.0 if num_seqs else 0.0
        counts = [step, num_seqs, prefill_tokens, decode_tokens, context_tokens]
        return np.array([*counts, roof, comm], dtype=float)

    def feature_matrix(self, steps: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        """Features of many steps; ``steps`` has one row of the five counts per step."""
        rows = np.asarray(steps, dtype=float).reshape(-1, 5)
        return np.array([self.features(*(int(v) for v in row)) for row in rows]).reshape(
            -1, len(FEATURES)
        )

    def step_s(
        self,
        num_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        context_tokens: int,
        attention_pairs: int,
    ) -> float:
        return self.compile()(
            num_seqs, prefill_tokens, decode_tokens, context_tokens, attention_pairs
        )

    def decode_step_s(self, batch: int, context_per_seq: int) -> float:
        """One pure-decode step of ``batch`` sequences holding ``context_per_seq`` tokens each."""
        ctx = batch * context_per_seq
        return self.step_s(batch, 0, batch, ctx, ctx + batch)

    def prefill_step_s(self, prompt_tokens: int) -> float:
        """One step prefilling a whole prompt alone (what an idle engine's TTFT is made of)."""
        pairs = prompt_tokens * (prompt_tokens + 1) // 2
        return self.step_s(1, prompt_tokens, 0, 0, pairs)

    def compile(self) -> StepTimeFn:
        """A closure computing ``step_s`` with every constant folded in: the engine calls it
        once per simulated step, so it avoids attribute look-ups and array building."""
        c = self.coefficients
        c_step, c_seq = c.overhead_step_s, c.per_seq_s
        c_pf, c_dc, c_ctx = c.per_prefill_token_s, c.per_decode_token_s, c.per_context_token_s
        rf = self.roofline
        if rf is None:

            def linear(seqs: int, pf: int, dc: int, ctx: int, pairs: int) -> float:
                if seqs == 0:
                    return 0.0
                return c_step + c_seq * seqs + c_pf * pf + c_dc * dc + c_ctx * ctx

            return linear
        flop_s = 1.0 / (rf.peak_flops * rf.mfu)
        k_tok, k_pair = rf.flops_per_token * flop_s, rf.attn_flops_per_pair * flop_s
        byte_s = 1.0 / (rf.mem_bw * rf.mbu)
        m_w, m_kv = rf.weight_bytes * byte_s, rf.kv_bytes_per_token * byte_s
        c_roof = c.roofline
        if rf.allreduces_per_step and rf.tensor_parallel > 1:
            tp = rf.tensor_parallel
            comm_0 = c.tp_comm * rf.allreduces_per_step * rf.allreduce_latency_s
            comm_tok = (
                c.tp_comm
                * rf.allreduces_per_step
                * 2.0
                * (tp - 1)
                / tp
                * rf.allreduce_bytes_per_token
                / rf.allreduce_bw
            )
        else:
            comm_0 = comm_tok = 0.0

        def roofline(seqs: int, pf: int, dc: int, ctx: int, pairs: int) -> float:
            if seqs == 0:
                return 0.0
            tokens = pf + dc
            compute = k_tok * tokens + k_pair * pairs
            memory = m_w + m_kv * (ctx + tokens)
            roof = compute if compute > memory else memory
            return (
                c_step
                + c_seq * seqs
                + c_pf * pf
                + c_dc * dc
                + c_ctx * ctx
                + c_roof * roof
                + (comm_0 + comm_tok * tokens if tokens else 0.0)
            )

        return roofline


def fit_coefficients(
    model: StepTimeModel,
    features: np.ndarray,
    measured_s: np.ndarray,
    free: Sequence[str] = ("overhead_step_s", "per_seq_s", "roofline"),
) -> StepTimeModel:
    """``model`` with the ``free`` coefficients refitted by least squares.

    ``features`` is ``(n, len(FEATURES))``: rows of ``feature_matrix`` for measured steps, or
    sums of those rows over each measured request's steps (the model is linear, so a
    request's time is the coefficient vector times its summed features). Coefficients not
    in ``free`` keep their values and their share is subtracted first. Plain least squares:
    a negative value means the data cannot tell the terms apart; fit fewer of them."""
    names = [f.name for f in fields(StepCoefficients)]
    unknown = [n for n in free if n not in names]
    if unknown:
        raise SpecError("free", unknown, f"must be among {names}")
    x = np.asarray(features, dtype=float).reshape(-1, len(names))
    y = np.asarray(measured_s, dtype=float).reshape(-1)
    if len(y) != len(x):
        raise SpecError("measured_s", len(y), f"need one value per feature row ({len(x)})")
    coef = model.coefficients.vector()
    idx = [names.index(n) for n in free]
    fixed = [i for i in range(len(names)) if i not in idx]
    residual = y - x[:, fixed] @ coef[fixed]
    solution, *_ = np.linalg.lstsq(x[:, idx], residual, rcond=None)
    coef[idx] = solution
    return StepTimeModel(StepCoefficients.from_vector(coef), model.roofline)
