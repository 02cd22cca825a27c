"""Run by the kserve SDK's own venv (see test_serving_protocols.py): score rows over V2 with its REST client.

stdin: {"url", "model", "records"}; stdout: {"live", "ready", "model_ready", "predictions", "id"}.
"""

import asyncio
import json
import sys

import numpy as np
import pandas as pd
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

DATATYPE = {"int64": "INT64", "float64": "FP64", "object": "BYTES"}


async def main(job: dict) -> dict:
    df = pd.DataFrame.from_records(job["records"])
    inputs = []
    for name in df.columns:
        arr = df[name].to_numpy()
        tensor = InferInput(name, [len(arr)], DATATYPE[str(arr.dtype)])
        tensor.set_data_from_numpy(arr.astype(np.object_) if arr.dtype == object else arr, binary_data=False)
        inputs.append(tensor)
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        live = await client.is_server_live(job["url"])
        ready = await client.is_server_ready(job["url"])
        model_ready = await client.is_model_ready(job["url"], job["model"])
        request = InferRequest(job["model"], inputs, request_id="kserve-sdk", parameters={"content_type": "pd"})
        response = await client.infer(job["url"], request, model_name=job["model"])
    finally:
        await client.close()
    return {"live": live, "ready": ready, "model_ready": model_ready, "id": response.id,
            "predictions": response.outputs[0].as_numpy().tolist()}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.load(sys.stdin)))))
