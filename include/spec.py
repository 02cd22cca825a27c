"""Dataset spec: one YAML file per dataset that every stage derives its schema from.

Format (see ``include/specs/sessions.yaml``)::

    name: sessions
    key: session_id            # unique per row; used to merge batches and join late labels
    timestamp: ts              # optional; makes the train/holdout split time-based
    target: purchased
    task: classification       # or regression
    slices: [device]           # categorical columns the gate checks for per-slice regressions
    model_name: sessions_purchase  # optional: its own registered model; default "<name>_model"
    columns:
      device: {dtype: category, values: [mobile, desktop], nullable: false}
      pages_viewed: {dtype: int, min: 1, max: 500}

dtypes: ``int``, ``float``, ``category``, ``string``, ``datetime``. Columns are not nullable
unless they say ``nullable: true``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DTYPES = ("int", "float", "category", "string", "datetime")
TASKS = ("classification", "regression")
# Narrower than what MLflow accepts: the name also appears in serving routes
# (/models/<model_name>/predict) and file names, where these characters need no escaping.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,255}$")


class SpecError(ValueError):
    """The spec file itself is wrong (not the data)."""


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = None

    @property
    def is_numeric(self) -> bool:
        return self.dtype in ("int", "float")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    columns: tuple[Column, ...]
    key: str
    target: str
    task: str
    timestamp: str | None = None
    slices: tuple[str, ...] = ()
    description: str = ""
    path: Path | None = field(default=None, compare=False)
    # None: "<name>_model" (see the model_name property); set when the spec names its model
    registered_model: str | None = None

    @property
    def model_name(self) -> str:
        """The dataset's own registered model in MLflow."""
        return self.registered_model or default_model_name(self.name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def feature_columns(self) -> list[Column]:
        """Model inputs: everything but the key, timestamp and target."""
        skip = {self.key, self.target, self.timestamp}
        return [c for c in self.columns if c.name not in skip]

    @property
    def numeric_features(self) -> list[str]:
        return [c.name for c in self.feature_columns if c.is_numeric]

    @property
    def categorical_features(self) -> list[str]:
        return [c.name for c in self.feature_columns if c.dtype in ("category", "string")]


def default_model_name(dataset: str) -> str:
    return f"{dataset}_model"


def parse_spec(raw: dict, *, path: Path | None = None) -> DatasetSpec:
    where = str(path) if path else "spec"
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping at top level")
    missing = [k for k in ("name", "columns", "key", "target", "task") if k not in raw]
    if missing:
        raise SpecError(f"{where}: missing required field(s) {missing}")
    if raw["task"] not in TASKS:
        raise SpecError(f"{where}: task must be one of {TASKS}, got {raw['task']!r}")
    columns = []
    for name, body in (raw["columns"] or {}).items():
        body = body or {}
        dtype = body.get("dtype")
        if dtype not in DTYPES:
            raise SpecError(f"{where}: column {name!r} has dtype {dtype!r}; expected one of {DTYPES}")
        values = body.get("values")
        columns.append(
            Column(
                name=str(name),
                dtype=dtype,
                nullable=bool(body.get("nullable", False)),
                min=body.get("min"),
                max=body.get("max"),
                values=tuple(str(v) for v in values) if values is not None else None,
            )
        )
    names = {c.name for c in columns}
    for role in ("key", "target", "timestamp"):
        if raw.get(role) and raw[role] not in names:
            raise SpecError(f"{where}: {role} column {raw[role]!r} is not among the columns {sorted(names)}")
    for s in raw.get("slices") or []:
        if s not in names:
            raise SpecError(f"{where}: slice column {s!r} is not among the columns")
    model_name = raw.get("model_name")
    if model_name is not None and not (isinstance(model_name, str) and MODEL_NAME_RE.match(model_name)):
        raise SpecError(f"{where}: model_name {model_name!r} must be letters, digits, '_', '-' or '.' "
                        "(starting with a letter or digit, at most 256 characters)")
    return DatasetSpec(
        name=str(raw["name"]),
        columns=tuple(columns),
        key=raw["key"],
        target=raw["target"],
        task=raw["task"],
        timestamp=raw.get("timestamp"),
        slices=tuple(raw.get("slices") or ()),
        description=raw.get("description", ""),
        path=path,
        registered_model=model_name,
    )


def load_spec(dataset: str, specs_dir: Path | None = None) -> DatasetSpec:
    """Load ``<specs_dir>/<dataset>.yaml`` (specs_dir defaults to the configured one)."""
    import yaml

    if specs_dir is None:
        from include.config import settings

        specs_dir = settings().specs_dir
    path = Path(specs_dir) / f"{dataset}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(specs_dir).glob("*.yaml"))
        raise SpecError(f"no spec for dataset {dataset!r} at {path}; known datasets: {known}")
    return parse_spec(yaml.safe_load(path.read_text()), path=path)
