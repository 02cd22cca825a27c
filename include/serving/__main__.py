"""``python -m include.serving [--host H] [--port P] [--model-version N] ...``: run the model server.

Options override the environment read by :func:`include.serving.app.create_app_from_env`
(MLOPS_MODEL_NAME, MLOPS_MODEL_VERSION, MLOPS_DATASET, MLFLOW_TRACKING_URI, MLOPS_PREDICTIONS_DIR, ...).
The port defaults to MLOPS_SERVING_PORT (include.config), the host to 127.0.0.1. ``--unix-socket
NAME`` also listens on a unix socket (``@name``: Linux's abstract namespace, no file): the embedded
serving edge reaches a local server there, which costs both less than a TCP hop.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket


def main(argv: list[str] | None = None) -> None:
    from include.config import settings

    p = argparse.ArgumentParser(prog="python -m include.serving", description=__doc__.splitlines()[0])
    p.add_argument("--host", default=os.environ.get("MLOPS_SERVING_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=None, help="default: MLOPS_SERVING_PORT")
    p.add_argument("--model-name", help="default: MLOPS_MODEL_NAME, else the dataset spec's model_name")
    p.add_argument("--model-version", help="default: MLOPS_MODEL_VERSION (required one way or the other)")
    p.add_argument("--dataset", help="spec name; default: MLOPS_DATASET, else the spec naming --model-name")
    p.add_argument("--predictions-dir", help="default: MLOPS_PREDICTIONS_DIR")
    p.add_argument("--unix-socket", type=abstract_name, help="also listen on this abstract unix socket (@name)")
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
    config = uvicorn.Config(
        app, host=args.host, port=args.port or settings().serving_port, workers=1,
        loop="uvloop" if has("uvloop") else "asyncio", http="httptools" if has("httptools") else "h11",
        access_log=False, log_level=args.log_level, timeout_graceful_shutdown=20,
    )
    server = uvicorn.Server(config)
    if not args.unix_socket:
        server.run()
        return
    # uvicorn binds one address itself; for two it takes them bound (the port as it binds it)
    server.run(sockets=[config.bind_socket(), unix_socket(args.unix_socket)])


def abstract_name(name: str) -> str:
    if not name.startswith("@") or len(name) < 2:
        raise argparse.ArgumentTypeError(f"{name!r}: an abstract socket name starts with @, e.g. @mlops-serving-8000")
    return name


def unix_socket(name: str) -> socket.socket:
    """A bound socket in Linux's abstract namespace (``@name``): no file, so it is gone with the
    process and a restart after kill -9 binds it again."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + abstract_name(name)[1:])
    except OSError as err:
        sock.close()
        raise SystemExit(f"cannot listen on unix socket {name}: {err}") from err
    return sock


if __name__ == "__main__":
    main()
