"""The distributed mode's files, checked without a Docker engine: docker-compose.yaml, the Airflow
Dockerfile, .dockerignore, .env.example and deploy/prometheus.yml.

Images cannot be pulled here, so the stack is validated as structure: the compose file is parsed
(anchors and ``<<:`` merges resolved by PyYAML) and interpolated the way compose does
(``${VAR:-default}``, ``${VAR:?error}``, ``$$``) with .env.example; every command a service runs is
checked against the installed CLIs (airflow, mlflow, the project's own modules); the environment is
checked against what include/config.py actually reads, parsed from its source so this test follows
the module. ``docker compose config`` runs too when the compose plugin is installed (always in CI:
tools/debian_tools.sh installs it).
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
CI_OVERRIDE = ROOT / "docker-compose.ci.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_MODULE = ROOT / "include" / "config.py"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
DOCS = ROOT / "docs" / "compose.md"
BIN = Path(sys.executable).parent

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker"}
ONE_SHOT = {"preflight", "airflow-init", "mlflow-db-init", "minio-init", "retrain"}
EXPECTED_SERVICES = AIRFLOW_SERVICES | ONE_SHOT | {"postgres", "redis", "mlflow", "minio", "edge", "prometheus",
                                                 "pushgateway", "grafana"}
VALID_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# Variables include/config.py reads that compose leaves to the embedded default on purpose.
EMBEDDED_ONLY = {
    "AIRFLOW_HOME": "the official Airflow image sets it (/opt/airflow)",
    "MLOPS_DATA_REPO": "derived from MLOPS_STATE_DIR, the shared state directory",
    "MLOPS_QUARANTINE_DIR": "derived from MLOPS_STATE_DIR, the shared state directory",
    "MLOPS_REPORTS_DIR": "derived from MLOPS_STATE_DIR, the shared state directory",
    "MLOPS_PREDICTIONS_DIR": "derived from MLOPS_STATE_DIR, the shared state directory",
    "MLOPS_SPECS_DIR": "the dataset specs ship in the image (include/specs)",
    "MLOPS_MAX_BATCH_BYTES": "a limit, not an endpoint: the default holds in both modes",
    "MLOPS_MAX_BATCH_ROWS": "a limit, not an endpoint: the default holds in both modes",
    "MLOPS_LOCK_TIMEOUT_S": "a limit, not an endpoint: the default holds in both modes",
    "AWS_ENDPOINT_URL": "MLOPS_S3_ENDPOINT is set instead (config reads either); a global AWS_ENDPOINT_URL "
                        "would redirect every AWS client, not only the project's S3 calls",
}
# Secrets only the Celery worker (where tasks run) receives; the other Airflow components do without.
WORKER_ONLY = {"MLOPS_ADMIN_TOKEN": "only the deploy task calls the model servers' admin API"}

SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|KEY")
REQUIRED_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}")
URL_PASSWORD = re.compile(r"://[^/\s:@]*:(\$\{[^}]*\}|[^@\s/]+)@")


# ------------------------------------------------------------------------------- compose helpers


class MissingVariable(ValueError):
    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name


_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


def references(text: str):
    """(name, operator) of every variable reference in a compose string ($$ is an escape, not one)."""
    for m in _TOKEN.finditer(text):
        if m.group("escaped"):
            continue
        if m.group("bare"):
            yield m.group("bare"), ""
            continue
        b = _BRACED.fullmatch(m.group("braced"))
        assert b, f"bad substitution ${{{m.group('braced')}}}"
        yield b.group("name"), b.group("op") or ""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $$."""

    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        b = _BRACED.fullmatch(m.group("braced"))
        name, op, arg = b.group("name"), b.group("op") or "", b.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise MissingVariable(name, arg)
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        return value or ""

    return _TOKEN.sub(sub, text)


