"""One-shot infra validation: load a model version from the registry and score the golden sample.

Runs inside the freshly built serving image (as a one-shot container started through Airflow's
Docker provider) or as a local process, and prints one JSON line: {"version", "n", "scores"}.
The deploy task compares these scores with the offline scores of the same version on the same
rows; any difference means the image does not reproduce the model (wrong library versions,
missing types, a broken artifact) and the version must not receive traffic.

Usage: python -m include.infra_validation --model NAME --version V --golden PATH.parquet --dataset D
"""

from __future__ import annotations

import argparse
import json
import sys


def score_golden(model: str, version: str, golden_path: str, dataset: str) -> list[float]:
    import pandas as pd

    from include.spec import load_spec
    from include.training import load_model, predict_scores

    spec = load_spec(dataset)
    return [float(x) for x in predict_scores(load_model(model, version), pd.read_parquet(golden_path), spec)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="score the golden sample with a registered model version")
    ap.add_argument("--model", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--golden", required=True)
    ap.add_argument("--dataset", required=True)
    args = ap.parse_args(argv)
    try:
        scores = score_golden(args.model, args.version, args.golden, args.dataset)
    except Exception as err:  # noqa: BLE001 - report any failure as a verdict, not a traceback only
        print(json.dumps({"version": args.version, "error": f"{type(err).__name__}: {err}"}))
        return 1
    print(json.dumps({"version": args.version, "n": len(scores), "scores": scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
