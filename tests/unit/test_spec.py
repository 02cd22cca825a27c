"""The dataset spec parser: clear errors for bad specs, and the feature lists of the demo spec."""

from __future__ import annotations

import pytest

from include.spec import SpecError, load_spec, parse_spec


def _raw(**overrides) -> dict:
    raw = {
        "name": "toy",
        "key": "id",
        "target": "y",
        "task": "classification",
        "columns": {
            "id": {"dtype": "string"},
            "x": {"dtype": "float", "min": 0, "max": 1},
            "c": {"dtype": "category", "values": ["a", "b"]},
            "y": {"dtype": "int", "min": 0, "max": 1},
        },
    }
    raw.update(overrides)
    return raw


def test_minimal_spec_parses():
    spec = parse_spec(_raw())
    assert spec.column_names == ["id", "x", "c", "y"]
    assert spec.column("c").values == ("a", "b")
    assert spec.column("x").nullable is False
    assert spec.numeric_features == ["x"]
    assert spec.categorical_features == ["c"]


def test_unknown_dtype_names_the_column_and_the_choices():
    raw = _raw()
    raw["columns"]["x"] = {"dtype": "decimal"}
    with pytest.raises(SpecError, match=r"column 'x' has dtype 'decimal'.*expected one of") as err:
        parse_spec(raw)
    assert "float" in str(err.value)


def test_missing_dtype_is_an_error():
    raw = _raw()
    raw["columns"]["x"] = {}
    with pytest.raises(SpecError, match="column 'x' has dtype None"):
        parse_spec(raw)


def test_missing_target_is_reported():
    raw = _raw()
    del raw["target"]
    with pytest.raises(SpecError, match=r"missing required field\(s\) \['target'\]"):
        parse_spec(raw)


def test_key_not_a_column():
    with pytest.raises(SpecError, match=r"key column 'session' is not among the columns"):
        parse_spec(_raw(key="session"))


def test_target_not_a_column():
    with pytest.raises(SpecError, match=r"target column 'label' is not among the columns"):
        parse_spec(_raw(target="label"))


def test_timestamp_and_slice_must_be_columns():
    with pytest.raises(SpecError, match="timestamp column 'when'"):
        parse_spec(_raw(timestamp="when"))
    with pytest.raises(SpecError, match="slice column 'region'"):
        parse_spec(_raw(slices=["region"]))


def test_bad_task():
    with pytest.raises(SpecError, match="task must be one of"):
        parse_spec(_raw(task="clustering"))


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec(["name", "toy"], path=tmp_path / "toy.yaml")


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "toy.yaml"
    with pytest.raises(SpecError, match=str(path)):
        parse_spec(_raw(key="nope"), path=path)


def test_unknown_dataset_lists_known_ones(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\n")
    with pytest.raises(SpecError, match=r"no spec for dataset 'b'.*known datasets: \['a'\]"):
        load_spec("b", specs_dir=tmp_path)


def test_sessions_spec_feature_lists():
    spec = load_spec("sessions")
    assert spec.name == "sessions"
    assert (spec.key, spec.timestamp, spec.target, spec.task) == ("session_id", "ts", "purchased", "classification")
    assert spec.slices == ("device", "channel")
    assert [c.name for c in spec.feature_columns] == [
        "device", "country", "channel", "returning", "pages_viewed", "session_seconds",
        "cart_items", "discount_pct", "price_viewed",
    ]
    assert spec.numeric_features == [
        "returning", "pages_viewed", "session_seconds", "cart_items", "discount_pct", "price_viewed",
    ]
    assert spec.categorical_features == ["device", "country", "channel"]
    assert spec.column("price_viewed").nullable is True
    assert spec.column("device").values == ("mobile", "desktop", "tablet")
    assert spec.column("pages_viewed").min == 1 and spec.column("pages_viewed").max == 500
    assert spec.path is not None and spec.path.name == "sessions.yaml"


def test_model_name_defaults_to_the_dataset_and_the_demo_keeps_its_own():
    assert parse_spec(_raw()).model_name == "toy_model"
    assert parse_spec(_raw(model_name="toy-clf.v2")).model_name == "toy-clf.v2"
    assert load_spec("sessions").model_name == "sessions_purchase"


@pytest.mark.parametrize("bad", ["has space", "a/b", "", "-lead", 42, "x" * 300])
def test_model_name_must_be_a_plain_registry_name(bad):
    with pytest.raises(SpecError, match="model_name"):
        parse_spec(_raw(model_name=bad))
