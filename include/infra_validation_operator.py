"""Infra validation in the Docker backend: a ``DockerOperator`` task running the serving image once.

The one-shot container runs ``python -m include.infra_validation`` (golden rows scored by the
image, compared with the offline scores training logged); its exit code is the verdict and its
output is the task log. A non-zero exit fails the task at once (``AirflowFailException``: the same
image fails the same way on every try), naming the cause; an engine that does not answer is an
ordinary error and is retried.

What the container gets, and where each piece comes from:

* image, command, container name: templated from the ``prepare_infra_validation`` XCom (paths and
  ids only) of the same mapped group instance (``map_indexes=ti.map_index``);
* mounts, network, ``docker_url``: from the configuration when the DAG is parsed (no engine call);
* the store URIs and credentials (``include.deployment.validation_env``): ``private_environment``,
  read in the worker when the task runs. The provider keeps it out of ``template_fields``, so it is
  never rendered into the task's Rendered Template view (RenderedTaskInstanceFields), and it is
  not serialized with the DAG; the public ``environment`` holds no secret.

This module is imported when the DAG file is parsed; it imports the provider (which imports
docker-py) and nothing heavier.
"""

from __future__ import annotations

import re
from pathlib import Path

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from docker.types import Mount

from include.config import Settings, settings

LABEL = {"mlops-loop": "infra-validation"}


class InfraValidationOperator(DockerOperator):
    """A ``DockerOperator`` whose failed container fails the task without a retry, with the cause.
    It skips itself when ``build`` chose the local backend (infra_validate_local runs instead)."""

    def __init__(self, *, request_task_id: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.request_task_id = request_task_id

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from include.deployment import validation_env, validation_failure

        ti = context["ti"]
        request = ti.xcom_pull(task_ids=self.request_task_id, map_indexes=ti.map_index)
        if request["backend"] != "docker":
            raise AirflowSkipException(f"the {request['backend']} backend validates in infra_validate_local")
        # credentials are read here, in the worker, and handed to the engine only
        self._private_environment = validation_env(settings())[1]
        Path(request["results"]).unlink(missing_ok=True)  # a verdict of an earlier try must not be read
        for mount in self.mounts:  # the engine refuses a bind mount of a path that does not exist yet
            Path(mount["Source"]).mkdir(parents=True, exist_ok=True)
        try:
            return super().execute(context)
        except DockerContainerFailedException as err:
            code = re.search(r"'StatusCode': (\d+)", str(err))
            output = "\n".join(str(line) for line in (err.logs or []))
            raise AirflowFailException(
                validation_failure(request, int(code.group(1)) if code else None, output, "the serving image")
                + " (not retried: the same image fails the same way)"
            ) from err


def _pull(request_task_id: str, expr: str) -> str:
    """Jinja reading this group instance's request: ``request`` in ``expr`` is the XCom value."""
    req = f"ti.xcom_pull(task_ids='{request_task_id}', map_indexes=ti.map_index)"
    return "{{ " + expr.replace("request", req) + " }}"


def infra_validation_task(task_id: str, request_task_id: str, s: Settings | None = None) -> InfraValidationOperator:
    """The Docker backend's infra validation task, its engine settings resolved now (parse time)."""
    from include.deployment import container_mounts, validation_env

    s = s or settings()
    return InfraValidationOperator(
        task_id=task_id,
        request_task_id=request_task_id,
        image=_pull(request_task_id, "request['image']"),
        # rendered as a Python list literal, which DockerOperator.format_command reads back
        command=_pull(request_task_id, "['python'] + request['argv']"),
        container_name=_pull(request_task_id, "request['container']") + "-t{{ ti.try_number }}",
        environment={**validation_env(s)[0], "MLOPS_INFRA_VALIDATION_IN": "docker"},
        mounts=[Mount(target=p, source=p, type="bind") for p in container_mounts(s)],
        network_mode=s.docker_network or "host",
        docker_url=s.docker_host or "unix:///var/run/docker.sock",
        mount_tmp_dir=False,  # the container writes only its results file, on a mount above
        auto_remove="force",  # the verdict is in the task log and the results file; no container is left
        labels=LABEL,
        do_xcom_push=False,  # the output is the verdict and scores: the results path is already in XCom
        timeout=120,
    )
