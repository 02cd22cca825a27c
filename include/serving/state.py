"""What a model server is configured with (:class:`ServingConfig`) and what it serves (:class:`ModelState`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.spec import DatasetSpec


@dataclass
class ServingConfig:
    model_name: str
    version: str
    spec: DatasetSpec
    predictions_dir: Path
    admin_token: str | None = None
    max_rows: int = 1000
    max_body_bytes: int = 8 * 1024 * 1024
    batch_rows: int = 64
    batch_wait_ms: float = 2.0
    log_flush_rows: int = 1000
    log_flush_seconds: float = 5.0
    model_threads: int = 1
    fast_path: bool = True


@dataclass(frozen=True)
class ModelState:
    """One loaded model version; swapped as a whole (a single attribute assignment)."""

    name: str
    version: str
    model: Any
    golden_scores: tuple[float, ...]
    loaded_at: str
    load_seconds: float
    fast: Any = None  # the vectorised scorer (include.serving.fastscore), when it scores as the model does
