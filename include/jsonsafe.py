"""One JSON sanitizer for the records the stages write (drift decisions, validation reports), and
one reader of their append-only JSONL logs (audit, deployments, drift triggers).

Standard library only: numpy and pandas values are recognised by duck typing (``.item()``) or,
for pandas' missing-value markers, through pandas only when pandas is already imported (a value
cannot be a pandas object otherwise), so importing this costs nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any


def json_safe(x: Any) -> Any:
    """Plain JSON types only: numpy scalars -> Python, NaN/inf/NA/NaT -> None, datetimes -> ISO text,
    sets/tuples -> lists, paths and anything else -> ``str``."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [json_safe(v) for v in x]
    if x is None or isinstance(x, bool | str | int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dt.date):  # also pandas Timestamps; NaT is the one not equal to itself
        return x.isoformat() if x == x else None
    if isinstance(x, Path):
        return str(x)
    if getattr(getattr(x, "dtype", None), "kind", None) in ("m", "M"):  # numpy datetime64/timedelta64
        return str(x) if x == x else None  # .item() would give nanoseconds as an int
    if hasattr(x, "item") and not isinstance(x, bytes):  # numpy scalars (np.bool_ included)
        return json_safe(x.item())
    pd = sys.modules.get("pandas")
    if pd is not None:
        try:
            if pd.isna(x):
                return None
        except (TypeError, ValueError):
            pass
    return str(x)


def read_jsonl(path: str | Path) -> list[dict]:
    """Every JSON object line of an append-only log, oldest first; [] if the file is absent.

    A line that is not a JSON object (a write torn by a crash, a foreign line) is skipped with a
    warning naming it: one bad line must not hide the rest of the history.
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            out.append(entry)
        else:
            logging.getLogger(__name__).warning("%s:%d is not a JSON object (interrupted write?); skipped", path, n)
    return out
