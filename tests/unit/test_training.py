"""Training without MLflow: split determinism, input checks, pipelines, skops allow-list, metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from include.demo_data import make_batch
from include.spec import load_spec, parse_spec
from include.training.inputs import TrainingInputError, check_frame, split
from include.training.metrics import compute_metrics, metric_key, predict_scores
from include.training.model_io import SKOPS_TRUSTED_TYPES
from include.training.pipeline import FAMILIES, build_pipeline


@pytest.fixture(scope="module")
def spec():
    return load_spec("sessions")


@pytest.fixture(scope="module")
def df():
    return make_batch(0, 1000, seed=7)


@pytest.fixture(scope="module")
def reg_spec():
    return parse_spec({
        "name": "prices", "key": "id", "target": "price", "task": "regression", "slices": ["kind"],
        "columns": {
            "id": {"dtype": "string"},
            "kind": {"dtype": "category", "values": ["a", "b", "c"]},
            "city": {"dtype": "string"},
            "size": {"dtype": "float"},
            "rooms": {"dtype": "int"},
            "price": {"dtype": "float"},
        },
    })


@pytest.fixture(scope="module")
def reg_df():
    rng = np.random.default_rng(0)
    n = 400
    kind = rng.choice(["a", "b", "c"], n)
    size = rng.gamma(3, 20, n)
    rooms = rng.integers(1, 6, n)
    return pd.DataFrame({
        "id": [f"r{i}" for i in range(n)], "kind": kind, "city": rng.choice(["x", "y"], n),
        "size": size, "rooms": rooms,
        "price": 3 * size + 10 * rooms + np.where(kind == "a", 50, 0) + rng.normal(0, 5, n),
    })


# ------------------------------------------------------------------------------------------- split


def test_time_split_is_deterministic_and_ordered(spec, df):
    train, val, test = split(df, spec)
    assert (len(train), len(val), len(test)) == (600, 200, 200)
    assert train[spec.timestamp].max() <= val[spec.timestamp].min()
    assert val[spec.timestamp].max() <= test[spec.timestamp].min()
    # the input row order does not matter
    shuffled = df.sample(frac=1.0, random_state=3)
    for a, b in zip(split(shuffled, spec), (train, val, test), strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_shuffle_split_without_timestamp(spec, df):
    no_ts = dataclasses.replace(spec, timestamp=None)
    a = split(df, no_ts, seed=1)
    b = split(df.sample(frac=1.0, random_state=5), no_ts, seed=1)
    c = split(df, no_ts, seed=2)
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
    assert set(a[2][spec.key]) != set(c[2][spec.key])
    assert set(a[0][spec.key]).isdisjoint(a[2][spec.key])
    assert sum(len(p) for p in a) == len(df)


@pytest.mark.parametrize("holdout, val", [(0.0, 0.2), (0.5, 0.5), (1.2, 0.1)])
def test_split_rejects_bad_fractions(spec, df, holdout, val):
    with pytest.raises(TrainingInputError, match="holdout_frac"):
        split(df, spec, holdout_frac=holdout, val_frac=val)


# ------------------------------------------------------------------------------------ input checks


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.drop(columns=["purchased"]), "target column 'purchased'.*not in the data"),
        (lambda d: d.drop(columns=["device", "cart_items"]), r"feature column\(s\) \['device', 'cart_items'\]"),
        (lambda d: d.head(30), "too small to split: 30 rows, need at least 50"),
        (lambda d: d.assign(purchased=0), "single class"),
        (lambda d: d.assign(purchased=np.arange(len(d)) % 3), "only binary classification"),
        (lambda d: d.assign(purchased=d.purchased.astype(float).where(d.index > 5)), "6 missing value"),
    ],
    ids=["no-target", "no-features", "too-small", "single-class", "multiclass", "null-target"],
)
def test_check_frame_says_what_to_fix(spec, df, mutate, message):
    with pytest.raises(TrainingInputError, match=message):
        check_frame(mutate(df.copy()), spec)


def test_regression_target_must_be_numeric(reg_spec, reg_df):
    with pytest.raises(TrainingInputError, match="not numeric"):
        check_frame(reg_df.assign(price="cheap"), reg_spec)


def test_unknown_family_names_known_ones(spec, reg_spec):
    with pytest.raises(ValueError, match="unknown model family 'xgb'.*known families: logreg, hgb"):
        build_pipeline(spec, "xgb", {}, 0)
    with pytest.raises(ValueError, match="known families: ridge, hgb"):
        build_pipeline(reg_spec, "logreg", {}, 0)


def test_bad_params_name_the_valid_ones(spec):
    with pytest.raises(TrainingInputError, match="bad params.*valid names"):
        build_pipeline(spec, "logreg", {"depth": 3}, 0)


# ---------------------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("task, family", [(t, f) for t, fams in FAMILIES.items() for f in fams])
def test_pipelines_need_exactly_the_trusted_skops_types(task, family, spec, df, reg_spec, reg_df):
    import skops.io

    s, d = (spec, df) if task == "classification" else (reg_spec, reg_df)
    pipe = build_pipeline(s, family, {"max_iter": 20} if family == "hgb" else {}, 0).fit(d, d[s.target])
    untrusted = set(skops.io.get_untrusted_types(data=skops.io.dumps(pipe)))
    assert untrusted <= set(SKOPS_TRUSTED_TYPES)
    if family == "hgb":
        assert untrusted == set(SKOPS_TRUSTED_TYPES)  # nothing in the list is unused
    loaded = skops.io.loads(skops.io.dumps(pipe), trusted=SKOPS_TRUSTED_TYPES)
    np.testing.assert_array_equal(predict_scores(loaded, d, s), predict_scores(pipe, d, s))


def test_scores_are_probabilities_and_reproducible(spec, df):
    train, _, test = split(df, spec)
    a = build_pipeline(spec, "hgb", {}, 42).fit(train, train[spec.target])
    b = build_pipeline(spec, "hgb", {}, 42).fit(train, train[spec.target])
    sa, sb = predict_scores(a, test, spec), predict_scores(b, test, spec)
    np.testing.assert_array_equal(sa, sb)
    assert sa.shape == (len(test),) and ((sa >= 0) & (sa <= 1)).all()


def test_unknown_and_missing_categories_are_tolerated(spec, df):
    pipe = build_pipeline(spec, "logreg", {}, 0).fit(df, df[spec.target])
    odd = df.head(3).copy()
    odd["device"] = ["watch", None, "mobile"]
    assert np.isfinite(predict_scores(pipe, odd, spec)).all()


def test_regression_pipelines_fit(reg_spec, reg_df):
    for family in FAMILIES["regression"]:
        pipe = build_pipeline(reg_spec, family, {}, 0).fit(reg_df, reg_df.price)
        m = compute_metrics(reg_df.price.to_numpy(), predict_scores(pipe, reg_df, reg_spec), "regression")
        assert m["r2"] > 0.8, (family, m)


# ----------------------------------------------------------------------------------------- metrics


def test_compute_metrics_classification():
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.6, 0.7, 0.4, 0.9, 0.2])
    m = compute_metrics(y, s, "classification")
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert set(m) == {"roc_auc", "accuracy", "f1", "log_loss"}
    assert np.isnan(compute_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]), "classification")["roc_auc"])


def test_compute_metrics_equals_sklearns_metrics():
    """compute_metrics (training, drift, model CI) and the gate's metric_set and bootstrap are one
    implementation (weighted_metric); it gives scikit-learn's numbers, ties and clipping included."""
    from sklearn import metrics as skm

    from include.gate import metric_set

    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.3).astype(int)
    s = np.round(np.clip(rng.random(2000) * 0.7 + 0.3 * y, 0, 1), 2)  # rounded: ties; 0 and 1: clipping
    s[:5] = [0.0, 1.0, 0.5, 0.0, 1.0]
    expected = {
        "roc_auc": skm.roc_auc_score(y, s), "accuracy": skm.accuracy_score(y, s >= 0.5),
        "f1": skm.f1_score(y, s >= 0.5, zero_division=0),
        "log_loss": skm.log_loss(y, np.clip(s, 1e-15, 1 - 1e-15), labels=[0, 1]),
    }
    got = compute_metrics(y, s, "classification")
    assert got == pytest.approx(expected, rel=1e-10) and metric_set(y, s, "classification") == got
    assert compute_metrics(y, np.zeros(2000), "classification")["f1"] == 0.0  # no positive prediction

    target = rng.normal(10, 3, 500)
    pred = target + rng.normal(0, 1, 500)
    expected = {"rmse": skm.root_mean_squared_error(target, pred), "mae": skm.mean_absolute_error(target, pred),
                "r2": skm.r2_score(target, pred)}
    assert compute_metrics(target, pred, "regression") == pytest.approx(expected, rel=1e-10)
    assert np.isnan(compute_metrics(np.ones(4), np.arange(4.0), "regression")["r2"])  # undefined, not sklearn's 0


