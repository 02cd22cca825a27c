"""The reusable model CI workflow (.github/workflows/model-ci.yml) and its GitLab twin in
docs/model-ci.md: they parse, call only commands this repository and its venv provide, and hold
no credential in plain text (every secret-looking value comes from the CI's secrets)."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from include.config import PROJECT_ROOT

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "model-ci.yml"
DOC = PROJECT_ROOT / "docs" / "model-ci.md"
VENV_BIN = Path(sys.executable).parent
SHELL_WORDS = {"set", "exit", "cat", "echo", "test", "[", "if", "then", "fi", "else", "status=$?", "export", "cd",
               "mkdir", "true"}
SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|_KEY_ID|TRACKING_URI|DATA_REPO_URL|DVC_REMOTE|ENDPOINT)",
                       re.IGNORECASE)
LEAKS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"://[^/\s:@$]+:[^/\s@$]+@"),  # user:password@host in a URL
    re.compile(r"(ghp|gho|ghs|glpat)[-_][A-Za-z0-9]{16,}"),  # GitHub / GitLab tokens
]


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _gitlab_job() -> dict:
    text = DOC.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    jobs = [yaml.safe_load(b) for b in blocks if "mlops-ci check" in b and "script:" in b]
    assert jobs, "docs/model-ci.md has no GitLab CI job (a ```yaml block with script: and mlops-ci check)"
    return jobs[0]


def _commands(script: str) -> list[list[str]]:
    """Each simple command of a shell script, as words (GitHub expressions replaced by a word)."""
    script = re.sub(r"\$\{\{.*?\}\}", "EXPR", script)
    out = []
    for line in script.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            words = shlex.split(part.split(">>")[0].split(" > ")[0])
            if words:
                out.append(words)
    return out


def _check_command(words: list[str]) -> None:
    cmd = words[0]
    if cmd in SHELL_WORDS or "=" in cmd:
        return
    if cmd in ("python", "python3"):
        if words[1] == "-m":
            __import__(words[2])  # pip, pytest: importable in this venv
        else:
            assert (PROJECT_ROOT / words[1]).is_file(), f"{words[1]} is not a file of this repository"
        return
    if cmd == "mlops-ci":
        from include.model_ci import build_parser

        build_parser().parse_args([w.replace("$DATASET", "sessions").replace("$REPRODUCE", "") for w in words[1:]
                                   if w != "$REPRODUCE"])
        assert (VENV_BIN / "mlops-ci").exists(), "mlops-ci is not installed: pip install --no-deps -e ."
        return
    assert (VENV_BIN / cmd).exists() or shutil.which(cmd), f"{cmd!r} is neither in the venv nor on PATH"


def _paths_exist(words: list[str]) -> None:
    for w in words:
        if re.fullmatch(r"(tests|tools|include|dags)/[\w/.\-]+|requirements\.txt|constraints\.txt", w):
            assert (PROJECT_ROOT / w).exists(), f"{w} does not exist in this repository"


def _env_values(node, where: str = ""):
    """(name, value) of every env entry at any level of a workflow/job tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("env", "variables") and isinstance(v, dict):
                yield from ((f"{where}.{name}", name, val) for name, val in v.items())
            else:
                yield from _env_values(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _env_values(v, f"{where}[{i}]")


def test_workflow_parses_and_is_reusable():
    wf = _workflow()
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert "workflow_call" in on and "datasets" in on["workflow_call"]["inputs"]
    jobs = wf["jobs"]
    steps = " ".join(str(s.get("run", "")) for s in jobs["checks"]["steps"])
    assert "ruff check ." in steps and "tests/dags" in steps and "tests/unit" in steps
    model = jobs["model"]
    assert model["needs"] == "checks" and "fromJSON(inputs.datasets)" in model["strategy"]["matrix"]["dataset"]
    run = " ".join(str(s.get("run", "")) for s in model["steps"])
    assert "mlops-ci check --dataset" in run and "$GITHUB_STEP_SUMMARY" in run and "exit $status" in run


@pytest.mark.parametrize("source", ["github", "gitlab"])
def test_ci_calls_only_commands_that_exist(source):
    if source == "github":
        scripts = [s["run"] for job in _workflow()["jobs"].values() for s in job["steps"] if "run" in s]
    else:
        job = _gitlab_job()
        scripts = ["\n".join(v.get("script", [])) for v in job.values() if isinstance(v, dict) and "script" in v]
    commands = [w for s in scripts for w in _commands(s)]
    assert any(w[0] == "mlops-ci" for w in commands)
    for words in commands:
        _check_command(words)
        _paths_exist(words)


@pytest.mark.parametrize("source", ["github", "gitlab"])
def test_ci_holds_no_secret_in_plain_text(source):
    text = WORKFLOW.read_text() if source == "github" else DOC.read_text()
    for pattern in LEAKS:
        assert not pattern.search(text), f"{source}: looks like a credential: {pattern.pattern}"
    tree = _workflow() if source == "github" else _gitlab_job()
    for where, name, value in _env_values(tree):
        if SECRETISH.search(name):
            ok = (re.fullmatch(r"\$\{\{\s*secrets\.[A-Z0-9_]+\s*\}\}", str(value)) if source == "github"
                  else str(value).startswith("$"))
            assert ok, f"{where} = {value!r}: credentials and endpoints must come from the CI's secrets"
    if source == "gitlab":  # GitLab: masked CI/CD variables, never `variables:` values in the file
        assert not [n for _, n, v in _env_values(tree) if SECRETISH.search(n) and not str(v).startswith("$")]


def test_secret_check_catches_a_plain_credential():
    bad = {"jobs": {"m": {"env": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG"}}}}
    found = [(n, v) for _, n, v in _env_values(bad) if SECRETISH.search(n)]
    assert found and not re.fullmatch(r"\$\{\{\s*secrets\.[A-Z0-9_]+\s*\}\}", found[0][1])
    assert LEAKS[0].search("key AKIAABCDEFGHIJKLMNOP") and LEAKS[2].search("https://bob:hunter2@mlflow.example")
