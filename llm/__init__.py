"""LLM serving: a pure model of a vLLM-style engine on a GPU variant (continuous batching,
chunked prefill, paged KV cache, preemption; step times from a roofline model), shared by the
simulator and the vLLM-compatible emulator."""