def test_metric_names_are_valid_for_mlflow():
    from mlflow.utils.validation import _validate_metric_name

    for key in (metric_key("test", "roc_auc", "device", "mobile"),
                metric_key("test", "roc_auc", "city", "São Paulo=1/2?")):
        _validate_metric_name(key)
    assert metric_key("test", "roc_auc", "device", "mobile") == "test_roc_auc__device.mobile"


# ------------------------------------------------------------------------------------------ retries


def test_with_retry_retries_only_unreachable_errors(caplog):
    import requests
    from mlflow.exceptions import MlflowException

    from include.tracking import is_unreachable, with_retry

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("Connection refused")
        return "ok"

    assert with_retry(flaky, base_delay=0) == "ok" and len(calls) == 3
    assert [r.getMessage() for r in caplog.records if "MLflow unreachable" in r.getMessage()] == [
        f"MLflow unreachable (ConnectionError: Connection refused); retry {n}/3 in 0.0s" for n in (1, 2)]

    def bad_request():
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such model", error_code="RESOURCE_DOES_NOT_EXIST")

    calls.clear()
    with pytest.raises(MlflowException):
        with_retry(bad_request, base_delay=0)
    assert len(calls) == 1

    def down():
        calls.append(1)
        raise MlflowException("API request to http://x/api failed with exception Max retries exceeded")

    calls.clear()
    with pytest.raises(MlflowException):
        with_retry(down, attempts=3, base_delay=0)
    assert len(calls) == 3
    assert is_unreachable(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert not is_unreachable(ValueError("bad input"))


def test_select_window_keeps_the_newest_days_only():
    from include.demo_data import make_batch
    from include.spec import load_spec
    from include.training.inputs import TrainingInputError, select_window

    spec = load_spec("sessions")
    df = pd.concat([make_batch(0, 100), make_batch(5, 100), make_batch(6, 100)], ignore_index=True)
    assert len(select_window(df, spec, 0)) == 300  # off: every row
    recent = select_window(df, spec, 2)
    assert len(recent) == 200 and recent["ts"].min() >= pd.Timestamp("2026-01-05", tz="UTC")
    no_ts = dataclasses.replace(spec, timestamp=None)
    with pytest.raises(TrainingInputError, match="needs a timestamp"):
        select_window(df, no_ts, 2)


def test_code_identity_is_the_sha_plus_what_is_uncommitted_under_include_and_dags(tmp_path, monkeypatch):
    import subprocess

    import include.training.lineage as training

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "a.py").write_text("A = 1\n")
    (tmp_path / "docs.md").write_text("x\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    monkeypatch.setattr(training, "PROJECT_ROOT", tmp_path)
    sha = training.code_sha()
    assert len(sha) == 40 and training.code_identity() == sha
    (tmp_path / "docs.md").write_text("y\n")  # not code: same identity
    assert training.code_identity() == sha
    (tmp_path / "include" / "a.py").write_text("A = 2\n")
    two = training.code_identity()
    assert two.startswith(f"{sha}+diff:") and training.code_identity() == two
    (tmp_path / "include" / "a.py").write_text("A = 3\n")
    assert training.code_identity() not in (sha, two)
    (tmp_path / "include" / "a.py").write_text("A = 1\n")
    assert training.code_identity() == sha


def test_training_recipe_changes_with_anything_that_changes_the_model():
    from include.training.lineage import training_recipe

    spec = load_spec("sessions")
    lin = {"dataset": "sessions", "data_rev": "abc", "data_md5": "m1", "dag_run_id": "r1", "validation_id": "v1"}
    kw = {"code": "sha1", "family": "hgb", "params": {"max_iter": 10}, "seed": 1, "search": False,
          "holdout_frac": 0.2, "val_frac": 0.2}
    base = training_recipe(spec, lin, **kw)
    # who/why/when does not change the model
    assert base == training_recipe(spec, {**lin, "dag_run_id": "r2", "validation_id": "v2", "reason": "x"}, **kw)
    assert base == training_recipe(dataclasses.replace(spec, description="other words"), lin, **kw)
    changed = [
        training_recipe(spec, {**lin, "data_rev": "abd"}, **kw),
        training_recipe(spec, {**lin, "data_md5": "m2"}, **kw),
        training_recipe(spec, {**lin, "selection_window_days": 7}, **kw),
        training_recipe(dataclasses.replace(spec, slices=()), lin, **kw),
        *(training_recipe(spec, lin, **{**kw, k: v}) for k, v in (
            ("code", "sha2"), ("family", "logreg"), ("params", {"max_iter": 11}), ("seed", 2), ("search", True),
            ("holdout_frac", 0.3), ("val_frac", 0.1))),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


# what the model server and the gate import; none of it may pull in the training code or MLflow
LIGHT_MODULES = ["include.training.metrics", "include.training.model_io", "include.gate"]
HEAVY = ("mlflow", "sklearn", "pandas", "include.training.train", "include.training.pipeline")


def test_scoring_and_model_io_import_without_the_training_code_or_mlflow():
    import subprocess
    import sys

    from include.config import PROJECT_ROOT

    code = (f"import sys\nfor m in {LIGHT_MODULES!r}: __import__(m)\n"
            f"print(sorted(m for m in sys.modules if m in {HEAVY!r} or m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout  # a fresh interpreter: nothing loaded but what they import
    # the package still answers for its old single-module names, loading only the module asked for
    code = "import sys, include.training as t\nt.compute_metrics\nprint('include.training.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    import include.training as training
    from include.training.train import train_and_register

    assert training.train_and_register is train_and_register
    with pytest.raises(AttributeError, match="no attribute 'fit_everything'"):
        training.fit_everything  # noqa: B018
