"""Run one real step in a child process that a named crash point kills (see include/crashpoints.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from include.config import PROJECT_ROOT
from include.crashpoints import ENV, EXIT_CODE


def run_until_crash(code: str, point: str, *args: str, timeout: float = 600) -> float:
    """Run ``python -c code args`` with ``MLOPS_CRASH_AT=point``; assert it died there; seconds taken.

    The child inherits the test's environment (the ``state`` fixture's stores), so it works on
    the same data repo, landing zone and MLflow store as the in-process retry that follows.
    """
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, ENV: point})
    assert proc.returncode == EXIT_CODE and f"crash point {point.split('@')[0]}" in proc.stderr, (
        f"expected the child to die at {point} (exit {EXIT_CODE}), got exit {proc.returncode}:\n"
        f"{proc.stderr[-4000:]}"
    )
    return time.perf_counter() - t0
