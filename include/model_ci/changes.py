"""What changed between the champion and the working tree: the code (git) and the dependencies (the
lock file the champion's run logged, and the model's own ``requirements.txt`` pins)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

LOCK_ARTIFACT = "environment/constraints.txt"  # include.training logs the lock it ran with here


def project_root() -> Path:
    from include.config import PROJECT_ROOT

    return PROJECT_ROOT


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(project_root()), *args], capture_output=True, text=True, timeout=30)


def dirty() -> bool:
    try:
        return bool(_git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False


def code_change(champion_sha: str, sha: str) -> dict:
    """The working tree against the champion's code sha: the files that differ, when git knows it."""
    out = {"champion": champion_sha, "candidate": sha, "dirty": dirty(), "files": None, "note": ""}
    if champion_sha in ("", "unknown"):
        out["note"] = "the champion records no code sha"
        return out
    try:
        if _git("cat-file", "-e", f"{champion_sha}^{{commit}}").returncode != 0:
            out["note"] = f"commit {champion_sha[:12]} is not in this checkout (fetch its history to list the files)"
            return out
        out["files"] = [x.replace("\t", " ") for x in
                        _git("diff", "--name-status", champion_sha, "--").stdout.strip().splitlines()]
    except (OSError, subprocess.SubprocessError) as err:
        out["note"] = f"git diff failed: {err}"
    return out


def model_requirements(name: str, version: str) -> dict[str, str] | None:
    """``{package: version}`` pinned in a registered version's ``requirements.txt``, None if absent."""
    return _artifact_pins(f"models:/{name}/{version}/requirements.txt")


def run_lock(run_id: str) -> dict[str, str] | None:
    """``{package: version}`` of the lock file a training run logged (:data:`LOCK_ARTIFACT`), None if absent."""
    return _artifact_pins(f"runs:/{run_id}/{LOCK_ARTIFACT}")


def _artifact_pins(artifact_uri: str) -> dict[str, str] | None:
    """``{package: version}`` pinned in a logged requirements/constraints file, None if it was never
    logged; an unreachable MLflow raises :class:`~include.tracking.TrackingUnavailable` (an outage
    is not "no pins": the report would say nothing changed)."""
    from include.tracking import download_artifact

    with tempfile.TemporaryDirectory(prefix="model-ci-pins-") as tmp:
        local, _ = download_artifact(artifact_uri, tmp)
        return None if local is None else _pins(Path(local).read_text())


def _pins(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of the exact pins in a requirements/constraints text."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, _, ver = line.partition("==")
            out[_canon(name.split("[", 1)[0].strip())] = ver.split(";", 1)[0].strip()
    return out


def _canon(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_diff(champion: dict[str, str] | None, candidate: dict[str, str] | None,
                    champion_lock: dict[str, str] | None = None, lock_path: Path | None = None) -> dict:
    """What changed in the dependencies: the working tree's lock file against the full lock the
    champion's run logged (every added, removed or re-pinned package), and the model's own pins
    (its ``requirements.txt``) against the candidate's."""
    from include.training.model_io import LOCK_FILE

    lock_path = lock_path or project_root() / LOCK_FILE
    lock = _pins(lock_path.read_text()) if lock_path.exists() else None
    rows = []
    if champion is not None:
        for pkg in sorted(set(champion) | set(candidate or {})):
            was, now = champion.get(pkg), (candidate or {}).get(pkg) or (lock or {}).get(pkg)
            locked = (lock or {}).get(pkg)
            rows.append({"package": pkg, "champion": was, "candidate": now, "lock": locked, "changed": was != now})
    lock_changes = None
    if champion_lock is not None and lock is not None:
        lock_changes = [{"package": p, "champion": champion_lock.get(p), "candidate": lock.get(p)}
                        for p in sorted(set(champion_lock) | set(lock)) if champion_lock.get(p) != lock.get(p)]
    return {"recorded": champion is not None, "lock": lock is not None, "rows": rows,
            "n_locked": len(lock or {}), "lock_path": str(lock_path.name),
            "champion_lock": champion_lock is not None, "n_champion_locked": len(champion_lock or {}),
            "lock_changes": lock_changes}
