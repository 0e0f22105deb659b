"""How long a full report takes for a big run: 1 million request records plus one hour
of 1 s series for 20 metric families (``make bench-analysis``). Target: under 30 s.

The run is synthetic (kservebench.analysis.synthetic) and written to a temporary folder
first; only ``build_report`` (load records and series, compute every metric, plot, write
HTML/Markdown/JSON) is timed.

    python benchmarks/analysis_speed.py [--records 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from kservebench.analysis.report import build_report
from kservebench.analysis.synthetic import SyntheticSpec, write_run

TARGET_S = 30.0
MODELS = ("sklearn-small", "xgboost-small")
PATTERNS = ("steady", "step")  # step triples its rate halfway: 1 + 2 = 3 units per model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--families", type=int, default=20)
    parser.add_argument("--keep", type=Path, default=None, help="write the run here and keep it")
    args = parser.parse_args()

    # steady at r plus step at r then 3r = 3r per model on average.
    rps = args.records / (args.duration_s * len(MODELS) * 3)
    canonical = 6  # replicas x2, cpu, memory, predict count and buckets
    spec = SyntheticSpec(
        duration_s=args.duration_s,
        models=MODELS,
        patterns=PATTERNS,
        rps=rps,
        zero_stretches=((600.0, 640.0), (2400.0, 2430.0)),
        extra_families=max(0, args.families - canonical),
        name="speed",
    )
    root = args.keep or Path(tempfile.mkdtemp(prefix="kservebench-analysis-speed-"))
    try:
        t0 = time.perf_counter()
        run_dir = write_run(root / "run", spec)
        print(f"generated the run in {time.perf_counter() - t0:.1f} s: {run_dir}")
        t0 = time.perf_counter()
        written = build_report([run_dir], root / "report")
        elapsed = time.perf_counter() - t0
        summary = json.loads(written["json"].read_text())
        families = len(list((run_dir / "series").glob("*.parquet")))
        print(
            f"{summary['requests']:,} records, {families} series families over "
            f"{args.duration_s:.0f} s at 1 s -> full report in {elapsed:.1f} s "
            f"(target < {TARGET_S:.0f} s): {'OK' if elapsed < TARGET_S else 'TOO SLOW'}"
        )
        print(f"cold starts found: {summary['cold_starts']['count']} (2 per model expected)")
        return 0 if elapsed < TARGET_S else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
