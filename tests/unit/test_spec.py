"""The dataset spec parser: clear errors for bad specs, and the feature lists of the demo spec."""

from __future__ import annotations

from pathlib import Path

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


SHIPPED = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "include" / "specs").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spec_is_usable_by_every_stage(name):
    """What the stages rely on and the parser does not check: properties of the shipped files."""
    from include.drift import DriftPolicy

    spec = load_spec(name)
    assert spec.name == name == spec.path.stem  # stages find a dataset's spec by its name
    features = {c.name for c in spec.feature_columns}
    assert features and set(spec.numeric_features) | set(spec.categorical_features) <= features
    for role in (spec.key, spec.target):
        assert not spec.column(role).nullable, f"{role} may not be missing"
    target = spec.column(spec.target)
    if spec.task == "classification":  # binary: the server answers P(positive class)
        assert (target.dtype == "int" and (target.min, target.max) == (0, 1)) or len(target.values or ()) == 2
    else:
        assert target.is_numeric
    for c in spec.columns:
        assert c.min is None or c.max is None or c.min < c.max, c.name
        assert c.values is None or (c.values and len(set(c.values)) == len(c.values)), c.name
    # per-slice gate checks need a finite set of groups
    assert all(spec.column(s).values for s in spec.slices), spec.slices
    assert set(DriftPolicy.load(name).critical_features) <= features


def test_shipped_specs_name_distinct_models():
    """The catalog maps a model back to its dataset: two datasets sharing a model name would clash."""
    names = [load_spec(n).model_name for n in SHIPPED]
    assert len(SHIPPED) >= 2 and len(set(names)) == len(names), names


def test_model_name_defaults_to_the_dataset_and_the_demo_keeps_its_own():
    assert parse_spec(_raw()).model_name == "toy_model"
    assert parse_spec(_raw(model_name="toy-clf.v2")).model_name == "toy-clf.v2"
    assert load_spec("sessions").model_name == "sessions_purchase"


@pytest.mark.parametrize("bad", ["has space", "a/b", "", "-lead", 42, "x" * 300])
def test_model_name_must_be_a_plain_registry_name(bad):
    with pytest.raises(SpecError, match="model_name"):
        parse_spec(_raw(model_name=bad))
