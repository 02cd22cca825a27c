"""The Assets through which the stages talk. Stdlib + airflow.sdk only: DAG files import this at parse time."""

from __future__ import annotations

from airflow.sdk import Asset

# Emitted by `ingest` with extra {dataset, dvc_rev, md5, rows, validation_id}; schedules `train`.
DATASET = Asset(name="dataset", uri="mlops://dataset", group="mlops")
# Emitted by `train` when a version passes the gate: extra {model, version, run_id}; schedules `deploy`.
MODEL_CANDIDATE = Asset(name="model_candidate", uri="mlops://model_candidate", group="mlops")
# Emitted by `deploy` after the switch: extra {model, version, endpoint}.
DEPLOYMENT = Asset(name="deployment", uri="mlops://deployment", group="mlops")
