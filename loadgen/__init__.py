"""Traffic generation: patterns (pure rate(t) and arrival times), Locust-driven load with
lossless per-request records, and the ``kservebench loadgen`` command.

- ``patterns``: ``parse_pattern``, ``Pattern.rate/phase/duration_s``, ``arrival_offsets``,
  ``parse_duration`` (pure; the simulator imports them)
- ``protocols``: request paths and bodies (KServe v1, v2/Open Inference, OpenAI streaming)
- ``recorder`` / ``summary`` / ``streaming``: records.csv rows, summary.json, token timing
- ``runner``: ``run_load(LoadConfig)`` with Locust (imports Locust: a process of its own)
- ``cli``: the ``kservebench loadgen`` command; ``mmpp``: bursty example traces
- ``endpoint``: a small real HTTP endpoint for tests and the capacity benchmark
"""
