"""MLflow wiring: tracking/registry URIs and the experiment from :mod:`include.config`, plus retries.

Every stage calls :func:`configure_mlflow` first, so the embedded mode (SQLite + local artifact
dir under the state dir) and the distributed mode (``MLFLOW_TRACKING_URI=http://...``) share one
code path.

Retries: MLflow's REST client retries HTTP failures itself; :data:`HTTP_DEFAULTS` bounds that so a
dead tracking server fails the task in about a minute instead of tens of minutes.
:func:`with_retry` adds a few attempts around whole calls for the failures that surface anyway
(server restarting, database locked or briefly unreachable); anything longer is left to Airflow
task retries with ``retry_exponential_backoff``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from include.config import settings

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "mlops-loop"

T = TypeVar("T")

# MLflow's own defaults retry one HTTP request 7 times with backoff factor 2 (0, 4, 8, ... capped at
# 120 s: about 4 minutes on a dead server, mlflow.utils.request_utils) with a 120 s timeout each;
# with_retry's attempts and the training protocol's several calls multiply that, so a task on a dead
# server could hang for tens of minutes before Airflow's retry took over. Bounded here: about 3 s
# per request on a refused connection (retries after 0 s and 2 s, plus jitter), 30 s for a server
# that accepts but does not answer. Set in the environment (e.g. the compose file), a value wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
for _k, _v in HTTP_DEFAULTS.items():
    os.environ.setdefault(_k, _v)  # read by MLflow at each request, so the import is early enough


class TrackingUnavailable(RuntimeError):
    """MLflow could not be reached: the task fails now, with this cause, and Airflow's retry takes over."""

# Substrings of error messages that mean "the store is not reachable right now", not "bad request".
_TRANSIENT_MESSAGES = (
    "failed with exception",  # mlflow.utils.rest_utils after its own HTTP retries
    "failed with timeout exception",
    "Connection refused",
    "Connection reset",
    "Max retries exceeded",
    "database is locked",
    "could not connect to server",
    "connection to server",
    "server closed the connection",
    "Temporary failure in name resolution",
)
_TRANSIENT_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_unreachable(exc: BaseException) -> bool:
    """True for errors that mean the tracking store could not be reached (worth retrying)."""
    try:
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - requests ships with mlflow
        pass
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, MlflowException) and exc.error_code in _TRANSIENT_CODES:
        return True
    try:
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc)
    return any(s in text for s in _TRANSIENT_MESSAGES)


def with_retry(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 4,
    base_delay: float = 1.0,
    max_delay: float = 10.0,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)``; retry MLflow-unreachable errors with exponential backoff.

    Other errors (bad input, missing entity, ...) are raised at once. After ``attempts`` tries the
    last error is raised (not tenacity's RetryError), so the Airflow task fails and its own retries
    take over. The waits are ``base_delay * 2**(n-1)`` capped at ``max_delay``: 1, 2, 4 s by default.
    """
    import tenacity

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception()
        log.warning("MLflow unreachable (%s: %s); retry %s/%s in %.1fs", type(exc).__name__, exc,
                    state.attempt_number, attempts - 1, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=base_delay, max=max_delay),
        retry=tenacity.retry_if_exception(is_unreachable),
        before_sleep=log_retry,
        reraise=True,
    )
    return retrying(fn, *args, **kwargs)


def download_artifact(artifact_uri: str, dst: str) -> tuple[str | None, MlflowException | OSError | None]:
    """``(local path, None)``, or ``(None, the error)`` when there is no such artifact.

    Only "not there" is an answer: a store that cannot be reached (after :func:`with_retry`'s
    attempts) raises :class:`TrackingUnavailable`, so no reader mistakes an outage for an artifact
    that was never logged.
    """
    try:
        return with_retry(mlflow.artifacts.download_artifacts, artifact_uri=artifact_uri, dst_path=dst), None
    except (MlflowException, OSError) as err:
        if is_unreachable(err):
            raise TrackingUnavailable(
                f"MLflow at {mlflow.get_tracking_uri()} is unreachable ({type(err).__name__}: {str(err)[:600]}); "
                f"could not tell whether {artifact_uri} exists"
            ) from err
        return None, err


def fails_clearly_when_unreachable(then: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: an unreachable tracking store ends ``fn`` with :class:`TrackingUnavailable`, whose
    message names the store, the underlying error and ``then`` (what the retry will do)."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            except TrackingUnavailable:
                raise
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                raise TrackingUnavailable(
                    f"MLflow at {settings().mlflow_tracking_uri} is unreachable ({type(exc).__name__}: "
                    f"{str(exc)[:600]}); {fn.__name__} failed and {then}"
                ) from exc

        return wrapper

    return decorate


def retrying(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator form of :func:`with_retry` with the default attempts and backoff."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return with_retry(fn, *args, **kwargs)

    return wrapper


def _artifact_location(experiment: str) -> str | None:
    """Where the experiment's artifacts go.

    The configured root (+ ``/<experiment>``), except when talking to a remote tracking server
    and no root was set explicitly: then the server's own default (e.g. proxied S3) applies,
    because the embedded default is a path on this machine only.
    """
    s = settings()
    if _is_remote(s.mlflow_tracking_uri) and not os.environ.get("MLOPS_MLFLOW_ARTIFACT_ROOT", "").strip():
        return None
    return s.mlflow_artifact_root.rstrip("/") + "/" + experiment


@retrying
def configure_mlflow(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the configured stores, make sure ``experiment`` exists; return its id."""
    s = settings()
    for uri in (s.mlflow_tracking_uri, s.mlflow_registry_uri):
        db = _sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(s.mlflow_tracking_uri)
    mlflow.set_registry_uri(s.mlflow_registry_uri)
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        try:
            experiment_id = c.create_experiment(experiment, artifact_location=_artifact_location(experiment))
        except MlflowException as err:  # created concurrently by another task
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = c.get_experiment_by_name(experiment).experiment_id
    else:
        experiment_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def client() -> MlflowClient:
    """A client for the configured tracking and registry stores."""
    s = settings()
    return MlflowClient(tracking_uri=s.mlflow_tracking_uri, registry_uri=s.mlflow_registry_uri)


_NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def is_not_found(exc: BaseException | None) -> bool:
    """True when MLflow answered that the entity (experiment, run, model, version, alias) does not exist.

    The one test for "absent": an unreachable store, a bad request or any other MLflow error is
    False, so callers re-raise it and the task fails (and retries) instead of acting on a registry
    it could not read.
    """
    if not isinstance(exc, MlflowException):
        return False
    if exc.error_code in _NOT_FOUND_CODES:
        return True
    # the SQL registry reports a missing alias as INVALID_PARAMETER_VALUE "Registered model alias x not found."
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message


def alias_model_version(model: str, alias: str, c: MlflowClient | None = None) -> Any | None:
    """The ``ModelVersion`` behind ``model``'s ``alias``, or None when the model or the alias does not exist.

    Only "not found" (:func:`is_not_found`) means None: an unreachable or failing MLflow raises,
    so a task retries instead of concluding there is no champion.
    """
    try:
        return with_retry((c or client()).get_model_version_by_alias, model, alias)
    except MlflowException as err:
        if is_not_found(err):
            return None
        raise


def alias_version(model: str, alias: str, c: MlflowClient | None = None) -> str | None:
    """The version number behind ``model``'s ``alias`` (see :func:`alias_model_version`), or None."""
    mv = alias_model_version(model, alias, c)
    return None if mv is None else str(mv.version)
