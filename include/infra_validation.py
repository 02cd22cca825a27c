"""One-shot infra validation: load a model version from the registry, score the golden rows, and
compare with the offline scores; the exit code is the verdict.

Runs inside the freshly built serving image (the deploy DAG's ``infra_validate_docker`` task, a
``DockerOperator``) or, with the local backend, as its own process (``infra_validate_local``).
The offline scores are the ones training computed for the same rows with the fitted pipeline in
memory (``holdout/golden_scores.json`` of the run); any difference means the image does not
reproduce the model (wrong library versions, missing types, a broken artifact) and the version
must not receive traffic.

Exit codes: 0 the scores match; 1 the model could not be loaded or scored (a broken artifact, a
missing library: the error is printed); 2 the scores differ. The scores and the verdict go to
``--results`` (JSON, a path the deploy task passed through XCom); stdout gets one summary line
(no scores: the task log shows why, not the data). This module imports only the standard library
at the top: the image has no Airflow.

Usage: python -m include.infra_validation --model NAME --version V --dataset D
           --golden ROWS.parquet --expected SCORES.json --results OUT.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

# rows of the version's own holdout scored by training (logged with the run) and by the image
GOLDEN_ROWS = 256
# scores must equal the offline ones up to float noise (BLAS summation order, thread count)
SCORE_TOLERANCE = 1e-9
EXPECTED_ARTIFACT = "holdout/golden_scores.json"

EXIT_OK, EXIT_BROKEN, EXIT_MISMATCH = 0, 1, 2
# environment variables that may carry a store credential: the deploy task passes them privately
CREDENTIAL_PREFIXES = ("AWS_", "MLFLOW_S3_", "MLFLOW_TRACKING_")


def score_golden(model: str, version: str, golden_path: str, dataset: str) -> list[float]:
    import pandas as pd

    from include.spec import load_spec
    from include.training.metrics import predict_scores
    from include.training.model_io import load_model

    spec = load_spec(dataset)
    return [float(x) for x in predict_scores(load_model(model, version), pd.read_parquet(golden_path), spec)]


def log_golden_scores(holdout: Path, model, spec) -> None:
    """Training's side: log the offline scores of the holdout's first GOLDEN_ROWS rows, by the fitted
    pipeline in memory, as ``holdout/golden_scores.json`` of the active run. Infra validation then
    checks the serving image reproduces them, and the deploy worker never loads the artifact it is
    validating. Scored on the rows read back from the parquet file, as the image reads them."""
    import mlflow
    import pandas as pd

    from include.training.metrics import predict_scores

    rows = pd.read_parquet(holdout).head(GOLDEN_ROWS)
    path = holdout.parent / Path(EXPECTED_ARTIFACT).name
    path.write_text(json.dumps({"rows": len(rows), "scores": [float(x) for x in predict_scores(model, rows, spec)]}))
    mlflow.log_artifact(str(path), str(Path(EXPECTED_ARTIFACT).parent))


def compare(served: list[float], expected: list[float], tolerance: float = SCORE_TOLERANCE) -> str | None:
    """None when ``served`` reproduces ``expected``, else why not."""
    if len(served) != len(expected):
        return f"{len(served)} scores, expected {len(expected)}"
    bad = [i for i, s in enumerate(served) if not math.isfinite(s)]
    if bad:
        return f"{len(bad)} non-finite scores (first at row {bad[0]})"
    diff = _max_abs_diff(served, expected)
    if diff > tolerance:
        return f"served scores differ from offline scores (max abs diff {diff:.3g} > {tolerance})"
    return None


def _max_abs_diff(served: list[float], expected: list[float]) -> float:
    return max((abs(s - e) for s, e in zip(served, expected, strict=False)), default=0.0)


def _credential_names() -> list[str]:
    """Names (never values) of the credential variables this process got, for the results file:
    shows the deploy task passed them (privately) without showing them."""
    return sorted(k for k in os.environ if k.startswith(CREDENTIAL_PREFIXES))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="score the golden rows with a registered model version and compare")
    ap.add_argument("--model", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--golden", required=True, help="the golden rows (parquet)")
    ap.add_argument("--expected", required=True, help='the offline scores: JSON {"scores": [...]}')
    ap.add_argument("--results", required=True, help="where to write the scores and the verdict (JSON)")
    args = ap.parse_args(argv)
    where = "serving image" if os.environ.get("MLOPS_INFRA_VALIDATION_IN") == "docker" else "process"
    verdict: dict = {"model": args.model, "version": args.version, "in": where,
                     "credentials": _credential_names()}
    try:
        scores = score_golden(args.model, args.version, args.golden, args.dataset)
    except Exception as err:  # noqa: BLE001 - any failure is the verdict (a broken artifact, a missing type)
        verdict.update(passed=False, error=f"could not load or score the model: {type(err).__name__}: {err}")
        code = EXIT_BROKEN
    else:
        with open(args.expected) as fh:
            expected = [float(x) for x in json.load(fh)["scores"]]
        why = compare(scores, expected)
        verdict.update(passed=why is None, rows=len(scores), max_abs_diff=_max_abs_diff(scores, expected), scores=scores,
                       **({"error": why} if why else {}))
        code = EXIT_OK if why is None else EXIT_MISMATCH
    with open(args.results, "w") as fh:
        json.dump(verdict, fh)
    summary = {k: v for k, v in verdict.items() if k not in ("scores", "credentials")}
    print(json.dumps({**summary, "results": args.results}))
    return code


if __name__ == "__main__":
    sys.exit(main())
