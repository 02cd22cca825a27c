"""Throughput and latency of the project's model server vs `mlflow models serve`, same model, same machine.

    .venv/bin/python bench/serving.py [--seconds 20] [--concurrency 8] [--rows 1] [--only ours|mlflow]

Trains one spec-built pipeline (family "hgb") with include.training into a throw-away MLflow store,
then serves that one registered version twice, one server at a time, each with one worker:

* ours:   python -m include.serving (FastAPI + uvicorn/uvloop/httptools, micro-batching, prediction log on)
* mlflow: mlflow models serve -m models:/NAME/VERSION --env-manager local --workers 1

and drives each with the same closed-loop load: ``--concurrency`` keep-alive connections, each sending
single-row JSON requests back to back, ``--seconds`` per server in total (after a warm-up), split in
``--rounds`` alternating rounds so that background load on the machine hits both servers alike. The load generator is a
minimal HTTP/1.1 client on asyncio streams (so it costs far less CPU than the servers); every
response is checked for status 200. Prints requests/s, p50/p90/p99 latency and the ratios.
Not a pass/fail test: figures depend on the machine (nproc matters: the client shares it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


# -------------------------------------------------------------------------------- load generator


async def _connection(host: str, port: int, request: bytes, stop_at: float, record: bool,
                      latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            else:
                raise RuntimeError("response without Content-Length")
            await reader.readexactly(length)
            if record:
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(str(status))
    finally:
        writer.close()


async def _drive(host, port, request, seconds, concurrency, record):
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, request, stop_at, record, latencies, errors)
                           for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - t0


def load(port: int, path: str, body: bytes, *, seconds: float, concurrency: int, warmup: float) -> dict:
    """Closed-loop load: ``concurrency`` connections posting ``body`` back to back for ``seconds``."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    if warmup:
        asyncio.run(_drive("127.0.0.1", port, request, warmup, concurrency, False))
    if not seconds:
        return {}
    lat, errors, wall = asyncio.run(_drive("127.0.0.1", port, request, seconds, concurrency, True))
    return {"latencies": lat, "errors": len(errors), "wall": wall}


# ---------------------------------------------------------------------------------------- servers


def start(cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--rounds", type=int, default=4, help="alternate between the servers this many times")
    ap.add_argument("--only", choices=["ours", "mlflow"])
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, MLflow store, prediction log)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    env = {**os.environ,
           "MLOPS_STATE_DIR": str(tmp),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "MLFLOW_REGISTRY_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "MLOPS_MLFLOW_ARTIFACT_ROOT": (tmp / "mlartifacts").as_uri(),
           "MLOPS_PREDICTIONS_DIR": str(tmp / "predictions"),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    os.environ.update(env)
    import pandas as pd

    from include.demo_data import make_batch
    from include.spec import load_spec
    from include.training import model_input_columns, train_and_register

    spec = load_spec("sessions")
    t0 = time.perf_counter()
    df = pd.concat([make_batch(d, 3000) for d in range(3)], ignore_index=True)
    reg = train_and_register(df, spec, lineage={"data_rev": "bench", "dataset": "sessions"}, family="hgb",
                             run_key="bench-serving-hgb", reason="bench")
    name, version = reg["model"], reg["version"]
    print(f"model: models:/{name}/{version} (hgb pipeline, trained in {time.perf_counter() - t0:.1f}s)")

    rows = df[model_input_columns(spec)].head(args.rows)
    records = json.loads(rows.to_json(orient="records"))
    ours_body = json.dumps({"instances": records}).encode()
    mlflow_body = json.dumps({"dataframe_records": records}).encode()
    bin_dir = Path(sys.executable).parent

    servers = {
        "ours": ([sys.executable, "-m", "include.serving", "--port", "{port}", "--model-version", version,
                  "--log-level", "warning"], "/ready", "/predict", ours_body),
        "mlflow": ([str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}",
                    "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}", "--workers", "1"],
                   "/ping", "/invocations", mlflow_body),
    }
    labels = [label for label in servers if not args.only or label == args.only]
    procs, ports, results = {}, {}, {}
    try:
        for label in labels:
            cmd, ready_path, _path, _body = servers[label]
            ports[label] = port = free_port()
            procs[label] = start([c.replace("{port}", str(port)) for c in cmd],
                                 {**env, "PATH": f"{bin_dir}:{env['PATH']}"}, tmp / f"{label}.log")
            startup = wait_ready(f"http://127.0.0.1:{port}{ready_path}", procs[label])
            print(f"{label:>6}: ready after {startup:.1f}s")
        # Both servers run; the load alternates between them in short rounds, so a change in the
        # machine's background load hits both alike (the idle one costs next to nothing).
        lat: dict[str, list[float]] = {label: [] for label in labels}
        errs = dict.fromkeys(labels, 0)
        wall = dict.fromkeys(labels, 0.0)
        for label in labels:
            load(ports[label], servers[label][2], servers[label][3], seconds=0, concurrency=args.concurrency,
                 warmup=args.warmup)
        for _ in range(args.rounds):
            for label in labels:
                r = load(ports[label], servers[label][2], servers[label][3], seconds=args.seconds / args.rounds,
                         concurrency=args.concurrency, warmup=0)
                lat[label] += r.pop("latencies")
                errs[label] += r["errors"]
                wall[label] += r["wall"]
    finally:
        for proc in procs.values():
            stop(proc)
    for label in labels:
        xs = sorted(lat[label])

        def pct(p, xs=xs):
            return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000

        r = results[label] = {"requests": len(xs), "errors": errs[label], "rps": len(xs) / wall[label],
                              "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99)}
        print(f"{label:>6}: {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms  "
              f"p99 {r['p99_ms']:7.2f} ms  ({r['requests']} requests, {r['errors']} non-200)")
    if len(results) == 2:
        o, m = results["ours"], results["mlflow"]
        print(f"ratio ours/mlflow: throughput {o['rps'] / m['rps']:.1f}x (goal >= 5x), "
              f"p99 {o['p99_ms'] / m['p99_ms']:.2f}x (goal <= 0.3x), p50 {o['p50_ms'] / m['p50_ms']:.2f}x")
    print(f"concurrency {args.concurrency}, {args.rows} row(s)/request, {args.seconds:.0f}s per server in "
          f"{args.rounds} alternating rounds, "
          f"1 worker each, {os.cpu_count()} CPUs shared with the load generator")
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
