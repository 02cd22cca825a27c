"""The batch fast path built straight from a model's skops file: no sklearn, skops or scipy.stats import.

A score task that loads the pipeline with skops first imports sklearn (which imports scipy.stats)
and skops (which lists every sklearn estimator): about 2 s and 90 MiB before the first row, more
than it then takes to score a million rows with :mod:`include.batch.fastpath`. That scorer needs
only arrays and a few settings of the fitted pipeline, and a skops file is a zip of a JSON tree
(class names and attributes) plus ``.npy`` arrays. This module reads that tree as plain data
(JSON, and arrays through ``np.load(allow_pickle=False)``: nothing is imported or constructed, so
it trusts nothing) and builds the same :class:`~include.batch.fastpath.FastScorer` that
:func:`~include.batch.fastpath.scorer` builds from the loaded pipeline, under the same conditions
and naming the exact sklearn classes it understands. Anything else (another family or loss, an
unknown transformer, another layout of the file) gives None, and the caller loads the pipeline
with skops as before. Equality with the loaded pipeline's scores is tested bit for bit
(``tests/unit/test_batch_fastpath.py``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from include.batch.fastpath import FastScorer

_PIPELINE = "sklearn.pipeline.Pipeline"
_COLUMNS = "sklearn.compose._column_transformer.ColumnTransformer"
_FUNCTION = "sklearn.preprocessing._function_transformer.FunctionTransformer"
_IMPUTER = "sklearn.impute._base.SimpleImputer"
_ONEHOT = "sklearn.preprocessing._encoders.OneHotEncoder"
_HGB = "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoosting"
_TREE = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
_LINKS = "sklearn._loss.link."


class _Unsupported(Exception):
    """The file is not of the shape the fast path understands."""


@dataclass(frozen=True)
class Obj:
    """An object of the tree: its class (``module.Class``) and attributes, never instantiated."""

    cls: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name not in self.attrs:
            raise _Unsupported(f"{self.cls} has no {name}")
        return self.attrs[name]


@dataclass(frozen=True)
class Opaque:
    """A node this reader does not decode (types, dtypes, random generators, functions...)."""

    cls: str
    loader: str


def read(data: bytes) -> Any:
    """The skops file's tree as plain values: dicts, lists, tuples, JSON values, arrays, Obj, Opaque."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        schema = json.loads(z.read("schema.json"))
        return _decode(schema, z)


def _decode(node: dict, z: zipfile.ZipFile) -> Any:
    loader = node.get("__loader__")
    cls = f"{node.get('__module__')}.{node.get('__class__')}"
    content = node.get("content")
    if loader == "JsonNode":
        return json.loads(content)
    if loader in ("ListNode", "TupleNode"):
        items = [_decode(n, z) for n in content]
        return items if loader == "ListNode" else tuple(items)
    if loader == "DictNode":
        return {k: _decode(v, z) for k, v in content.items()}
    if loader == "NdArrayNode":
        if node.get("type") == "numpy":
            with z.open(node["file"]) as fh:
                return np.load(io.BytesIO(fh.read()), allow_pickle=False)
        return [_decode(n, z) for n in content]  # an object array, as its items
    if loader == "ObjectNode":
        attrs = _decode(content, z) if content is not None else {}
        return Obj(cls, attrs if isinstance(attrs, dict) else {})
    return Opaque(cls, str(loader))


def scorer_from_skops(data: bytes, spec) -> tuple[FastScorer, list] | None:
    """(the fast scorer, the classes for classification else []) from a skops file, or None."""
    try:
        return _build(read(data), spec)
    except (_Unsupported, KeyError, TypeError, ValueError, IndexError):
        return None


def _steps(obj: Any) -> list:
    if not isinstance(obj, Obj) or obj.cls != _PIPELINE:
        raise _Unsupported("not a Pipeline")
    return [step[1] for step in obj.get("steps")]


