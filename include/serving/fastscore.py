"""The model server's model call on the vectorised fast path (:mod:`include.batch.fastpath`).

A micro-batch of a few rows costs sklearn's pipeline ~7 ms whatever the row count (pandas through
the ColumnTransformer, then a Python call per tree), which made the model call, not HTTP, most of
the server's CPU. The fast path builds the feature matrix from the validated columns and walks all
trees at once (~0.5 ms for 8 rows). It is used only when the pipeline has the fast path's shape
and scores the golden sample bit for bit as the model's own predict did at load; anything else
keeps the model's own predict. ``MLOPS_SERVING_FASTPATH=0`` turns it off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from include.spec import Column, DatasetSpec

log = logging.getLogger(__name__)


def fast_scorer(model: Any, spec: DatasetSpec, columns: list[Column], golden: dict[str, list],
                golden_scores: np.ndarray, frame: Callable[[dict[str, list]], Any]) -> Any | None:
    """The fast scorer for ``model`` if it scores ``golden`` exactly as ``golden_scores``, else None."""
    from include.batch.fastpath import scorer

    try:
        fast = scorer(model, spec)
    except Exception as err:  # noqa: BLE001 - a model the fast path cannot read keeps its own predict
        log.warning("fast path not built (%s: %s): the model's own predict serves", type(err).__name__, err)
        return None
    if fast is None:
        log.info("model is not of the fast path's shape: its own predict serves")
        return None
    try:
        got = fast_scores(fast, columns, golden, frame)
    except Exception as err:  # noqa: BLE001 - the model's own predict scored these rows: it serves
        log.warning("fast path failed on the golden sample (%s: %s): the model's own predict serves",
                    type(err).__name__, err)
        return None
    if not np.array_equal(got, golden_scores):
        log.warning("fast path disagrees with the model's own predict on the golden sample "
                    "(max |diff| %.3g): the model's own predict serves", float(np.max(np.abs(got - golden_scores))))
        return None
    return fast


def fast_scores(fast: Any, columns: list[Column], values: dict[str, list],
                frame: Callable[[dict[str, list]], Any]) -> np.ndarray:
    """Scores of the rows in ``values`` (column -> list, as the request schema gives them)."""
    import pyarrow as pa

    from include.serving.predlog import arrow_type

    arrays = {c.name: pa.array(values[c.name], type=arrow_type(c.dtype)) for c in columns}
    return fast.scores(fast.matrix(arrays, None, lambda: frame(values)))
