"""Benchmark of the drift check: sampled + chunked (include.drift) vs Evidently on the full data.

    python bench/drift.py [--rows 1000000] [--ref-rows 100000] [--sample 50000] [--keep DIR]

Builds a synthetic window of ``--rows`` current rows x 20 features (15 numeric, 5 categorical)
against ``--ref-rows`` reference rows, with real shifts on four features and trivial ones (big
enough to be "significant" on 1M rows, far below the effect floors) on two more. Each variant runs
in its own subprocess so peak RSS (``ru_maxrss``) is its own:

* ``sampled``: this module's check: the current parquet streamed in row batches through the
  seeded bottom-k sampler (``sample_for_drift``), ``compute_drift`` (Evidently scores + scipy tests,
  BH, effect floors) on 50k vs 50k, HTML/JSON report, ``decide_retrain``.
* ``full``: ``pd.read_parquet`` of both files and Evidently ``DataDriftPreset`` (its default
  methods: normed Wasserstein / Jensen-Shannon, threshold 0.1) on all rows, HTML/JSON report.

Prints seconds (check only, and whole process with imports), peak RSS, the speedup, both verdicts
(drifted feature sets and the retrain decision under the same policy) and the per-feature scores
side by side. Goal: >= 10x faster, < 2 GB RSS, same verdict. It asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `include` is the project package

N_NUM, N_CAT = 15, 5
SHIFTED = {"num_00", "num_01", "num_02", "cat_0"}  # real shifts (effect >= 0.25)
TRIVIAL = {"num_03", "cat_1"}  # shifts a 1M-row test calls significant, effect ~0.03
CRITICAL = ("num_00",)
GOAL_SPEEDUP, GOAL_RSS_MB = 10.0, 2048


def bench_spec():
    from include.spec import parse_spec

    cols = {"id": {"dtype": "string"}, "y": {"dtype": "int"}}
    cols.update({f"num_{i:02d}": {"dtype": "float"} for i in range(N_NUM)})
    cols.update({f"cat_{j}": {"dtype": "category", "nullable": True} for j in range(N_CAT)})
    return parse_spec({"name": "bench", "key": "id", "target": "y", "task": "classification",
                       "columns": cols})


def bench_policy():
    from include.drift import DriftPolicy

    return DriftPolicy(critical_features=CRITICAL)


def make_frame(n: int, seed: int, shifted: bool):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    s = 1.0 if shifted else 0.0
    d = {
        "num_00": rng.normal(0.5 * s, 1, n),  # W/std 0.5
        "num_01": rng.normal(0.25 * s, 1, n),  # W/std 0.25
        "num_02": rng.normal(0, 1 + 0.6 * s, n),  # scale: W/std ~0.48
        "num_03": rng.normal(0.03 * s, 1, n),  # trivial
        "num_04": rng.lognormal(3, 1, n),
        "num_05": rng.exponential(5, n),
        "num_06": rng.poisson(7, n).astype(float),
        "num_07": rng.uniform(0, 100, n),
        "num_08": np.where(rng.random(n) < 0.3, rng.normal(-2, 0.5, n), rng.normal(3, 1, n)),
        "num_09": rng.gamma(2, 90, n),
    }
    for i in range(10, N_NUM):
        d[f"num_{i:02d}"] = rng.normal(i, 2, n)
    d["num_05"][rng.random(n) < 0.02] = np.nan
    base8 = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.03])
    p0 = base8 if not shifted else np.array([0.12, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.21])
    p1 = base8 if not shifted else np.array([0.28, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.05])
    letters = np.array(list("abcdefgh"))
    d["cat_0"] = letters[rng.choice(8, n, p=p0)]
    d["cat_1"] = letters[rng.choice(8, n, p=p1)]
    d["cat_2"] = np.array([f"lvl{i:02d}" for i in range(50)])[rng.integers(0, 50, n)]
    d["cat_3"] = np.array(["US", "GB", "DE", "FR", "other"])[rng.choice(5, n, p=[0.4, 0.2, 0.2, 0.1, 0.1])]
    cat4 = np.array(["x", "y", "z"])[rng.integers(0, 3, n)].astype(object)
    cat4[rng.random(n) < 0.05] = None
    d["cat_4"] = cat4
    return pd.DataFrame(d)


def _write(workdir: Path, rows: int, ref_rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(make_frame(ref_rows, 1, False), preserve_index=False),
                   workdir / "reference.parquet", row_group_size=100_000)
    cur_dir = workdir / "current"
    cur_dir.mkdir()
    chunk = 250_000  # the window arrives as several files, as a prediction log would
    for i, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        pq.write_table(pa.Table.from_pandas(make_frame(n, 100 + i, True), preserve_index=False),
                       cur_dir / f"part-{i:03d}.parquet", row_group_size=100_000)


# ---------------------------------------------------------------------------- variants (child)


def _variant_sampled(workdir: Path, sample: int) -> dict:
    import pandas as pd

    from include.drift import compute_drift, decide_retrain, sample_for_drift

    spec, policy = bench_spec(), bench_policy()
    policy = type(policy)(**{**policy.to_dict(), "critical_features": CRITICAL, "sample_size": sample})
    t0 = time.perf_counter()
    reference = pd.read_parquet(workdir / "reference.parquet")
    current = sample_for_drift(workdir / "current", sample, seed=policy.seed + 1)
    res = compute_drift(reference, current, spec, policy=policy, out_dir=workdir / "report-sampled")
    decision = decide_retrain(res, policy, [], now=_now())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows_current": _rows(workdir / "current"), "rows_compared": res.n_current,
            "drifted": sorted(res.drifted_features), "retrain": decision.retrain, "reason": decision.reason,
            "scores": {f.column: f.score for f in res.features}}


def _variant_full(workdir: Path) -> dict:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from include.drift import DriftResult, FeatureDrift, decide_retrain

    spec, policy = bench_spec(), bench_policy()
    t0 = time.perf_counter()
    reference = pd.read_parquet(workdir / "reference.parquet")
    current = pd.read_parquet(workdir / "current")
    definition = DataDefinition(numerical_columns=spec.numeric_features,
                                categorical_columns=spec.categorical_features)
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(current, data_definition=definition),
                                               Dataset.from_pandas(reference, data_definition=definition))
    out = workdir / "report-full"
    out.mkdir(exist_ok=True)
    snapshot.save_html(str(out / "drift_report.html"))
    snapshot.save_json(str(out / "drift_report.json"))
    feats = []
    for m in snapshot.dict()["metrics"]:
        conf = m["config"]
        if conf["type"].endswith(":ValueDrift"):
            # Evidently's verdict: effect >= threshold (0.1); on 1M rows any such effect is significant
            drifted = float(m["value"]) >= float(conf.get("threshold") or 0.1)
            feats.append(FeatureDrift(column=conf["column"], kind="", method=str(conf.get("method")),
                                      score=float(m["value"]), effect_floor=float(conf.get("threshold") or 0.1),
                                      test="", p_value=0.0, p_adjusted=0.0, significant=True, drifted=drifted))
    res = DriftResult(dataset="bench", features=feats, n_reference=len(reference), n_current=len(current),
                      n_reference_total=len(reference), n_current_total=len(current), alpha=policy.alpha,
                      correction="none")
    decision = decide_retrain(res, policy, [], now=_now())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows_current": len(current), "rows_compared": len(current),
            "drifted": sorted(res.drifted_features), "retrain": decision.retrain, "reason": decision.reason,
            "scores": {f.column: f.score for f in feats}}


def _now():
    import datetime as dt

    return dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _rows(path: Path) -> int:
    from include.drift import count_rows

    return count_rows(path)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import evidently  # noqa: F401 - both variants pay the same import; timed apart
    import pandas  # noqa: F401

    import include.drift  # noqa: F401

    imports = time.perf_counter() - t0
    cpu0 = _cpu()
    out = _variant_sampled(args.dir, args.sample) if args.variant == "sampled" else _variant_full(args.dir)
    out["cpu_seconds"] = _cpu() - cpu0  # less sensitive than wall time to other load on the machine
    out["imports_seconds"] = imports
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps(out))
    return 0


# ----------------------------------------------------------------------------------- parent


def _run_child(variant: str, workdir: Path, sample: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--dir", str(workdir),
                           "--sample", str(sample)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{variant} variant failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    out["process_seconds"] = wall
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--ref-rows", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=50_000)
    ap.add_argument("--keep", type=Path, default=None, help="write data and reports here (default: temp dir)")
    ap.add_argument("--variant", choices=("sampled", "full"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.variant:
        return _child(args)

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-drift-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        _write(workdir, args.rows, args.ref_rows)
        print(f"data: {args.rows:,} current x {N_NUM + N_CAT} features ({N_NUM} numeric, {N_CAT} categorical) "
              f"vs {args.ref_rows:,} reference, written as parquet in {time.perf_counter() - t0:.1f} s")
        print(f"shifted on purpose: {sorted(SHIFTED)}; trivial shifts (must not count): {sorted(TRIVIAL)}; "
              f"critical: {list(CRITICAL)}\n")
        sampled = _run_child("sampled", workdir, args.sample)
        full = _run_child("full", workdir, args.sample)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"{'variant':<34} {'check s':>8} {'check cpu s':>12} {'process s':>10} {'imports s':>10} {'peak RSS':>10}")
    for name, r in ((f"sampled ({args.sample:,} per side, chunked)", sampled),
                    ("Evidently DataDriftPreset, full", full)):
        print(f"{name:<34} {r['seconds']:>8.2f} {r['cpu_seconds']:>12.2f} {r['process_seconds']:>10.2f} "
              f"{r['imports_seconds']:>10.2f} "
              f"{r['maxrss_mb']:>7.0f} MB")
    speedup = full["seconds"] / sampled["seconds"]
    speedup_proc = full["process_seconds"] / sampled["process_seconds"]
    speedup_cpu = full["cpu_seconds"] / sampled["cpu_seconds"]
    print(f"\nspeedup: {speedup:.1f}x on the check (wall), {speedup_cpu:.1f}x (CPU), {speedup_proc:.1f}x per "
          f"process incl. interpreter + imports (goal >= {GOAL_SPEEDUP:g}x); "
          f"sampled peak RSS {sampled['maxrss_mb']:.0f} MB (goal < {GOAL_RSS_MB} MB)")
    same_set = sampled["drifted"] == full["drifted"]
    print(f"drifted, sampled: {sampled['drifted']}")
    print(f"drifted, full:    {full['drifted']}")
    print(f"same drifted set: {same_set}; retrain sampled={sampled['retrain']} full={full['retrain']} "
          f"(same decision: {sampled['retrain'] == full['retrain']})")
    print(f"expected drifted: {sorted(SHIFTED)} -> sampled right: {set(sampled['drifted']) == SHIFTED}\n")
    print(f"{'feature':<10} {'sampled score':>14} {'full score':>11} {'diff':>8}")
    for col, s in sampled["scores"].items():
        f = full["scores"].get(col, float("nan"))
        print(f"{col:<10} {s:>14.4f} {f:>11.4f} {s - f:>+8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
