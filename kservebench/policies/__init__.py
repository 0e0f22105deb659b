"""Scaling policies as pure decisions: observations in, desired replicas out, no I/O.

One module per policy: ``hpa`` (the Kubernetes HorizontalPodAutoscaler), ``kpa`` (the
Knative Pod Autoscaler), and for LLM servers ``slo`` (ours: SLO- and KV-cache-aware, with
its latency and capacity estimates in ``slo_model``), the llm-d Workload Variant Autoscaler
baselines ``wva`` (V1 saturation analyzer) and ``wva_v2`` (token analyzer and cost-aware
optimizer), and ``llm_hpa`` (HPA/KEDA on vLLM's queue, HPA on CPU); ``llm_signals`` holds
the inputs they share. The simulator (``kservebench.sim``), the local control plane
(``kservebench.local``) and the operator all import them from here, so a decision made in
a simulation is the one the live loops make on real replicas.
"""
