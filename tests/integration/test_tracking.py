"""The one champion/alias lookup (include.tracking.alias_version) on a real MLflow registry: only
"not found" means "no such alias"; a bad request or an unreachable store raises."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from include.tracking import alias_model_version, alias_version, is_not_found
from tests.services import free_port


@pytest.fixture
def registry(state):
    from include.tracking import client, configure_mlflow

    configure_mlflow()
    c = client()
    c.create_registered_model("m")
    for _ in range(2):
        c.create_model_version("m", "file:///nowhere")
    c.set_registered_model_alias("m", "champion", "2")
    return c


def test_a_missing_alias_or_model_is_none(registry):
    assert alias_version("m", "champion") == "2"
    assert str(alias_model_version("m", "champion", registry).version) == "2"
    assert alias_version("m", "challenger") is None  # the SQL store: INVALID_PARAMETER_VALUE "... not found"
    assert alias_version("no-such-model", "champion") is None  # RESOURCE_DOES_NOT_EXIST


def test_a_bad_request_is_not_absence(registry):
    with pytest.raises(MlflowException, match="Invalid alias name") as err:
        alias_version("m", "bad alias!")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and not is_not_found(err.value)


def test_an_unreachable_registry_raises_instead_of_meaning_no_champion(state, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(MlflowException, match="Max retries exceeded") as err:
        alias_version("m", "champion", MlflowClient(url, url))
    assert not is_not_found(err.value)
