"""Batch scoring: `mlflow models predict` vs this project's batch path, same model, same rows.

    python bench/batch_score.py [--rows 1000000] [--big-files 10] [--family hgb]

1M rows of the demo dataset as CSV: `mlflow models predict --env-manager local -t csv` vs the
batch_score path (plan -> score partitions -> finalize, in one process: read, validate, score,
write parquet, manifest, MLflow run); then 10M rows (ten 1M-row CSV files: the first file under
ten names, since generating 10M rows takes longer than scoring them) through the batch path.
The two 1M runs alternate (mlflow, ours, mlflow, ours; --repeat) so a shared machine's load hits
both alike; each figure is the better of its runs, and each pair's ratios are printed too (with
the load average: on a busy machine the pairs say more than the best-of figures).
Each measurement runs in its own child process; peak RSS is that child's (and its own children's)
peak RSS sampled from /proc. Prints figures, asserts nothing. Runs in a throw-away state dir.
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

ROOT = Path(__file__).resolve().parent.parent


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(args: list[str], env: dict) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MiB of the child's process tree, exit status, CPU seconds of the tree).

    CPU seconds (user + system, from getrusage of the waited-for children) move less than wall
    time when other jobs share the machine.

    RSS is sampled from /proc every 20 ms (summed over the child and its descendants), because
    ru_maxrss of a forked child starts from the parent's peak and would hide a smaller child.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty child never blocks
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, sum(_rss_kib(p) for p in _tree(proc.pid)))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            log.seek(0)
            print(log.read()[-3000:], file=sys.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, peak / 1024, proc.returncode, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-files", type=int, default=10, help="files of --rows rows for the large run (0: skip)")
    ap.add_argument("--family", default="hgb")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each peer at --rows")
    a = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    env = {**os.environ, "MLOPS_STATE_DIR": str(state), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}"}
    os.environ.update(env)
    from include.demo_data import make_batch, write_batch
    from include.spec import load_spec
    from include.tracking import client, configure_mlflow
    from include.training.metrics import model_input_columns
    from include.training.train import train_and_register

    spec = load_spec("sessions")
    model = train_and_register(make_batch(0, 20_000), spec, family=a.family, seed=1, reason="bench",
                               run_key="bench-batch", lineage={"dataset": "sessions", "data_rev": "bench",
                                                               "data_md5": "bench", "validation_id": "bench",
                                                               "dag_run_id": "bench"})
    configure_mlflow()
    client().set_registered_model_alias(model["model"], "champion", model["version"])
    uri = f"models:/{model['model']}/{model['version']}"

    data = state / "in"
    t0 = time.perf_counter()
    batch = make_batch(1, a.rows)
    write_batch(batch, data / "day00.csv")
    batch[model_input_columns(spec)].to_csv(state / "features.csv", index=False)  # mlflow's input: the signature
    del batch
    many = state / "many"
    many.mkdir()
    for day in range(max(1, a.big_files)):
        os.link(data / "day00.csv", many / f"day{day:02d}.csv")
    print(f"sessions {a.family} model v{model['version']}; wrote {max(1, a.big_files)} x {a.rows:,} rows "
          f"as CSV in {time.perf_counter() - t0:.0f} s ({(data / 'day00.csv').stat().st_size / 2**20:.0f} MiB each)")

    py = sys.executable
    mlflow_cli = str(Path(py).parent / "mlflow")
    results: dict[str, tuple] = {}

    def best(name: str, rows: int, measured: tuple[float, float, int, float]) -> None:
        old = results.get(name)
        results[name] = (rows, *measured) if old is None or measured[0] < old[1] else old
        print(f"  {name}: {measured[0]:.1f} s, {measured[1]:.0f} MiB, {measured[3]:.1f} CPU s", flush=True)

    run = ("import json, sys; from include.batch import job; "
           "m = job.run(json.loads(sys.argv[1]), sys.argv[2]); assert m['scored'] == m['rows_in'], m")
    pairs = []
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    for i in range(max(1, a.repeat)):
        theirs = child([mlflow_cli, "models", "predict", "-m", uri, "-i", str(state / "features.csv"), "-t", "csv",
                        "-o", str(state / "mlflow-out.json"), "--env-manager", "local"], env)
        best("mlflow models predict, 1 file", a.rows, theirs)
        ours = child([py, "-c", run, json.dumps({"dataset": "sessions", "source": str(data / "day00.csv")}),
                      f"bench-1-{i}"], env)
        best("batch_score path, 1 file", a.rows, ours)
        pairs.append((theirs[0] / ours[0], ours[1] / theirs[1], theirs[3] / ours[3]))
        print(f"  pair {i + 1}: {pairs[-1][0]:.2f}x faster, {pairs[-1][1]:.2f}x the peak RSS, "
              f"{pairs[-1][2]:.2f}x less CPU time; "
              f"load average {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    if a.big_files > 1:
        best(f"batch_score path, {a.big_files} files", a.rows * a.big_files,
             child([py, "-c", run, json.dumps({"dataset": "sessions", "source": str(many / "*.csv")}),
                    "bench-n"], env))

    print(f"{'':36} {'rows':>11} {'wall s':>8} {'rows/s':>10} {'peak RSS MiB':>13} {'CPU s':>7}")
    for name, (rows, wall, rss, code, cpu) in results.items():
        flag = "" if code == 0 else f"  (exit {code})"
        print(f"{name:36} {rows:>11,} {wall:>8.1f} {rows / wall:>10,.0f} {rss:>13.0f} {cpu:>7.1f}{flag}")
    base, ours = results["mlflow models predict, 1 file"], results["batch_score path, 1 file"]
    print(f"batch path vs mlflow models predict at {a.rows:,} rows: {base[1] / ours[1]:.2f}x faster, "
          f"{ours[2] / base[2]:.2f}x the peak RSS (best of each; both wall times include process start and model load)")
    speed = sorted(p[0] for p in pairs)
    rss = sorted(p[1] for p in pairs)
    cpu = sorted(p[2] for p in pairs)
    print(f"per alternating pair: {speed[0]:.2f}x..{speed[-1]:.2f}x faster (median {speed[len(speed) // 2]:.2f}x), "
          f"{rss[0]:.2f}x..{rss[-1]:.2f}x the peak RSS, {cpu[0]:.2f}x..{cpu[-1]:.2f}x less CPU time; "
          f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"state dir (delete when done): {state}")


if __name__ == "__main__":
    main()
