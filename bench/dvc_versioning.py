"""DVC add + push time for a ~1 GB dataset, then for appending one more batch to it.

Builds the dataset the way ingest does (one parquet file per batch under data/<dataset>/ in a
git + DVC repo with a local remote) in a temporary directory, and prints seconds and MB/s.
Usage: python bench/dvc_versioning.py [--gb 1.0] [--batch-rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--batch-rows", type=int, default=1_000_000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-dvc-"))
    os.environ["MLOPS_STATE_DIR"] = str(tmp)
    from include.demo_data import make_batch
    from include.versioning import DataRepo

    repo = DataRepo()
    repo.ensure()
    data = repo.path / "data" / "sessions"
    data.mkdir(parents=True)
    base = make_batch(0, args.batch_rows)
    target, size, n = args.gb * 1024**3, 0, 0
    t = time.perf_counter()
    while size < target:
        # distinct content per file (as real daily batches are), without regenerating every frame
        frame = base.assign(session_id=base["session_id"] + f"-{n}", pages_viewed=base["pages_viewed"] + n % 7)
        f = data / f"batch-{n:04d}.parquet"
        frame.to_parquet(f, index=False, compression=None)
        size += f.stat().st_size
        n += 1
    print(f"dataset: {n} batch files, {size / 1024**2:.0f} MB, written in {time.perf_counter() - t:.1f} s")

    def timed(*cmd):
        t = time.perf_counter()
        repo._run(*cmd)
        return time.perf_counter() - t

    add = timed("dvc", "add", "-q", "data/sessions")
    push = timed("dvc", "push", "-q")
    mb = size / 1024**2
    print(f"dvc add  (1st, {mb:.0f} MB): {add:6.1f} s  ({mb / add:.0f} MB/s)")
    print(f"dvc push (1st, {mb:.0f} MB): {push:6.1f} s  ({mb / push:.0f} MB/s)")
    repo._run("git", "add", "-A")
    repo._run("git", "commit", "-qm", "bench: initial dataset")

    f = data / f"batch-{n:04d}.parquet"
    base.assign(session_id=base["session_id"] + "-new").to_parquet(f, index=False, compression=None)
    add2 = timed("dvc", "add", "-q", "data/sessions")
    push2 = timed("dvc", "push", "-q")
    print(f"append one batch ({f.stat().st_size / 1024**2:.0f} MB) to the {mb:.0f} MB dataset: "
          f"dvc add {add2:.1f} s, dvc push {push2:.1f} s (one file per batch: only the new file is hashed/uploaded)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
