"""The spec drafter on messy CSVs: what it guesses, what it refuses, and that its draft lets the
very same file through the repo's own ingest validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from include.spec import parse_spec
from include.spec_draft import DraftError, draft_spec, main
from include.validation import check_batch

N = 300


def _messy(n: int = N, seed: int = 0) -> pd.DataFrame:
    """Customers: an id, an ISO timestamp, birthdays in three formats, ages with 'unknown' in them,
    a plan with a few gaps, free-text notes, zip codes with leading zeros, spend, a 0/1 label."""
    rng = np.random.default_rng(seed)
    born = pd.Timestamp("1970-01-01") + pd.to_timedelta(rng.integers(0, 12_000, n), unit="D")
    formats = ["%d/%m/%Y", "%Y-%m-%d", "%d %b %Y"]
    age = rng.integers(18, 80, n).astype(str).astype(object)
    age[[3, 40]] = "unknown"
    plan = rng.choice(["basic", "pro", "team"], n).astype(object)
    plan[rng.random(n) < 0.04] = None
    signup = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**7, n), unit="s")
    return pd.DataFrame({
        "customer_id": [f"c{i:05d}" for i in range(n)],
        "signup": signup.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "birthday": [d.strftime(formats[i % 3]) for i, d in enumerate(born)],
        "age": age,
        "plan": plan,
        "notes": [f"called on {rng.integers(1, 28)} re ticket {rng.integers(0, 10**6)}" for _ in range(n)],
        "zip": [f"{z:05d}" for z in rng.integers(0, 3000, n)],
        "spend": np.where(rng.random(n) < 0.05, np.nan, rng.gamma(2, 30, n).round(2)),
        "churned": rng.integers(0, 2, n),
    })


@pytest.fixture
def messy_csv(tmp_path):
    path = tmp_path / "customers.csv"
    _messy().to_csv(path, index=False)
    return path


def _said(draft, topic: str) -> str:
    """The printed decision about ``topic`` ("key", "column age", ...)."""
    lines = [d for d in draft.decisions if d.startswith(f"{topic}:")]
    assert len(lines) == 1, (topic, draft.decisions)
    return lines[0]


# ----------------------------------------------------------------------------------------- guesses


def test_messy_csv_dtypes_roles_and_reasons(messy_csv):
    draft = draft_spec(messy_csv, "customers")
    spec = parse_spec(draft.spec)
    assert (spec.key, spec.timestamp, spec.target, spec.task) == ("customer_id", "signup", "churned",
                                                                  "classification")
    assert "looks like an id" in _said(draft, "key")
    assert "guess" in _said(draft, "target")
    dtypes = {c.name: c.dtype for c in spec.columns}
    assert dtypes == {"customer_id": "string", "signup": "datetime", "birthday": "string", "age": "string",
                      "plan": "category", "notes": "string", "zip": "string", "spend": "float", "churned": "int"}
    # why each text column is text
    assert "not ISO 8601" in _said(draft, "column birthday")
    assert "mixed: 99% numbers" in _said(draft, "column age") and "'unknown'" in _said(draft, "column age")
    assert "leading zeros" in _said(draft, "column zip")
    assert "free text: 300 distinct values" in _said(draft, "column notes")
    # closed set and nullability from the data
    assert spec.column("plan").values == ("basic", "pro", "team") and spec.column("plan").nullable
    assert spec.column("spend").nullable and not spec.column("age").nullable
    assert spec.slices == ("plan",)
    assert spec.model_name == "customers_model" and draft.spec["model_name"] == "customers_model"


def test_ranges_are_widened_by_half_the_span_and_stay_non_negative(messy_csv):
    draft = draft_spec(messy_csv, "customers")
    spend = _messy()["spend"]
    col = draft.spec["columns"]["spend"]
    span = spend.max() - spend.min()
    assert col["min"] == 0.0  # no negative spend seen: the margin does not invent one
    assert spend.max() + 0.5 * span <= col["max"] <= (spend.max() + 0.5 * span) * 1.01
    assert "widened by 50% of the span" in _said(draft, "column spend")
    assert (draft.spec["columns"]["churned"]["min"], draft.spec["columns"]["churned"]["max"]) == (0, 1)


def test_round_trip_the_draft_validates_the_same_csv(messy_csv, tmp_path):
    assert main(["draft", str(messy_csv), "--name", "customers", "--out", str(tmp_path / "c.yaml")]) == 0
    spec = parse_spec(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    df, report = check_batch(messy_csv, spec)
    assert report.success and len(df) == N


def test_regression_target_and_its_range(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    km = rng.gamma(2, 3, n)
    minutes = (12 + 4 * km + rng.normal(0, 3, n)).round(1)
    pd.DataFrame({
        "order_id": np.arange(1000, 1000 + n), "region": rng.choice(["north", "south"], n),
        "km": km.round(3), "minutes": minutes,
    }).to_csv(tmp_path / "orders.csv", index=False)
    draft = draft_spec(tmp_path / "orders.csv", "orders")
    spec = parse_spec(draft.spec)
    assert (spec.key, spec.target, spec.task, spec.timestamp) == ("order_id", "minutes", "regression", None)
    assert "numeric with" in _said(draft, "task")
    assert spec.column("order_id").dtype == "int" and spec.column("order_id").min is None  # a key gets no range
    span = minutes.max() - minutes.min()
    assert spec.column("minutes").max >= minutes.max() + 0.5 * span
    assert max(minutes.min() - 0.5 * span, 0) - 0.01 <= spec.column("minutes").min <= minutes.min()
    assert "seeded shuffle" in _said(draft, "timestamp")


def test_classification_target_given_by_name_with_text_labels(tmp_path):
    rng = np.random.default_rng(2)
    n = 120
    pd.DataFrame({
        "id": [f"r{i}" for i in range(n)], "answer": rng.choice(["yes", "no"], n),
        "score": rng.random(n).round(4), "bucket": rng.integers(1, 6, n),
    }).to_csv(tmp_path / "survey.csv", index=False)
    draft = draft_spec(tmp_path / "survey.csv", "survey", target="answer")
    spec = parse_spec(draft.spec)
    assert (spec.target, spec.task) == ("answer", "classification")
    assert spec.column("answer").dtype == "category" and spec.column("answer").values == ("no", "yes")
    assert "given with --target" in _said(draft, "target")
    # without --target the last column (1..5) is a numeric guess: regression, and it says why
    guessed = draft_spec(tmp_path / "survey.csv", "survey")
    assert guessed.spec["target"] == "bucket" and guessed.spec["task"] == "regression"
    assert "binary classification only" in _said(guessed, "task")


def test_label_named_column_beats_the_last_column(tmp_path):
    pd.DataFrame({"id": range(50), "label": [0, 1] * 25, "x": np.linspace(0, 1, 50)}).to_csv(
        tmp_path / "t.csv", index=False)
    draft = draft_spec(tmp_path / "t.csv", "t")
    assert draft.spec["target"] == "label" and "named like a label" in _said(draft, "target")


def test_semicolons_and_latin1(tmp_path):
    rng = np.random.default_rng(3)
    n = 80
    df = pd.DataFrame({
        "kunden_id": [f"k{i}" for i in range(n)],
        "stadt": rng.choice(["Zürich", "Köln", "Genève"], n),
        "betrag": rng.gamma(2, 10, n).round(2),
        "gekauft": rng.integers(0, 2, n),
    })
    path = tmp_path / "export.csv"
    path.write_bytes(df.to_csv(index=False, sep=";").encode("latin-1"))
    draft = draft_spec(path, "export")
    assert draft.delimiter == ";" and draft.encoding == "cp1252"
    assert "cp1252, ';'-delimited" in _said(draft, "read")
    assert draft.spec["columns"]["stadt"]["values"] == ["Genève", "Köln", "Zürich"]
    assert draft.spec["key"] == "kunden_id" and draft.spec["target"] == "gekauft"
    # ingest reads comma-separated UTF-8 only: the drafter says so and how to convert
    assert any("comma-separated UTF-8" in n and "encoding='cp1252'" in n for n in draft.notes)


def test_utf8_bom_and_tabs(tmp_path):
    path = tmp_path / "t.tsv"
    rows = "\n".join(f"{i}\t{'ab'[i % 2]}\t{i * 1.5}\t{i % 2}" for i in range(40))
    path.write_bytes(("\ufeffrow_id\tkind\tx\ty\n" + rows + "\n").encode("utf-8"))
    draft = draft_spec(path, "t")
    assert draft.delimiter == "\t" and list(draft.spec["columns"])[0] == "row_id"
    assert "UTF-8, tab-delimited" in _said(draft, "read")


def test_no_timestamp_when_dates_have_gaps(tmp_path):
    ts = pd.date_range("2026-01-01", periods=60, freq="h", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
    ts[5] = ""
    pd.DataFrame({"id": range(60), "when": ts, "x": range(60), "y": [0, 1] * 30}).to_csv(
        tmp_path / "t.csv", index=False)
    draft = draft_spec(tmp_path / "t.csv", "t")
    assert "timestamp" not in draft.spec and "have missing values" in _said(draft, "timestamp")
    assert draft.spec["columns"]["when"] == {"dtype": "datetime", "nullable": True}


# ------------------------------------------------------------------------------------------- refusals


def test_empty_file_header_only_and_whitespace(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "blank.csv").write_text("\n \n")
    (tmp_path / "header.csv").write_text("id,x,y\n")
    for name, words in (("empty.csv", "is empty"), ("blank.csv", "is empty"), ("header.csv", "no data rows")):
        with pytest.raises(DraftError, match=words):
            draft_spec(tmp_path / name, "t")


def test_all_null_column_is_refused_with_the_reason(tmp_path):
    pd.DataFrame({"id": range(30), "nothing": [None] * 30, "also": ["NA"] * 30, "y": [0, 1] * 15}).to_csv(
        tmp_path / "t.csv", index=False)
    with pytest.raises(DraftError, match=r"\['nothing', 'also'\] are entirely empty in all 30 rows") as err:
        draft_spec(tmp_path / "t.csv", "t")
    assert "Drop the column(s)" in str(err.value)


def test_mostly_null_column_is_drafted_with_a_warning(tmp_path):
    x = [None if i % 3 else float(i) for i in range(60)]
    pd.DataFrame({"id": range(60), "x": x, "z": range(60), "y": [0, 1] * 30}).to_csv(tmp_path / "t.csv",
                                                                                     index=False)
    draft = draft_spec(tmp_path / "t.csv", "t")
    assert draft.spec["columns"]["x"]["nullable"] is True
    assert any("'x' is 67% missing" in n and "would be rejected" in n for n in draft.notes)


def test_no_key_says_the_spec_needs_one(tmp_path):
    pd.DataFrame({"a": [1, 2, 2, 3] * 10, "b": ["u", "v"] * 20, "y": [0, 1] * 20}).to_csv(
        tmp_path / "t.csv", index=False)
    with pytest.raises(DraftError, match=r"no key: no int or string column is unique and non-null in all 40 rows") as err:
        draft_spec(tmp_path / "t.csv", "t")
    assert "Add an id column" in str(err.value) and "nearest: 'a'" in str(err.value)


def test_a_unique_column_without_an_id_name_is_a_flagged_guess(tmp_path):
    pd.DataFrame({"email": [f"u{i}@x.org" for i in range(40)], "x": range(40), "y": [0, 1] * 20}).to_csv(
        tmp_path / "t.csv", index=False)
    draft = draft_spec(tmp_path / "t.csv", "t")
    assert draft.spec["key"] == "email" and "does not look like an id" in _said(draft, "key")


@pytest.mark.parametrize("target, words", [
    ("nope", "is not a column"),
    ("city", "text with 3 distinct values"),
    ("gap", "1 value(s) are missing"),
    ("const", "single value"),
])
def test_unusable_targets(tmp_path, target, words):
    n = 30
    pd.DataFrame({
        "id": range(n), "city": ["a", "b", "c"] * 10, "gap": [None] + [1.0] * (n - 1), "const": [1] * n,
        "x": range(n),
    }).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DraftError, match="no usable target" if target != "nope" else "is not a column") as err:
        draft_spec(tmp_path / "t.csv", "t", target=target)
    assert words in str(err.value)


def test_no_usable_target_guess_asks_for_one(tmp_path):
    pd.DataFrame({"id": range(30), "x": range(30), "word": [f"w{i % 7}" for i in range(30)]}).to_csv(
        tmp_path / "t.csv", index=False)
    with pytest.raises(DraftError, match=r"no usable target: 'word' \(last column\).*Pass --target"):
        draft_spec(tmp_path / "t.csv", "t")


def test_data_without_a_header_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("".join(f"{i},{i * 2.5},{i % 2}\n" for i in range(20)))
    with pytest.raises(DraftError, match="looks like data, not a header"):
        draft_spec(tmp_path / "t.csv", "t")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_prints_decisions_never_overwrites_and_exits_2_on_errors(messy_csv, tmp_path, capsys):
    out = tmp_path / "specs" / "customers.yaml"
    assert main(["draft", str(messy_csv), "--name", "customers", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "key: customer_id" in printed and f"wrote {out}" in printed
    text = out.read_text()
    assert text.startswith("# Drafted by `mlops-spec draft customers.csv`")
    assert "\nmodel_name: customers_model\n" in text  # a top-level line: the catalog reads it without YAML

    assert main(["draft", str(messy_csv), "--name", "customers", "--out", str(out)]) == 2
    assert "exists; not overwriting" in capsys.readouterr().err
    out.write_text("# mine\n")
    assert main(["draft", str(messy_csv), "--name", "customers", "--out", str(out), "--force"]) == 0
    assert out.read_text() != "# mine\n"

    (tmp_path / "empty.csv").write_bytes(b"")
    assert main(["draft", str(tmp_path / "empty.csv"), "--name", "e", "--out", str(tmp_path / "e.yaml")]) == 2
    assert "mlops-spec: error:" in capsys.readouterr().err and not (tmp_path / "e.yaml").exists()
    assert main(["draft", str(messy_csv), "--name", "bad name", "--out", str(tmp_path / "b.yaml")]) == 2
    assert main(["draft", str(tmp_path / "missing.csv"), "--name", "m", "--out", str(tmp_path / "m.yaml")]) == 2
