"""The serving image, built through the Docker API (the engine at DOCKER_HOST or the local socket).

Nothing inside the build needs a network: the wheels are built on the host into ``build/wheels``
(the base images are Debian bookworm with CPython 3.11, so the host's cp311 manylinux wheels fit)
and sent in a minimal build context with the Dockerfile, the requirements and the ``include``
package. The tag is a content hash of everything that goes into the image, so the same code
always gets the same tag and a second build of unchanged code is a lookup, not a build.

CLI (``tools/build_serving_image.sh`` calls it): ``python -m include.serving.image [--tag T]``;
the last line of stdout is the image reference. Env: ``BASE_IMAGE`` (default
``MLOPS_SERVING_BASE_IMAGE``), ``IMAGE`` (default ``mlops-serving``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from include.config import PROJECT_ROOT

log = logging.getLogger(__name__)

IMAGE = "mlops-serving"
SERVING_DIR = PROJECT_ROOT / "include" / "serving"


class ImageBuildError(RuntimeError):
    """The serving image could not be built; the message carries the build log's tail."""


def wheelhouse(python: str = sys.executable) -> Path:
    """``build/wheels`` holding every wheel the serving requirements need (pinned by constraints.txt)."""
    wheels = PROJECT_ROOT / "build" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    # pip's offline resolve alone takes tens of seconds: skip it when the inputs did not change
    inputs = hashlib.sha256(b"".join(p.read_bytes() for p in (SERVING_DIR / "requirements.txt",
                                                               PROJECT_ROOT / "constraints.txt"))).hexdigest()
    stamp = wheels / ".inputs.sha256"
    if stamp.exists() and stamp.read_text() == inputs:
        return wheels
    common = [python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-r",
              str(SERVING_DIR / "requirements.txt"), "-c", str(PROJECT_ROOT / "constraints.txt"), "-w", str(wheels)]
    # offline first: when the wheelhouse already holds everything, no index is asked
    if subprocess.run([*common, "--no-index", "--find-links", str(wheels)], capture_output=True).returncode != 0:
        proc = subprocess.run(common, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError(f"building the serving wheelhouse failed:\n{proc.stderr[-3000:]}")
    stamp.write_text(inputs)
    return wheels


def build_context(wheels: Path) -> Path:
    """A minimal context: Dockerfile, requirements, wheels (hard links), the include package."""
    ctx = PROJECT_ROOT / "build" / "serving-context"
    shutil.rmtree(ctx, ignore_errors=True)
    (ctx / "wheels").mkdir(parents=True)
    for name in ("Dockerfile", "requirements.txt"):
        shutil.copy2(SERVING_DIR / name, ctx / name)
    for whl in wheels.glob("*.whl"):
        try:
            os.link(whl, ctx / "wheels" / whl.name)
        except OSError:
            shutil.copy2(whl, ctx / "wheels" / whl.name)
    shutil.copytree(PROJECT_ROOT / "include", ctx / "include",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return ctx


def content_tag(ctx: Path, base_image: str) -> str:
    """12 hex digits over the base image name and every file of the image but the wheels' bytes
    (their names carry their versions)."""
    h = hashlib.sha256(base_image.encode())
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        rel = path.relative_to(ctx).as_posix()
        h.update(rel.encode())
        if not rel.startswith("wheels/"):
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:12]


def build_serving_image(api, base_image: str, *, image: str = IMAGE, tag: str | None = None,
                        python: str = sys.executable) -> str:
    """Build (or find: same content, same tag) the serving image with ``api`` (a docker-py
    ``APIClient``, e.g. ``DockerHook.api_client``); returns ``image:tag``."""
    import docker

    t0 = time.time()
    ctx = build_context(wheelhouse(python))
    tag = tag or content_tag(ctx, base_image)
    ref = f"{image}:{tag}"
    try:
        api.inspect_image(ref)
        log.info("serving image %s already built (same content): reused", ref)
        return ref
    except docker.errors.ImageNotFound:
        pass
    log.warning("building serving image %s from %s ...", ref, base_image)
    tail: list[str] = []
    for chunk in api.build(path=str(ctx), tag=ref, buildargs={"BASE_IMAGE": base_image}, rm=True,
                           forcerm=True, decode=True):
        if "error" in chunk:
            raise ImageBuildError(f"building {ref} failed: {chunk['error'].strip()}\n" + "".join(tail[-40:]))
        line = chunk.get("stream") or ""
        if line.strip():
            tail.append(line)
            if line.startswith("Step "):
                log.info("%s", line.strip())  # progress, one line per Dockerfile step
    api.tag(ref, image, tag="latest")
    log.warning("built %s in %.1fs", ref, time.time() - t0)
    return ref


def main(argv: list[str] | None = None) -> int:
    from airflow.providers.docker.hooks.docker import DockerHook

    from include.config import settings

    ap = argparse.ArgumentParser(description="build the serving image through the Docker API")
    ap.add_argument("--tag", default=None, help="image tag (default: a content hash)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    s = settings()
    base = os.environ.get("BASE_IMAGE") or s.serving_base_image
    api = DockerHook(docker_conn_id=None, base_url=s.docker_host or "unix:///var/run/docker.sock",
                     timeout=600).api_client
    try:
        print(build_serving_image(api, base, image=os.environ.get("IMAGE", IMAGE), tag=args.tag,
                                  python=os.environ.get("PYTHON", sys.executable)))
    except ImageBuildError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
