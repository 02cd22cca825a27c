"""The batch fast path scores exactly as the fitted pipeline does (bit for bit), or steps aside."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from include.batch import fastpath
from include.batch.fastpath import scorer
from include.batch.rows import ChunkValidator
from include.batch.skops_view import scorer_from_skops
from include.spec import load_spec
from include.training.metrics import model_input_columns, predict_scores
from include.training.pipeline import build_pipeline


def _batch(dataset: str, day: int, n: int):
    if dataset == "sessions":
        from include.demo_data import make_batch
    else:
        from include.demo_data_deliveries import make_batch
    df = make_batch(day, n)
    nullable = next(c.name for c in load_spec(dataset).feature_columns if c.nullable and c.is_numeric)
    df.loc[df.index[::7], nullable] = np.nan  # trees then learn where missing values go
    return df


def _fit(dataset: str, params: dict):
    spec = load_spec(dataset)
    df = _batch(dataset, 0, 3000)
    pipe = build_pipeline(spec, "hgb", params)
    return spec, pipe.fit(df[model_input_columns(spec)], df[spec.target])


# (8 leaves: one-byte leaf sets; 40 leaves: 64-bit sets); both tasks
@pytest.mark.parametrize(("dataset", "params"), [("sessions", {"max_iter": 40}),
                                                 ("deliveries", {"max_iter": 30, "max_leaf_nodes": 40,
                                                                 "min_samples_leaf": 5})])
def test_fast_path_equals_the_pipeline_bit_for_bit(dataset, params):
    spec, pipe = _fit(dataset, params)
    fast = scorer(pipe, spec)
    assert fast is not None and all(b[0] in ("numeric", "onehot") for b in fast.blocks)
    assert max(len(t.values) for t in fast.trees) > (8 if params.get("max_leaf_nodes") else 4)
    # one-byte leaf sets take the exit-value table, wider ones the lowest-bit arithmetic
    assert any(t.exit_values is not None for t in fast.trees) == (not params.get("max_leaf_nodes"))

    rows = _batch(dataset, 1, 2000)
    validator = ChunkValidator(spec)
    checked = validator.check(pa.Table.from_pandas(rows, preserve_index=False))
    assert checked.ok.all(), checked.rejects[:3]
    idx = pa.array(np.flatnonzero(checked.ok))
    got = fast.scores(fast.matrix(checked.columns, idx, lambda: validator.frame(checked)))
    want = predict_scores(pipe, validator.frame(checked), spec)
    assert np.isnan(rows[model_input_columns(spec)].select_dtypes("number").to_numpy()).any()
    np.testing.assert_array_equal(got, want)
    # a few rows (the model server's micro-batches) take the all-trees walk: the same scores
    for n in (1, 7, fastpath.FOREST_MAX_ROWS):
        few = pa.array(np.flatnonzero(checked.ok)[:n])
        np.testing.assert_array_equal(fast.scores(fast.matrix(checked.columns, few, None)), want[:n])

    # the same scorer read straight from the skops file (what a batch score task does, without sklearn)
    import skops.io

    view = scorer_from_skops(skops.io.dumps(pipe), spec)
    assert view is not None
    fast_v, classes = view
    assert [b[:2] for b in fast_v.blocks] == [b[:2] for b in fast.blocks]
    assert classes == (list(pipe.classes_) if spec.task == "classification" else [])
    np.testing.assert_array_equal(fast_v.scores(fast_v.matrix(checked.columns, idx, None)), want)

    # a category the model never saw and a missing one are all-zero one-hot rows, as sklearn's
    cat = next(c for c in spec.categorical_features)
    some = checked.columns | {cat: pa.array(["never-seen", None] + [None] * (len(rows) - 2), pa.string())}
    sub = pa.array([0, 1])
    frame = validator.frame(checked).iloc[:2].assign(**{cat: [np.nan, np.nan]})
    np.testing.assert_array_equal(fast.scores(fast.matrix(some, sub, lambda: frame)),
                                  predict_scores(pipe, frame, spec))


def test_other_families_keep_the_model_s_own_predict():
    spec = load_spec("sessions")
    df = _batch("sessions", 0, 500).dropna()
    pipe = build_pipeline(spec, "logreg").fit(df[model_input_columns(spec)], df[spec.target])
    assert scorer(pipe, spec) is None
    import skops.io

    assert scorer_from_skops(skops.io.dumps(pipe), spec) is None  # the score task then loads it with skops
