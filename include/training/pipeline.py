"""The model: a ColumnTransformer built from the dataset spec plus the estimator of a family, with
each family's default hyperparameters and the candidates a search tries."""

from __future__ import annotations

from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from include.spec import DatasetSpec
from include.training.inputs import TrainingInputError
from include.training.metrics import MISSING

FAMILIES: dict[str, tuple[str, ...]] = {
    "classification": ("logreg", "hgb"),
    "regression": ("ridge", "hgb"),
}

DEFAULT_PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("classification", "logreg"): {"C": 1.0, "max_iter": 2000},
    ("classification", "hgb"): {
        "learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 8, "min_samples_leaf": 50,
        "l2_regularization": 1.0, "early_stopping": False,
    },
    ("regression", "ridge"): {"alpha": 1.0},
    ("regression", "hgb"): {
        "learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 8, "min_samples_leaf": 50,
        "l2_regularization": 1.0, "early_stopping": False,
    },
}

# Candidates tried on top of the given params when search=True (picked by the val primary metric).
SEARCH_SPACE: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("classification", "logreg"): [{"C": 0.1}, {"C": 1.0}, {"C": 10.0}],
    ("classification", "hgb"): [
        {"learning_rate": 0.1, "max_leaf_nodes": 15},
        {"learning_rate": 0.05, "max_leaf_nodes": 31},
        {"learning_rate": 0.05, "max_leaf_nodes": 31, "l2_regularization": 1.0, "max_iter": 300},
    ],
    ("regression", "ridge"): [{"alpha": 0.1}, {"alpha": 1.0}, {"alpha": 10.0}],
    ("regression", "hgb"): [
        {"learning_rate": 0.1, "max_leaf_nodes": 15},
        {"learning_rate": 0.05, "max_leaf_nodes": 31},
        {"learning_rate": 0.05, "max_leaf_nodes": 31, "l2_regularization": 1.0, "max_iter": 300},
    ],
}


def check_family(spec: DatasetSpec, family: str) -> None:
    known = FAMILIES[spec.task]
    if family not in known:
        raise TrainingInputError(
            f"unknown model family {family!r} for a {spec.task} task; known families: {', '.join(known)}"
        )


def resolve_params(spec: DatasetSpec, family: str, params: dict | None) -> dict[str, Any]:
    check_family(spec, family)
    return {**DEFAULT_PARAMS[(spec.task, family)], **(params or {})}


def build_pipeline(spec: DatasetSpec, family: str, params: dict | None = None, seed: int = 42) -> Pipeline:
    """Preprocessing from the spec + the family's estimator (params override the defaults)."""
    hp = resolve_params(spec, family, params)
    linear = family in ("logreg", "ridge")
    numeric = spec.numeric_features
    with_values = [c for c in spec.categorical_features if spec.column(c).values is not None]
    free = [c for c in spec.categorical_features if spec.column(c).values is None]

    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        if linear:
            num = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        else:
            num = "passthrough"  # HistGradientBoosting handles missing values itself
        transformers.append(("num", num, numeric))
    if with_values:
        transformers.append(("cat", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING)),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                     categories=[list(spec.column(c).values) for c in with_values])),
        ]), with_values))
    if free:
        transformers.append(("cat_free", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING)),
            ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=50,
                                     sparse_output=False)),
        ]), free))
    if not transformers:
        raise TrainingInputError(f"spec {spec.name!r} has no numeric or categorical feature columns")
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)

    if spec.task == "classification":
        est = LogisticRegression(random_state=seed) if family == "logreg" else \
            HistGradientBoostingClassifier(random_state=seed)
    else:
        est = Ridge(random_state=seed) if family == "ridge" else HistGradientBoostingRegressor(random_state=seed)
    try:
        est.set_params(**hp)
    except ValueError as err:
        valid = sorted(est.get_params())
        raise TrainingInputError(f"bad params {hp} for family {family!r}: {err}; valid names: {valid}") from err
    return Pipeline([("pre", pre), ("model", est)])
