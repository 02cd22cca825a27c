"""Named crash points: let a test kill a process at one exact step of a commit protocol.

``MLOPS_CRASH_AT=ingest.after_manifest`` makes the process die with ``os._exit(137)`` (the exit
status of kill -9) when it reaches ``crash_point("ingest.after_manifest")``: no ``finally``, no
``atexit``, no flushed buffers, the same as a worker killed by the OOM killer or a node loss.
A comma list names several points; ``name@N`` fires on the Nth hit of ``name`` in this process
only (e.g. the second batch of a run). Unset, a crash point costs one dict lookup.

``MLOPS_HOLD_AT`` (same syntax) pauses the process at a point instead: it creates
``$MLOPS_HOLD_DIR/<point>.held`` and waits until ``<point>.go`` appears there, so a test can break
something the process depends on (stop the MLflow server, ...) at that exact step and then let it
go on into the fault.

Stdlib only: it is imported by library modules that must stay cheap to import.
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "MLOPS_CRASH_AT"
HOLD_ENV = "MLOPS_HOLD_AT"
HOLD_DIR_ENV = "MLOPS_HOLD_DIR"
HOLD_TIMEOUT_S = 600.0
EXIT_CODE = 137

_hits: Counter[str] = Counter()


def _named(wanted: str, name: str, hit: int) -> bool:
    for item in wanted.split(","):
        point, _, nth = item.strip().partition("@")
        if point == name and (not nth or int(nth) == hit):
            return True
    return False


def crash_point(name: str) -> None:
    """Exit the process at once if ``MLOPS_CRASH_AT`` names this point, or wait there if
    ``MLOPS_HOLD_AT`` does (see the module doc)."""
    wanted, hold = os.environ.get(ENV), os.environ.get(HOLD_ENV)
    if not wanted and not hold:
        return
    _hits[name] += 1
    if wanted and _named(wanted, name, _hits[name]):
        # stderr is unbuffered at the fd level; the line tells a test log why the process vanished
        os.write(2, f"crash point {name} (hit {_hits[name]}): exiting {EXIT_CODE}\n".encode())
        os._exit(EXIT_CODE)
    if hold and _named(hold, name, _hits[name]):
        _hold(name)


def _hold(name: str) -> None:
    import time
    from pathlib import Path

    where = Path(os.environ.get(HOLD_DIR_ENV) or ".")
    (where / f"{name}.held").write_text(str(os.getpid()))
    os.write(2, f"crash point {name} (hit {_hits[name]}): holding until {where / name}.go exists\n".encode())
    deadline = time.monotonic() + HOLD_TIMEOUT_S
    while not (where / f"{name}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"crash point {name}: nobody released the hold in {HOLD_TIMEOUT_S:.0f}s")
        time.sleep(0.05)
