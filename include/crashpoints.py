"""Named crash points: let a test kill a process at one exact step of a commit protocol.

``MLOPS_CRASH_AT=ingest.after_manifest`` makes the process die with ``os._exit(137)`` (the exit
status of kill -9) when it reaches ``crash_point("ingest.after_manifest")``: no ``finally``, no
``atexit``, no flushed buffers, the same as a worker killed by the OOM killer or a node loss.
A comma list names several points; ``name@N`` fires on the Nth hit of ``name`` in this process
only (e.g. the second batch of a run). Unset, a crash point costs one dict lookup.

Stdlib only: it is imported by library modules that must stay cheap to import.
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "MLOPS_CRASH_AT"
EXIT_CODE = 137

_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Exit the process at once if ``MLOPS_CRASH_AT`` names this point (see the module doc)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    _hits[name] += 1
    for item in wanted.split(","):
        point, _, nth = item.strip().partition("@")
        if point == name and (not nth or int(nth) == _hits[name]):
            # stderr is unbuffered at the fd level; the line tells a test log why the process vanished
            os.write(2, f"crash point {name} (hit {_hits[name]}): exiting {EXIT_CODE}\n".encode())
            os._exit(EXIT_CODE)
