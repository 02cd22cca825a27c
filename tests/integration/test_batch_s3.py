"""batch_score in distributed mode's storage layout: source and output on a real S3 API (moto
server), mapped partitions through Airflow's dag.test (no Celery worker: no test here runs one;
the mapped score tasks are what the workers would share), and a re-run after a lost partition."""

from __future__ import annotations

import hashlib
import io
import json

import pandas as pd
import pytest

from include.demo_data import make_batch
from tests.integration.test_batch_score import _champion

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    # (keys ending in "/" are the empty directory markers Arrow's create_dir puts on S3)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


def _parquet(s3, bucket: str, keys: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in keys])


def test_s3_source_and_output_mapped_partitions_and_rerun(airflow_db, state, s3_bucket):
    import boto3
    from airflow.dag_processing.dagbag import DagBag

    from include.batch import job
    from include.config import PROJECT_ROOT

    model = _champion(state)
    s3 = boto3.client("s3")
    good = make_batch(7, 3000)
    buf = io.BytesIO()
    good.to_parquet(buf, row_group_size=1000)  # three row groups: three partitions
    s3.put_object(Bucket=s3_bucket, Key="in/good.parquet", Body=buf.getvalue())
    bad = make_batch(8, 300)
    bad.loc[bad.index[:4], "device"] = "tv"
    s3.put_object(Bucket=s3_bucket, Key="in/bad.csv", Body=bad.to_csv(index=False).encode())

    params = {"dataset": "sessions", "source": f"s3://{s3_bucket}/in/", "output": f"s3://{s3_bucket}/out",
              "partition_rows": 1000, "chunk_rows": 200}
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag("batch_score")
    dr = dag.test(run_conf=params)
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dr.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    assert sum(1 for t, _ in states if t == "score") == 4

    prefix = f"out/sessions/{job.batch_run_id(dr.run_id)}/"
    keys = _keys(s3, s3_bucket, prefix)
    parts = [f"part-{i:05d}.parquet" for i in range(4)]
    assert keys == sorted([prefix + "_manifest.json", prefix + "_plan.json", prefix + "_model/model.skops",
                           *(prefix + "scores/" + p for p in parts), *(prefix + "rejects/" + p for p in parts)])
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key=prefix + "_manifest.json")["Body"].read())
    # the score tasks read the model plan fetched once (the md5 in the manifest is of those bytes)
    skops_file = s3.get_object(Bucket=s3_bucket, Key=prefix + "_model/model.skops")["Body"].read()
    assert manifest["model_md5"] == hashlib.md5(skops_file).hexdigest()
    assert manifest["rows_in"] == 3300 and manifest["scored"] == 3296 and manifest["rejected"] == 4
    assert manifest["output"] == f"s3://{s3_bucket}/{prefix.rstrip('/')}"
    scores = _parquet(s3, s3_bucket, [k for k in keys if "/scores/" in k])
    assert len(scores) == 3296 and not scores.duplicated(["source", "row"]).any()
    assert set(scores["model_version"]) == {str(model["version"])}
    rejects = _parquet(s3, s3_bucket, [k for k in keys if "/rejects/" in k])
    assert len(rejects) == 4 and set(rejects["field"]) == {"device"}

    # a lost partition, a stray temp object of a killed attempt and no manifest yet: the re-run of
    # the same DAG run scores that partition only, removes the stray object, finalizes once
    s3.delete_object(Bucket=s3_bucket, Key=prefix + "scores/part-00001.parquet")
    s3.delete_object(Bucket=s3_bucket, Key=prefix + "_manifest.json")
    s3.put_object(Bucket=s3_bucket, Key=prefix + "scores/.tmp-part-00002.parquet-dead", Body=b"half a file")
    before = {k: s3.head_object(Bucket=s3_bucket, Key=k)["ETag"] for k in keys if "/scores/part-00000" in k}
    again = job.run(params, dr.run_id)
    assert {k: again[k] for k in ("rows_in", "scored", "rejected")} == \
        {k: manifest[k] for k in ("rows_in", "scored", "rejected")}
    assert again["mlflow_run_id"] == manifest["mlflow_run_id"]
    assert _keys(s3, s3_bucket, prefix) == keys
    assert {k: s3.head_object(Bucket=s3_bucket, Key=k)["ETag"] for k in before} == before
    scores = _parquet(s3, s3_bucket, [k for k in keys if "/scores/" in k])
    assert len(scores) == 3296 and not scores.duplicated(["source", "row"]).any()
