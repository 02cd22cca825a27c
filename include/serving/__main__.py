"""``python -m include.serving [--host H] [--port P] [--model-version N] ...``: run the model server.

Options override the environment read by :func:`include.serving.app.create_app_from_env`
(MLOPS_MODEL_NAME, MLOPS_MODEL_VERSION, MLOPS_DATASET, MLFLOW_TRACKING_URI, MLOPS_PREDICTIONS_DIR, ...).
The port defaults to MLOPS_SERVING_PORT (include.config), the host to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os


def main(argv: list[str] | None = None) -> None:
    from include.config import settings

    p = argparse.ArgumentParser(prog="python -m include.serving", description=__doc__.splitlines()[0])
    p.add_argument("--host", default=os.environ.get("MLOPS_SERVING_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=None, help="default: MLOPS_SERVING_PORT")
    p.add_argument("--model-name", help="default: MLOPS_MODEL_NAME, else the dataset spec's model_name")
    p.add_argument("--model-version", help="default: MLOPS_MODEL_VERSION (required one way or the other)")
    p.add_argument("--dataset", help="spec name; default: MLOPS_DATASET, else the spec naming --model-name")
    p.add_argument("--predictions-dir", help="default: MLOPS_PREDICTIONS_DIR")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    for env, value in (("MLOPS_MODEL_NAME", args.model_name), ("MLOPS_MODEL_VERSION", args.model_version),
                       ("MLOPS_DATASET", args.dataset), ("MLOPS_PREDICTIONS_DIR", args.predictions_dir)):
        if value:
            os.environ[env] = value

    import uvicorn

    from include.serving.app import create_app_from_env

    app = create_app_from_env()  # fail here, with the message, when the configuration is wrong
    has = importlib.util.find_spec
    uvicorn.run(
        app, host=args.host, port=args.port or settings().serving_port, workers=1,
        loop="uvloop" if has("uvloop") else "asyncio", http="httptools" if has("httptools") else "h11",
        access_log=False, log_level=args.log_level, timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