def _build(root: Any, spec) -> tuple[FastScorer, list]:
    steps = _steps(root)
    if len(steps) != 2:
        raise _Unsupported("a pipeline of other than two steps")
    pre, est = steps
    if not isinstance(pre, Obj) or pre.cls != _COLUMNS:
        raise _Unsupported("no ColumnTransformer")
    if not isinstance(est, Obj) or est.cls not in (_HGB + "Classifier", _HGB + "Regressor"):
        raise _Unsupported("not a HistGradientBoosting estimator")
    if est.get("n_trees_per_iteration_") != 1:
        raise _Unsupported("multiclass")
    classes = list(np.asarray(est.get("classes_")).tolist()) if spec.task == "classification" else []
    if spec.task == "classification" and len(classes) != 2:
        raise _Unsupported("not binary")

    blocks, width = [], 0
    for _name, trans, cols in pre.get("transformers_"):
        if trans == "drop":
            continue
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise _Unsupported("columns not named")
        if not cols:
            continue
        if trans == "passthrough" or (isinstance(trans, Obj) and trans.cls == _FUNCTION
                                      and trans.get("func") is None and trans.get("inverse_func") is None):
            if not all(spec.column(c).is_numeric for c in cols):
                raise _Unsupported("a passthrough of non-numeric columns")
            blocks.append(("numeric", cols, None))
            width += len(cols)
            continue
        imputer, onehot = _steps(trans)
        if not (isinstance(imputer, Obj) and imputer.cls == _IMPUTER and imputer.get("strategy") == "constant"
                and isinstance(onehot, Obj) and onehot.cls == _ONEHOT
                and onehot.get("handle_unknown") == "ignore" and onehot.get("drop") is None
                and onehot.get("_infrequent_enabled") is False):
            raise _Unsupported("a transformer the fast path does not compute")
        categories = onehot.get("categories_")
        fill = imputer.get("fill_value")
        if len(categories) != len(cols) or not all(
                isinstance(cats, list) and all(isinstance(v, str) for v in cats) and fill not in cats
                for cats in categories):
            raise _Unsupported("categories other than strings")
        blocks.append(("onehot", cols, [pa.array(cats, pa.string()) for cats in categories]))
        width += sum(len(cats) for cats in categories)
    if width != est.get("n_features_in_"):
        raise _Unsupported("feature count differs")

    trees = []
    for per_iteration in est.get("_predictors"):
        tree = per_iteration[0]
        if not isinstance(tree, Obj) or tree.cls != _TREE:
            raise _Unsupported("not a TreePredictor")
        nodes = tree.get("nodes")
        if nodes["is_categorical"].any() or int(nodes["is_leaf"].sum()) > 64:
            raise _Unsupported("categorical splits or more than 64 leaves")
        trees.append(nodes)
    baseline = np.asarray(est.get("_baseline_prediction"))
    return FastScorer(blocks, trees, width, baseline, _finish(est.get("_loss"), spec.task)), classes


def _finish(loss: Any, task: str):
    """What the estimator's loss does to the raw predictions, for the losses whose maths is known here.

    Classification: ``HalfBinomialLoss.predict_proba(raw)[:, 1]`` is ``LogitLink.inverse``, i.e.
    scipy's ``expit`` (what sklearn calls); regression: ``link.inverse(raw.ravel())``.
    """
    if not isinstance(loss, Obj):
        raise _Unsupported("no loss object")
    link = loss.get("link")
    link_cls = link.cls if isinstance(link, Obj) else ""
    if task == "classification":
        if loss.cls != "sklearn._loss.loss.HalfBinomialLoss" or link_cls != _LINKS + "LogitLink":
            raise _Unsupported(f"loss {loss.cls}")
        from scipy.special import expit

        return lambda raw: expit(raw[:, 0])
    if link_cls == _LINKS + "IdentityLink":
        return lambda raw: raw.ravel()
    if link_cls == _LINKS + "LogLink":
        return lambda raw: np.exp(raw.ravel())
    raise _Unsupported(f"link {link_cls}")