def resolve(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    return node


def strings(node):
    """Every string value in a parsed compose tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v["target"])))
        else:
            parts = v.split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(raw) -> dict:
    return raw["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def resolved(raw, env_example) -> dict:
    return resolve(raw, env_example)["services"]


@pytest.fixture(scope="module")
def refs(raw) -> list[tuple[str, str]]:
    return [r for s in strings(raw) for r in references(s)]


def config_env_vars() -> set[str]:
    """Names include/config.py reads: _env("X"...), _env_int("X"...), os.environ.get("X"), os.getenv("X")."""
    names = set()
    for node in ast.walk(ast.parse(CONFIG_MODULE.read_text())):
        if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            continue
        f = node.func
        dotted = ast.unparse(f)
        if dotted in ("_env", "_env_int", "os.environ.get", "os.getenv", "environ.get"):
            names.add(node.args[0].value)
    return names


# ------------------------------------------------------------------------------ installed CLIs


@pytest.fixture(scope="module")
def cli(tmp_path_factory, resolved) -> dict[str, subprocess.CompletedProcess]:
    """--help of every CLI the services run, from the installed packages, run in parallel."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",  # the `celery` group exists only with it
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "MLOPS_STATE_DIR": str(home / "state"),
    }
    mlflow_args = argv(resolved["mlflow"]["command"])[4:]  # after `python -m mlflow server`
    # One interpreter per CLI (imports dominate): each prints the help texts its CLI would print for
    # `--help` (the same parser, asked the same way), as JSON.
    airflow_helps = (
        "import contextlib, io, json\n"
        "from airflow.cli.cli_parser import get_parser\n"
        "parser = get_parser()\n"
        "def help_of(*words):\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        parser.parse_args([*words, '--help'])\n"
        "    return out.getvalue()\n"
        "helps = {' '.join(w): help_of(*w) for w in [(), ('celery',), ('db',), ('jobs', 'check')]}\n"
        "from airflow.providers.celery.executors.celery_executor import app\n"
        "helps['celery app'] = app.main\n"
        "print(json.dumps(helps))\n"
    )
    mlflow_help = (
        "import json, sys\n"
        "from mlflow.cli import server\n"
        "ctx = server.make_context('server', sys.argv[1:])  # the service's exact arguments: types, choices\n"
        "print(json.dumps({'help': server.get_help(ctx), 'parsed': sorted(k for k, v in ctx.params.items()"
        " if v is not None)}))\n"
    )
    commands = {
        "airflow --help": [str(BIN / "airflow"), "--help"],
        "airflow": [sys.executable, "-c", airflow_helps],
        "mlflow server": [sys.executable, "-c", mlflow_help, *mlflow_args],
        "retrain": [sys.executable, "-m", "include.cli", "--help"],
    }
    procs = {name: subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, cmd in commands.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        out[name] = subprocess.CompletedProcess(commands[name], proc.returncode, stdout, stderr)
    return out


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{' '.join(result.args[:4])} failed:\n{result.stderr[-2000:]}"
    return result.stdout


def last_json(result: subprocess.CompletedProcess) -> dict:
    """The JSON line a helper script prints last (libraries may log to stdout before it)."""
    return json.loads(ok(result).strip().splitlines()[-1])


def listed(help_text: str, command: str) -> bool:
    """A subcommand listed in an argparse help text (indented name at the start of a line)."""
    return re.search(rf"^\s+{re.escape(command)}(\s|$)", help_text, re.M) is not None


# ---------------------------------------------------------------------------------------- services


def test_every_expected_service_exists(services):
    assert EXPECTED_SERVICES <= set(services), f"missing: {sorted(EXPECTED_SERVICES - set(services))}"


def test_every_long_running_service_has_a_healthcheck(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") in (None, "no"), f"{name} is a one-shot job and must not restart"
            continue
        hc = svc.get("healthcheck") or {}
        assert not hc.get("disable") and argv(hc.get("test"))[:1] in (["CMD"], ["CMD-SHELL"]), \
            f"{name} runs for good and needs a healthcheck"
        assert svc.get("restart") in ("always", "unless-stopped"), f"{name} should restart when it dies"


def test_depends_on_conditions_are_valid_and_acyclic(services):
    graph = {}
    for name, svc in services.items():
        deps = depends_on(svc)
        graph[name] = set(deps)
        for target, condition in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition in VALID_CONDITIONS, f"{name} -> {target}: bad condition {condition}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target} healthy: it has no healthcheck"
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT, f"{name} waits for {target} to complete: it is not a one-shot job"
    visiting, done = set(), set()

    def visit(node, path):
        assert node not in visiting, f"depends_on cycle: {' -> '.join([*path, node])}"
        if node in done:
            return
        visiting.add(node)
        for nxt in graph[node]:
            visit(nxt, [*path, node])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, [])


def test_airflow_components_wait_for_the_database_broker_and_init(services):
    for name in AIRFLOW_SERVICES:
        deps = depends_on(services[name])
        assert deps.get("postgres") == "service_healthy", name
        assert deps.get("redis") == "service_healthy", name
        assert deps.get("airflow-init") == "service_completed_successfully", name
    worker = depends_on(services["airflow-worker"])
    assert worker.get("mlflow") == "service_healthy"
    assert worker.get("minio-init") == "service_completed_successfully"
    assert worker.get("edge") == "service_healthy"
    for backing in ("postgres", "redis", "minio"):  # nothing stores a password before preflight passed
        assert depends_on(services[backing]).get("preflight") == "service_completed_successfully", backing


def test_airflow_services_share_one_image_and_setup(raw, services):
    common = raw["x-airflow-common"]
    assert common["build"]["context"] == "." and common["build"]["dockerfile"] == "Dockerfile"
    for name in AIRFLOW_SERVICES | {"airflow-init", "mlflow", "preflight", "retrain"}:
        assert services[name]["image"] == common["image"], f"{name} must run the project's Airflow image"
        assert services[name]["build"] == common["build"], f"{name} must build the same image"
    for name in AIRFLOW_SERVICES:
        assert services[name]["user"] == "${AIRFLOW_UID:-50000}:0", name
        env = environment(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
            assert REQUIRED_REF.fullmatch(env[key]), f"{name}: {key} must be a required variable"


def test_airflow_config_options_exist_in_the_installed_airflow(services):
    """Every AIRFLOW__SECTION__KEY the services set is a real option of this Airflow version."""
    import importlib
    import importlib.util

    package = Path(next(iter(importlib.util.find_spec("airflow").submodule_search_locations)))
    known = yaml.safe_load((package / "config_templates" / "config.yml").read_text())
    providers = {"celery": "airflow.providers.celery"}
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        for key in environment(services[name]):
            if not key.startswith("AIRFLOW__"):
                continue
            section, option = (part.lower() for part in key[len("AIRFLOW__"):].split("__", 1))
            if section in providers:  # provider options live in the provider's own config
                info = importlib.import_module(providers[section] + ".get_provider_info").get_provider_info()
                options = info["config"][section]["options"]
            else:
                options = known[section]["options"]
            assert option in options, f"{name}: {key} is not an option of [{section}]"


def test_airflow_commands_exist_in_the_installed_cli(services, cli):
    helps = last_json(cli["airflow"])
    main, celery, db, jobs_check = helps[""], helps["celery"], helps["db"], helps["jobs check"]
    assert main == ok(cli["airflow --help"]), "the parser must be the one the `airflow` command uses"
    expected = {"airflow-apiserver": ["api-server"], "airflow-scheduler": ["scheduler"],
                "airflow-dag-processor": ["dag-processor"], "airflow-triggerer": ["triggerer"],
                "airflow-worker": ["celery", "worker"]}
    for name, command in expected.items():
        assert argv(services[name]["command"]) == command, name
        assert listed(main, command[0]), f"`airflow {command[0]}` is not a command of the installed airflow"
    assert listed(celery, "worker"), "`airflow celery worker` missing"
    init_script = " ".join(argv(services["airflow-init"]["command"]))
    init_calls = re.findall(r"/entrypoint airflow ([a-z-]+)(?: ([a-z-]+))?", init_script)
    assert ("db", "migrate") in init_calls, "airflow-init must run `airflow db migrate`"
    for group, sub in init_calls:
        assert listed(main, group), f"airflow-init runs unknown `airflow {group}`"
        if group == "db":
            assert listed(db, sub), f"airflow-init runs unknown `airflow db {sub}`"
    assert "--hostname" in jobs_check
    for name, job_type in (("airflow-dag-processor", "DagProcessorJob"), ("airflow-triggerer", "TriggererJob")):
        test = " ".join(argv(services[name]["healthcheck"]["test"]))
        assert f"airflow jobs check --job-type {job_type} --hostname" in test, name
        assert job_type in jobs_check, f"`airflow jobs check` knows no {job_type}"
    worker_test = " ".join(argv(services["airflow-worker"]["healthcheck"]["test"]))
    assert "celery --app airflow.providers.celery.executors.celery_executor.app inspect ping" in worker_test
    assert helps["celery app"], "the Celery app the worker healthcheck pings does not import"


def test_edge_is_caddy_loaded_with_the_bootstrap_config_the_code_generates(services, resolved):
    from pathlib import Path

    from include.edge import caddy_config

    edge = services["edge"]
    assert edge["image"].startswith("caddy:") and "build" not in edge, "the edge runs the official Caddy image"
    command = argv(edge["command"])
    assert command[:2] == ["caddy", "run"]
    mounts = dict((target, source) for source, target in volume_mounts(edge))
    bootstrap = json.loads((ROOT / mounts[command[command.index("--config") + 1]]).read_text())
    worker = environment(resolved["airflow-worker"])
    # the file is what include/edge/ would load with no model: regenerate it after changing either
    assert bootstrap == caddy_config({"models": {}}, listen=f"{worker['MLOPS_EDGE_HOST'].replace('0.0.0.0', '')}:"
                                     f"{worker['MLOPS_SERVING_PORT']}", admin=Path(worker["MLOPS_EDGE_ADMIN"]),
                                     admin_mode=worker["MLOPS_EDGE_ADMIN_MODE"],
                                     internal=worker["MLOPS_EDGE_INTERNAL"])
    # the admin socket lives in a volume only the edge and the worker mount, never on a port
    admin_dir = str(Path(worker["MLOPS_EDGE_ADMIN"]).parent)
    sharing = {name for name, svc in services.items()
               if any(target == admin_dir for _, target in volume_mounts(svc))}
    assert sharing == {"edge", "airflow-worker"}, sharing
    assert [p for p in edge.get("ports", []) if "2020" in str(p)] == [], "the internal port is never published"


def test_retrain_command_runs(services, cli):
    entry = argv(services["retrain"]["entrypoint"])
    assert entry[-3:] == ["python", "-m", "include.cli"] and "/entrypoint" in entry
    assert "--reason" in ok(cli["retrain"])


def test_mlflow_server_accepts_every_flag(services, cli):
    command = argv(services["mlflow"]["command"])
    assert command[:4] == ["python", "-m", "mlflow", "server"]
    help_text = last_json(cli["mlflow server"])["help"]  # parsing the service's arguments succeeded
    for flag in (a for a in command if a.startswith("--")):
        assert re.search(rf"(^|\s){re.escape(flag)}[\s/,]", help_text), f"mlflow server has no {flag}"
    env = environment(services["mlflow"])
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


# ------------------------------------------------------------------------------------ environment


def test_config_module_is_parsed():
    names = config_env_vars()
    assert {"MLOPS_STATE_DIR", "MLFLOW_TRACKING_URI", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "DOCKER_HOST",
            "MLOPS_S3_ENDPOINT", "MLOPS_ADMIN_TOKEN"} <= names, names
    stale = set(EMBEDDED_ONLY) - names
    assert not stale, f"allow-listed but no longer read by include/config.py: {sorted(stale)}"


def test_every_config_variable_is_set_for_the_airflow_services(services):
    names = config_env_vars()
    for name in sorted(AIRFLOW_SERVICES):
        env = environment(services[name])
        allowed = set(EMBEDDED_ONLY) | (set() if name == "airflow-worker" else set(WORKER_ONLY))
        missing = sorted(names - set(env) - allowed)
        assert not missing, (f"{name} does not set {missing}, which include/config.py reads: set it in "
                             f"docker-compose.yaml or allow-list it in EMBEDDED_ONLY with a reason")


def test_endpoints_point_at_the_services(resolved, env_example):
    worker = environment(resolved["airflow-worker"])
    mlflow_cmd = argv(resolved["mlflow"]["command"])

    def host_port(url: str) -> tuple[str, int | None]:
        u = urlsplit(url)
        return u.hostname, u.port

    assert host_port(worker["MLFLOW_TRACKING_URI"]) == ("mlflow", int(mlflow_cmd[mlflow_cmd.index("--port") + 1]))
    assert worker["MLFLOW_REGISTRY_URI"] == worker["MLFLOW_TRACKING_URI"]
    assert worker["MLOPS_MLFLOW_ARTIFACT_ROOT"].startswith("mlflow-artifacts:"), \
        "artifacts go through the MLflow server, so model servers need no S3 credentials"
    assert host_port(worker["MLOPS_GATEWAY_URL"]) == ("edge", int(worker["MLOPS_SERVING_PORT"]))
    assert host_port(worker["MLOPS_S3_ENDPOINT"]) == ("minio", 9000)
    assert host_port(worker["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]) == ("airflow-apiserver", 8080)
    assert host_port(worker["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])[0] == "postgres"
    assert host_port(worker["AIRFLOW__CELERY__BROKER_URL"])[0] == "redis"
    assert worker["DOCKER_HOST"] == "unix:///var/run/docker.sock" and worker["MLOPS_DEPLOY_BACKEND"] == "docker"
    bucket = environment(resolved["minio-init"])["MLOPS_BUCKET"]
    assert bucket == env_example["MLOPS_BUCKET"]
    destination = mlflow_cmd[mlflow_cmd.index("--artifacts-destination") + 1]
    for uri in (worker["MLOPS_DVC_REMOTE"], worker["MLOPS_LANDING"], destination):
        assert uri.startswith(f"s3://{bucket}/"), f"{uri} is not in the bucket minio-init creates"


def test_state_dir_is_mounted_at_the_same_path(resolved):
    """The worker starts serving containers through the host's engine: bind paths must be host paths."""
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        state = environment(resolved[name])["MLOPS_STATE_DIR"]
        assert (state, state) in volume_mounts(resolved[name]), f"{name}: {state} not mounted at the same path"
        assert state.startswith("/")


def test_docker_socket_only_on_the_worker(services):
    socket = "/var/run/docker.sock"
    for name, svc in services.items():
        mounted = any(src == socket for src, _ in volume_mounts(svc))
        assert mounted == (name == "airflow-worker"), f"{name}: the Docker socket is root on the host"
    assert services["airflow-worker"]["group_add"] == [
        "${DOCKER_GID:?set DOCKER_GID in .env (stat -c %g /var/run/docker.sock)}"]
    text = COMPOSE_FILE.read_text()
    assert "root-equivalent" in text and "socket proxy" in text, "compose must say what the socket mount means"


def test_published_ports_bind_to_the_configured_address(services):
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert str(port).startswith("${MLOPS_BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} on every interface"


# ---------------------------------------------------------------------------------------- secrets


def test_no_literal_secret_anywhere(services):
    for name, svc in services.items():
        for key, value in environment(svc).items():
            if SECRET_KEY.search(key) and not key.endswith("_FILE"):  # *_FILE: a path to a secret
                assert REQUIRED_REF.fullmatch(value), f"{name}: {key} must be `${{VAR:?...}}`, got {value!r}"
        for text in strings(svc):
            for password in URL_PASSWORD.findall(text):
                assert REQUIRED_REF.fullmatch(password), f"{name}: literal password in a URL: {text!r}"


def test_secrets_never_have_defaults(refs):
    for name, op in refs:
        if SECRET_KEY.search(name):
            assert op == ":?", f"${{{name}}} is used with {op or 'no operator'}: secrets must be required (:?)"


def test_compose_resolves_with_env_example_and_names_each_missing_variable(raw, env_example, refs):
    resolve(raw, env_example)  # no MissingVariable
    required = {name for name, op in refs if op == ":?"}
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_ADMIN_PASSWORD",
            "MLOPS_ADMIN_TOKEN", "AWS_SECRET_ACCESS_KEY", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET"} <= required
    for name in sorted(required):
        env = {k: v for k, v in env_example.items() if k != name}
        with pytest.raises(MissingVariable) as err:
            resolve(raw, env)
        assert err.value.name == name


def test_env_example_documents_every_variable_and_no_real_secret(refs, env_example):
    used = {name for name, _ in refs}
    assert not used - set(env_example), f"used in docker-compose.yaml, missing from .env.example: {sorted(used - set(env_example))}"
    assert not set(env_example) - used, f"in .env.example but unused: {sorted(set(env_example) - used)}"
    lines = ENV_EXAMPLE.read_text().splitlines()
    for key, value in env_example.items():
        if not SECRET_KEY.search(key) or key == "AWS_ACCESS_KEY_ID":
            continue
        assert "CHANGE_ME" in value, f".env.example: {key} must hold a CHANGE_ME placeholder, not a value"
        i = next(n for n, line in enumerate(lines) if line.startswith(f"{key}="))
        block = []
        while i > 0 and lines[i - 1].strip():
            i -= 1
            block.append(lines[i])
        hint = " ".join(block)
        assert "openssl rand" in hint or "Fernet.generate_key" in hint, f".env.example: say how to generate {key}"


def _preflight(resolved_services, env: dict[str, str]) -> subprocess.CompletedProcess:
    svc = resolved_services["preflight"]
    command = argv(svc["command"])
    assert command[:2] == ["bash", "-c"]
    run_env = {**environment(svc), **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=60)


def test_preflight_refuses_the_placeholders(resolved):
    result = _preflight(resolved, {})
    assert result.returncode != 0
    for name in ("POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "MLOPS_ADMIN_TOKEN"):
        assert f"{name} still holds the .env.example placeholder" in result.stderr
    assert "AIRFLOW_FERNET_KEY is not a valid Fernet key" in result.stderr


def test_preflight_accepts_generated_secrets(raw, env_example):
    from cryptography.fernet import Fernet

    env = dict(env_example)
    for key in env:
        if SECRET_KEY.search(key) and key != "AWS_ACCESS_KEY_ID":
            env[key] = secrets.token_hex(32)
    env["AIRFLOW_FERNET_KEY"] = Fernet.generate_key().decode()
    result = _preflight(resolve(raw, env)["services"], {})
    assert result.returncode == 0, result.stderr
    env["REDIS_PASSWORD"] = "p@ss/word-with-url-breaking-chars"
    result = _preflight(resolve(raw, env)["services"], {})
    assert result.returncode != 0 and "REDIS_PASSWORD must be URL-safe" in result.stderr


def shell_scripts(resolved_services) -> dict[str, str]:
    """The inline scripts of the services: `[sh|bash] -c SCRIPT` across entrypoint + command."""
    scripts = {}
    for name, svc in resolved_services.items():
        words = argv(svc.get("entrypoint")) + argv(svc.get("command"))
        for i, word in enumerate(words[:-1]):
            if word.lstrip("-").endswith("c") and word.startswith("-") and i > 0 and \
                    Path(words[0]).name in ("sh", "bash"):
                scripts[name] = words[i + 1]
                break
    return scripts


def test_inline_scripts_parse(resolved):
    scripts = shell_scripts(resolved)
    assert {"preflight", "airflow-init", "mlflow-db-init", "minio-init", "redis"} <= set(scripts), sorted(scripts)
    for name, script in scripts.items():
        result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        for heredoc in re.findall(r"<<'PY'\n(.*?)\nPY\n", script, re.S):
            compile(heredoc, f"{name} heredoc", "exec")


def test_init_writes_the_simple_auth_password_file(services):
    init = services["airflow-init"]
    env = environment(init)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith("/opt/airflow/auth/")
    assert REQUIRED_REF.fullmatch(env["AIRFLOW_ADMIN_PASSWORD"])
    assert "AIRFLOW_ADMIN_PASSWORD" not in environment(services["airflow-apiserver"])
    for name in ("airflow-init", "airflow-apiserver"):
        assert any(t == "/opt/airflow/auth" for _, t in volume_mounts(services[name])), name
    for name in AIRFLOW_SERVICES - {"airflow-apiserver"}:  # the admin password file stays with the API server
        assert not any(t == "/opt/airflow/auth" for _, t in volume_mounts(services[name])), name


# ------------------------------------------------------------------------------------ other files


def test_dockerfile_pins_the_airflow_of_requirements():
    text = DOCKERFILE.read_text()
    version = re.search(r"^ARG AIRFLOW_VERSION=(\S+)$", text, re.M).group(1)
    req = re.search(r"^apache-airflow(?:\[[^\]]*\])?==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    lock = re.search(r"^apache-airflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert version == req == lock, f"Dockerfile {version}, requirements.txt {req}, constraints.txt {lock}"
    base = re.search(r"^ARG AIRFLOW_BASE=(\S+)$", text, re.M).group(1)
    assert base.startswith("apache/airflow:${AIRFLOW_VERSION}-python"), base
    assert re.search(r"^FROM \$\{AIRFLOW_BASE\}$", text, re.M)


def test_dockerfile_installs_as_the_official_image_expects():
    user, seen = None, {}
    for raw_line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "USER":
            user = rest.strip()
        elif instr == "RUN":
            if "apt-get install" in rest:
                seen["apt"] = user
                assert re.search(r"\bgit\b", rest), "git is needed by DVC"
            if "-r requirements.txt" in rest:
                seen["requirements"] = user
                assert "-c constraints.txt" in rest
            if "-e ." in rest:
                seen["project"] = user
                assert "--no-deps" in rest
        elif instr == "COPY":
            sources = [s for s in shlex.split(rest) if not s.startswith("--")][:-1]
            for src in sources:
                assert src == "." or (ROOT / src).exists(), f"COPY source {src} does not exist"
        elif instr in ("ENV", "ARG"):
            name = re.split(r"[=\s]", rest, maxsplit=1)[0]
            assert not SECRET_KEY.search(name), f"{instr} {name}: no secrets in the image"
    assert seen == {"apt": "root", "requirements": "airflow", "project": "airflow"}, seen


def test_dockerignore_admits_only_what_the_image_needs():
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "allow-list: exclude everything first"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert {"requirements.txt", "constraints.txt", "pyproject.toml", "include", "dags", "tools"} <= admitted
    assert not admitted & {".env", "state", ".git", ".venv", "build", "tests"}, admitted


def test_prometheus_scrapes_the_edge_metrics(services, resolved):
    mounts = dict((t, s) for s, t in volume_mounts(services["prometheus"]))
    source = mounts["/etc/prometheus/prometheus.yml"]
    assert (ROOT / source).resolve() == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    target = f"edge{environment(resolved['airflow-worker'])['MLOPS_EDGE_INTERNAL']}"
    jobs = [j for j in config["scrape_configs"]
            if any(target in sc.get("targets", []) for sc in j.get("static_configs", []))]
    assert jobs and jobs[0].get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_loads_the_alerts_and_scrapes_pushgateway_and_model_servers(services, resolved):
    """Paths in deploy/prometheus.yml are relative to it: each must be mounted next to it."""
    mounts = dict((t, s) for s, t in volume_mounts(services["prometheus"]))
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for rule_file in config["rule_files"]:
        assert (ROOT / mounts[f"/etc/prometheus/{rule_file}"]).resolve() == PROMETHEUS_CONFIG.parent / rule_file
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    gateway = environment(resolved["airflow-worker"])["MLOPS_PUSHGATEWAY_URL"]
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == [urlsplit(gateway).netloc]
    assert jobs["pushgateway"]["honor_labels"] is True, "the pushed job/dataset/model labels must survive"
    # the deploy task writes MLOPS_PROMETHEUS_TARGETS; Prometheus reads it through its targets mount
    targets_file = Path(environment(resolved["airflow-worker"])["MLOPS_PROMETHEUS_TARGETS"])
    pattern = jobs["mlops-serving"]["file_sd_configs"][0]["files"][0]
    resolved_mounts = dict((t, s) for s, t in volume_mounts(resolved["prometheus"]))
    assert resolved_mounts[f"/etc/prometheus/{Path(pattern).parent}"] == str(targets_file.parent)
    assert targets_file.match(Path(pattern).name)
    init = " ".join(argv(services["airflow-init"]["command"]))
    assert '"$${MLOPS_STATE_DIR}/prometheus"' in init, "airflow-init must create the targets dir for the worker"
    assert depends_on(services["prometheus"]).get("airflow-init") == "service_completed_successfully"


def test_relative_bind_mounts_exist(services):
    for name, svc in services.items():
        for source, _ in volume_mounts(svc):
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_docs_explain_the_distributed_mode():
    text = DOCS.read_text()
    assert "## Docker Compose (distributed mode)" in text
    for words in ("docker.sock", "root", "socket proxy", "rootless", "TLS", ".env.example"):
        assert words.lower() in text.lower(), f"docs/compose.md should cover {words!r}"


def test_ci_override_changes_only_the_images_of_every_service(services):
    """docker-compose.ci.yaml swaps each official image for a locally built one (tools/build_ci_images.sh)
    and nothing else, so CI runs the users' stack; every image it names is one the script builds."""
    override = yaml.safe_load(CI_OVERRIDE.read_text())
    assert set(override["services"]) == set(services), "every service needs a CI image (and no other)"
    built = set(re.findall(r"^build (\S+) ", (ROOT / "tools" / "build_ci_images.sh").read_text(), re.M))
    built |= {"postgres", "redis", "grafana-stub"}  # built in the script's loop
    for name, svc in override["services"].items():
        assert set(svc) <= {"image", "build"}, f"{name}: the override may change only image/build, not {set(svc)}"
        m = re.fullmatch(r"mlops-ci-([a-z0-9-]+):local", svc["image"])
        assert m and m.group(1) in built, f"{name}: {svc['image']} is not built by tools/build_ci_images.sh"
        if "build" in svc:  # the project's own image: the users' Dockerfile on the stand-in base
            assert svc["build"]["dockerfile"] == "Dockerfile" and set(svc["build"]["args"]) == {"AIRFLOW_BASE"}
            assert services[name]["build"]["dockerfile"] == "Dockerfile", name


def test_docker_compose_config_accepts_the_file():
    # CI installs the plugin (tools/debian_tools.sh): there a missing one is a failure, not a skip
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    docker = shutil.which("docker")
    if not docker:
        missing("no docker client binary: `docker compose config` not run")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        missing(f"the docker compose plugin is not installed (tools/debian_tools.sh): "
                f"{(version.stderr or version.stdout).strip()[:200]}")
    for files in ([COMPOSE_FILE], [COMPOSE_FILE, CI_OVERRIDE]):
        result = subprocess.run([docker, "compose", "--env-file", str(ENV_EXAMPLE), *[a for f in files for a in ("-f", str(f))],
                                 "config", "-q"], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
