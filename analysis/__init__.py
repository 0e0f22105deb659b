"""Analysis: Prometheus series + request records -> metrics -> reports.

- ``catalog``: PromQL per metric family, with alternatives per source (KServe, kube-state-
  metrics, HPA, Knative <= 1.18 and >= 1.19, cAdvisor, local process metrics, vLLM).
- ``collect``: queries a run's window into tidy parquet tables (``DIR/series/``).
- ``prometheus_local``: ``LocalPrometheus`` (a real Prometheus child process) and a
  remote-write client.
- ``series``, ``latency``, ``coldstart``, ``scaling``, ``windows``: pure metric functions.
- ``verdict``: runs of different modes judged per model and pattern; when scale to zero pays.
- ``simcompare``: a live-autoscaled local run against its simulated projection.
- ``summary``, ``tables``, ``fmt``, ``plots``, ``plots_scaling``, ``report``, ``cli``:
  ``kservebench analyze`` and ``report``.
- ``synthetic``: deterministic synthetic runs for tests, fixtures and benchmarks.
"""
