"""Benchmark the synthetic data generator against a raw numpy baseline.

    python benchmarks/bench_generate.py [--n_interactions 1000000]

Each measurement runs in a fresh child process so that its peak RSS (``ru_maxrss``) is its own
and no import or allocator state leaks between the two. The baseline draws the same number of
uniformly random (user, item, type, timestamp) tuples with numpy and builds a DataFrame: the
floor that any generator producing that many rows pays.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIME_GOAL_S = 10.0
RSS_GOAL_MB = 2048.0


def _shape(n_interactions: int) -> tuple[int, int]:
    # 1M interactions -> 10k users, 50k items; smaller runs keep the same proportions
    return max(1, n_interactions // 100), max(12, n_interactions // 20)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _child_generate(n: int) -> dict[str, Any]:
    from generation.dataset_gen_amazon import GeneratorConfig, generate, write

    n_users, n_items = _shape(n)
    t0 = time.perf_counter()
    ds = generate(GeneratorConfig(n_users, n_items, n))
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        write(ds, Path(out))
        t2 = time.perf_counter()
    return {"n_users": n_users, "n_items": n_items, "generate_s": t1 - t0, "write_s": t2 - t1,
            "total_s": t2 - t0, "stages_s": ds.timings, "preference_share": ds.realized_preference_share,
            "peak_rss_mb": _peak_rss_mb()}


def _child_baseline(n: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    n_users, n_items = _shape(n)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    end = np.datetime64("2026-11-01T00:00:00", "ns").astype(np.int64)
    types = np.array(["positive_view", "negative_view", "cart", "purchase", "rate"], dtype=object)
    ts = end - rng.integers(0, 90 * 86_400 * 10**9, n)
    df = pd.DataFrame({
        "user": rng.integers(0, n_users, n),
        "item": rng.integers(0, n_items, n),
        "interaction_type": types[rng.integers(0, len(types), n)],
        "timestamp": pd.DatetimeIndex(ts.view("M8[ns]")).tz_localize("UTC"),
    })
    return {"generate_s": time.perf_counter() - t0, "rows": len(df), "peak_rss_mb": _peak_rss_mb()}


def _in_child(kind: str, n: int) -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--n_interactions", str(n)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {kind!r} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(n_interactions: int = 1_000_000) -> dict[str, Any]:
    """Time and peak RSS of the generator and of the numpy baseline, each in its own process."""
    gen = _in_child("generate", n_interactions)
    base = _in_child("baseline", n_interactions)
    return {
        "n_interactions": n_interactions,
        "n_users": gen["n_users"],
        "n_items": gen["n_items"],
        "generate_s": gen["generate_s"],
        "write_s": gen["write_s"],
        "total_s": gen["total_s"],
        "stages_s": gen["stages_s"],
        "peak_rss_mb": gen["peak_rss_mb"],
        "preference_share": gen["preference_share"],
        "baseline_s": base["generate_s"],
        "baseline_peak_rss_mb": base["peak_rss_mb"],
        "ratio": gen["generate_s"] / base["generate_s"],
        "within_goal": gen["total_s"] <= TIME_GOAL_S and gen["peak_rss_mb"] <= RSS_GOAL_MB,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_interactions", "--n-interactions", type=int, default=1_000_000)
    p.add_argument("--child", choices=("generate", "baseline"), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    if args.n_interactions < 1:
        print(f"error: --n_interactions must be >= 1, got {args.n_interactions}", file=sys.stderr)
        return 2
    if args.child:
        child = _child_generate if args.child == "generate" else _child_baseline
        print(json.dumps(child(args.n_interactions)))
        return 0
    r = run(args.n_interactions)
    if args.json:
        print(json.dumps(r))
        return 0
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in r["stages_s"].items())
    print(f"generator  {r['n_interactions']:,} interactions, {r['n_users']:,} users, {r['n_items']:,} items")
    print(f"  generate {r['generate_s']:.2f}s ({stages}), write {r['write_s']:.2f}s, "
          f"total {r['total_s']:.2f}s, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"baseline   numpy draw + DataFrame {r['baseline_s']:.2f}s, "
          f"peak RSS {r['baseline_peak_rss_mb']:.0f} MB")
    print(f"ratio      generate / baseline = {r['ratio']:.1f}x")
    print(f"goal       total <= {TIME_GOAL_S:.0f}s and peak RSS <= {RSS_GOAL_MB:.0f} MB: "
          f"{'met' if r['within_goal'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
