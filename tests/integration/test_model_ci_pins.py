"""Model CI reads the pins a run logged (its lock, the model's requirements.txt) from MLflow: a file
the run never logged is "absent", but an MLflow that cannot be reached is an error that says so,
never "absent" (the report would then claim that no locked package changed)."""

from __future__ import annotations

import re

import mlflow
import pytest

from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_pin_file_never_logged_is_absent_but_an_unreachable_mlflow_fails_clearly(state, monkeypatch, capsys):
    from include import model_ci
    from include.tracking import TrackingUnavailable, configure_mlflow

    configure_mlflow()
    with mlflow.start_run() as logged:
        mlflow.log_text("scikit-learn==1.5.2\nnumpy==2.0.0  # pinned\n", model_ci.LOCK_ARTIFACT)
    with mlflow.start_run() as bare:
        pass
    assert model_ci.run_lock(logged.info.run_id) == {"scikit-learn": "1.5.2", "numpy": "2.0.0"}
    assert model_ci.run_lock(bare.info.run_id) is None  # MLflow answered: never logged

    # the same questions while MLflow is down: nothing listens on the port
    down = f"http://127.0.0.1:{free_port()}"
    real = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # each request fails at once
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", down)
    mlflow.set_tracking_uri(down)
    mlflow.set_registry_uri(down)
    try:
        lock = f"runs:/{logged.info.run_id}/{model_ci.LOCK_ARTIFACT}"
        with pytest.raises(TrackingUnavailable,
                           match=f"(?s)MLflow at {re.escape(down)} is unreachable.*could not tell whether {re.escape(lock)}"):
            model_ci.run_lock(logged.info.run_id)
        with pytest.raises(TrackingUnavailable, match="could not tell whether models:/sessions_model/1/requirements"):
            model_ci.model_requirements("sessions_model", "1")
        # the command: a setup error naming the store, not a traceback and not a verdict
        capsys.readouterr()
        assert model_ci.main(["check", "--dataset", "sessions"]) == 2
        err = capsys.readouterr().err
        (line,) = [ln for ln in err.splitlines() if ln.startswith("mlops-ci:")]
        assert line.startswith(f"mlops-ci: MLflow at {down} is unreachable") and "nothing was judged" in line, err
        assert "Traceback" not in err
    finally:
        mlflow.set_tracking_uri(real[0])
        mlflow.set_registry_uri(real[1])
