"""Benchmark of the validation gate: read_batch and validate on a large demo batch.

    python bench/validation.py [--rows 1000000] [--gzip] [--keep DIR]

Prints figures (rows, seconds, rows/s) against the goal (validate 1M rows in < 5 s). It never
asserts a timing: machines differ; the figures are for people.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

GOAL_ROWS = 1_000_000
GOAL_SECONDS = 5.0
ROWS_PER_DAY = 50_000


def _line(label: str, rows: int, seconds: float) -> str:
    return f"{label:<32} {rows:>10,} rows {seconds:>8.2f} s {rows / seconds if seconds else float('inf'):>12,.0f} rows/s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=GOAL_ROWS)
    ap.add_argument("--gzip", action="store_true", help="write and read a .csv.gz batch")
    ap.add_argument("--keep", type=Path, default=None, help="write the batch here (default: a temp dir)")
    ap.add_argument("--worst-case", action="store_true",
                    help="also time the rejection of the same batch with one bad value in its last row "
                         "(the fast typed pass fails at the end and the string pass runs)")
    args = ap.parse_args(argv)

    from include.spec import load_spec

    spec = load_spec("sessions")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-validation-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, spec, workdir)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, spec, workdir: Path) -> int:
    import pandas as pd

    from include.demo_data import make_batch, write_batch
    from include.validation import BatchRejected, read_batch, validate

    path = workdir / ("bench.csv.gz" if args.gzip else "bench.csv")

    t0 = time.perf_counter()
    days, left, day = [], args.rows, 0
    while left > 0:
        n = min(ROWS_PER_DAY, left)
        days.append(make_batch(day, n))
        left -= n
        day += 1
    frame = pd.concat(days, ignore_index=True)
    del days
    write_batch(frame, path)
    t_gen = time.perf_counter() - t0
    print(f"generated {args.rows:,} rows over {day} day(s) in {t_gen:.1f} s -> {path} "
          f"({path.stat().st_size / 1e6:,.1f} MB)")

    t0 = time.perf_counter()
    import great_expectations  # noqa: F401  (the import is a one-off cost, timed on its own)

    t_import = time.perf_counter() - t0

    t0 = time.perf_counter()
    df = read_batch(path, spec, max_bytes=10 * 1024**3, max_rows=args.rows + 1)
    t_read = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = validate(df, spec, batch=path.name)
    t_validate = time.perf_counter() - t0

    t_worst = None
    if args.worst_case:
        frame["pages_viewed"] = frame["pages_viewed"].astype(object)
        frame.loc[frame.index[-1], "pages_viewed"] = "many"
        bad_path = write_batch(frame, workdir / f"bad-{path.name}")
        t0 = time.perf_counter()
        try:
            read_batch(bad_path, spec, max_bytes=10 * 1024**3, max_rows=args.rows + 1)
        except BatchRejected as err:
            t_worst = time.perf_counter() - t0
            print(f"worst case rejected as {err.kind}: {err}")
    del frame

    rows = len(df)
    print()
    print(f"{'import great_expectations':<32} {'':>15} {t_import:>8.2f} s  (once per process)")
    print(_line("read_batch", rows, t_read))
    print(_line("validate (GX suite)", rows, t_validate))
    print(_line("read + validate", rows, t_read + t_validate))
    if t_worst is not None:
        print(_line("read_batch, worst-case reject", rows, t_worst))
    print(f"suite: {report.statistics.get('evaluated_expectations')} expectations, success={report.success}")
    if rows >= GOAL_ROWS:
        per_million = t_validate * GOAL_ROWS / rows
        verdict = "meets" if per_million < GOAL_SECONDS else "MISSES"
        print(f"goal: validate {GOAL_ROWS:,} rows in < {GOAL_SECONDS:.0f} s -> {per_million:.2f} s per "
              f"{GOAL_ROWS:,} rows: {verdict} the goal")
    else:
        print(f"goal: validate {GOAL_ROWS:,} rows in < {GOAL_SECONDS:.0f} s (run with --rows {GOAL_ROWS} to "
              "compare; fixed costs dominate small runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
