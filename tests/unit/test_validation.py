"""The validation gate: every way a batch can be bad is rejected with its kind, named in the message,
and quarantined with machine- and human-readable reports; a good batch passes and is recorded."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include import validation as v
from include.config import settings
from include.demo_data import make_batch, write_batch
from include.spec import load_spec
from include.validation import (
    BatchRejected,
    ValidationReport,
    build_suite,
    check_batch,
    quarantine,
    read_batch,
    save_validation,
    validate,
)

N = 500


@pytest.fixture(scope="module")
def spec():
    return load_spec("sessions")


@pytest.fixture
def landing(state) -> Path:
    return Path(state.landing)


@pytest.fixture
def good() -> pd.DataFrame:
    return make_batch(day=3, n_rows=N)


def _rejected(path: Path, spec, kind: str, *words: str, **limits) -> BatchRejected:
    """check_batch must reject ``path`` as ``kind``, naming the file and ``words`` in its message;
    then quarantine must move it away with report.json + report.md beside it."""
    with pytest.raises(BatchRejected) as info:
        check_batch(path, spec, **limits)
    err = info.value
    assert err.kind == kind, err.message
    assert err.batch == path.name
    assert str(err) == err.message
    assert path.name in err.message
    for word in words:
        assert word in err.message, f"{word!r} not in {err.message!r}"
    json.dumps(err.details)  # JSON-able

    folder = quarantine(path, err)
    assert not path.exists()
    assert (folder / path.name).is_file()
    assert folder.parent == settings().quarantine_dir
    record = json.loads((folder / "report.json").read_text())
    assert record["batch"] == path.name
    assert record["kind"] == kind
    assert record["message"] == err.message
    assert record["time"]
    md = (folder / "report.md").read_text()
    assert path.name in md and kind in md
    return err


# ------------------------------------------------------------------------------------------------
# a good batch


def test_good_batch_passes_with_spec_dtypes(landing, spec, good):
    path = write_batch(good, landing / "day-003.csv")
    df, report = check_batch(path, spec)
    assert report.success is True
    assert report.rows == len(df) == N
    assert report.failures == []
    assert report.batch == "day-003.csv"
    assert report.statistics["evaluated_expectations"] == len(build_suite(spec).expectations)
    assert list(df.columns) == spec.column_names
    assert str(df["pages_viewed"].dtype) == "Int64"
    assert str(df["purchased"].dtype) == "Int64"
    assert df["price_viewed"].dtype == "float64"
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]"
    assert df["device"].dtype == object
    # values survive the round trip through CSV
    pd.testing.assert_series_equal(df["pages_viewed"].astype("int64"), good["pages_viewed"])
    pd.testing.assert_series_equal(df["price_viewed"], good["price_viewed"])
    assert (df["ts"] == good["ts"]).all()
    assert df["session_id"].tolist() == good["session_id"].tolist()


def test_good_gzip_batch_passes(landing, spec, good):
    path = write_batch(good, landing / "day-003.csv.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    df, report = check_batch(path, spec)
    assert report.success and len(df) == N


def test_gzip_is_detected_by_magic_bytes(landing, spec, good):
    path = landing / "day-003.csv"
    path.write_bytes(gzip.compress(good.to_csv(index=False).encode()))
    assert len(read_batch(path, spec)) == N


def test_excel_style_bom_and_crlf_are_fine(landing, spec, good):
    path = landing / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + good.to_csv(index=False, lineterminator="\r\n").encode())
    df = read_batch(path, spec)
    assert list(df.columns) == spec.column_names and len(df) == N


def test_chunked_read_equals_single_read(landing, spec, good, monkeypatch):
    path = write_batch(good, landing / "day-003.csv")
    whole = read_batch(path, spec)
    monkeypatch.setattr(v.reader, "CHUNK_ROWS", 64)
    chunked = read_batch(path, spec)
    pd.testing.assert_frame_equal(whole, chunked)


def test_ints_with_missing_values_stay_int64(landing, spec, good):
    good = good.astype({"cart_items": object})
    good.loc[[1, 2], "cart_items"] = None
    df = read_batch(write_batch(good, landing / "b.csv"), spec)
    assert str(df["cart_items"].dtype) == "Int64"
    assert df["cart_items"].isna().sum() == 2


def test_iso_timestamps_with_offsets_are_utc(landing, spec, good):
    text = good.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    first_ts = good["ts"].iloc[0]
    local = (first_ts + pd.Timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    text = text.replace(first_ts.strftime("%Y-%m-%dT%H:%M:%SZ"), local, 1)
    path = landing / "b.csv"
    path.write_text(text)
    df = read_batch(path, spec)
    assert df["ts"].iloc[0] == first_ts


# ------------------------------------------------------------------------------------------------
# structural rejections (read_batch)


@pytest.mark.parametrize("content", [b"", b"  \n\n \n"], ids=["zero-bytes", "whitespace"])
def test_empty_file(landing, spec, content):
    path = landing / "empty.csv"
    path.write_bytes(content)
    _rejected(path, spec, "empty_file", "empty")


def test_header_only(landing, spec, good):
    path = write_batch(good.head(0), landing / "header.csv")
    _rejected(path, spec, "header_only", "header but no data rows")


@pytest.mark.parametrize("sep,word", [(";", "';'-delimited"), ("\t", "tab-delimited"), ("|", "'|'-delimited")])
def test_wrong_delimiter(landing, spec, good, sep, word):
    path = landing / "semi.csv"
    good.to_csv(path, index=False, sep=sep)
    err = _rejected(path, spec, "wrong_delimiter", word)
    assert err.details["delimiter"] == sep


def test_missing_column(landing, spec, good):
    path = write_batch(good.drop(columns=["price_viewed"]), landing / "missing.csv")
    err = _rejected(path, spec, "missing_columns", "price_viewed")
    assert err.details["missing"] == ["price_viewed"]


def test_unexpected_extra_column(landing, spec, good):
    path = write_batch(good.assign(coupon="X1"), landing / "extra.csv")
    err = _rejected(path, spec, "unexpected_columns", "coupon")
    assert err.details["unexpected"] == ["coupon"]


def test_duplicated_column(landing, spec, good):
    path = landing / "dupe.csv"
    text = good.to_csv(index=False).splitlines()
    lines = [text[0] + ",device"] + [line + ",mobile" for line in text[1:]]
    path.write_text("\n".join(lines) + "\n")
    err = _rejected(path, spec, "unexpected_columns", "appear more than once", "device")
    assert err.details["duplicated"] == ["device"]


@pytest.mark.parametrize(
    "column,value,words",
    [
        ("pages_viewed", "many", ["pages_viewed", "many", "integers"]),
        ("pages_viewed", "2.5", ["pages_viewed", "2.5", "integers"]),
        ("price_viewed", "inf", ["price_viewed", "inf", "finite numbers"]),
        ("ts", "yesterday", ["ts", "yesterday", "ISO 8601"]),
    ],
)
def test_wrong_dtype(landing, spec, good, column, value, words):
    good = good.astype({column: object})
    good.loc[[5, 9], column] = value
    path = write_batch(good, landing / "dtype.csv")
    err = _rejected(path, spec, "wrong_dtype", *words)
    info = err.details["columns"][column]
    assert info["bad_count"] == 2
    assert info["sample_values"] == [value, value]
    assert info["sample_lines"] == [7, 11]  # header is line 1, row 0 is line 2


def test_wrong_dtype_found_in_a_later_chunk(landing, spec, good, monkeypatch):
    monkeypatch.setattr(v.reader, "CHUNK_ROWS", 100)
    good = good.astype({"cart_items": object})
    good.loc[N - 3, "cart_items"] = "lots"
    path = write_batch(good, landing / "late.csv")
    err = _rejected(path, spec, "wrong_dtype", "cart_items", "lots")
    assert err.details["columns"]["cart_items"]["sample_lines"] == [N - 3 + 2]


def test_ragged_row_is_malformed(landing, spec, good):
    path = landing / "ragged.csv"
    lines = good.to_csv(index=False).splitlines()
    lines[3] += ",extra"
    path.write_text("\n".join(lines) + "\n")
    _rejected(path, spec, "malformed_csv", "Expected 12 fields")


def test_ragged_first_row_is_malformed_not_an_index(landing, spec, good):
    path = landing / "ragged1.csv"
    lines = good.to_csv(index=False).splitlines()
    lines[1] += ",extra"
    path.write_text("\n".join(lines) + "\n")
    _rejected(path, spec, "malformed_csv")


def test_invalid_utf8(landing, spec, good):
    path = landing / "latin1.csv"
    raw = good.to_csv(index=False).encode()
    raw = raw.replace(b"desktop", b"d\xe9sktop", 1)
    path.write_bytes(raw)
    _rejected(path, spec, "invalid_utf8", "not valid UTF-8")


def test_corrupt_gzip_truncated(landing, spec, good):
    path = write_batch(good, landing / "cut.csv.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _rejected(path, spec, "corrupt_gzip", "corrupt or truncated")


def test_corrupt_gzip_bad_crc(landing, spec, good):
    path = write_batch(good, landing / "crc.csv.gz")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    path.write_bytes(bytes(data))
    _rejected(path, spec, "corrupt_gzip")


def test_gz_name_without_gzip_data(landing, spec, good):
    path = landing / "plain.csv.gz"
    path.write_text(good.to_csv(index=False))
    _rejected(path, spec, "corrupt_gzip", "not gzip")


def test_too_large_by_bytes_from_env(landing, spec, good, monkeypatch):
    path = write_batch(good, landing / "big.csv")
    monkeypatch.setenv("MLOPS_MAX_BATCH_BYTES", "1000")
    err = _rejected(path, spec, "too_large", "over the limit of 1,000 bytes")
    assert err.details["max_bytes"] == 1000


def test_too_large_by_bytes_argument(landing, spec, good):
    path = write_batch(good, landing / "big.csv")
    _rejected(path, spec, "too_large", "bytes", max_bytes=2048)


def test_gzip_bomb_is_stopped_while_decompressing(landing, spec, good):
    path = write_batch(pd.concat([good] * 20, ignore_index=True), landing / "bomb.csv.gz")
    size = path.stat().st_size
    # the compressed file is under the limit, its content is not
    err = _rejected(path, spec, "too_large", "decompressed", max_bytes=size * 2)
    assert err.details["bytes_read"] > size * 2


def test_too_many_rows_stops_streaming(landing, spec, good, monkeypatch):
    monkeypatch.setattr(v.reader, "CHUNK_ROWS", 100)
    path = write_batch(good, landing / "rows.csv")
    err = _rejected(path, spec, "too_large", "more than 250 rows", max_rows=250)
    assert err.details["rows_read"] == 300  # stopped after the third chunk, not at the end


def test_too_many_rows_from_env(landing, spec, good, monkeypatch):
    monkeypatch.setenv("MLOPS_MAX_BATCH_ROWS", "10")
    path = write_batch(good, landing / "rows.csv")
    _rejected(path, spec, "too_large", "more than 10 rows")


# ------------------------------------------------------------------------------------------------
# content rejections (the GX suite)


def _failed(err: BatchRejected) -> dict[tuple[str, str | None], dict]:
    assert err.report is not None and err.report.success is False
    assert err.details["report"]["validation_id"] == err.report.validation_id
    return {(f["expectation"], f["column"]): f for f in err.report.failures}


def test_nan_flood_in_a_nullable_column(landing, spec, good):
    good.loc[good.sample(frac=0.8, random_state=0).index, "price_viewed"] = np.nan
    path = write_batch(good, landing / "flood.csv")
    err = _rejected(path, spec, "expectations_failed", "price_viewed", "null")
    f = _failed(err)[("expect_column_values_to_not_be_null", "price_viewed")]
    assert f["unexpected_percent"] == pytest.approx(80, abs=1)
    assert f["kwargs"]["mostly"] == v.NULLABLE_MOSTLY


def test_a_few_nulls_in_a_nullable_column_pass(landing, spec, good):
    good.loc[good.sample(frac=0.05, random_state=0).index, "price_viewed"] = np.nan
    _, report = check_batch(write_batch(good, landing / "ok.csv"), spec)
    assert report.success


def test_nulls_in_a_non_nullable_column(landing, spec, good):
    good.loc[[3, 4], "device"] = None
    path = write_batch(good, landing / "nulls.csv")
    err = _rejected(path, spec, "expectations_failed", "device", "2 null(s)", "not nullable")
    assert _failed(err)[("expect_column_values_to_not_be_null", "device")]["unexpected_count"] == 2


def test_values_out_of_range(landing, spec, good):
    good.loc[[1, 2], "pages_viewed"] = -5
    good.loc[7, "device"] = "toaster"
    path = write_batch(good, landing / "range.csv")
    err = _rejected(path, spec, "expectations_failed", "pages_viewed", "outside [1, 500]", "-5", "device", "toaster")
    failed = _failed(err)
    between = failed[("expect_column_values_to_be_between", "pages_viewed")]
    assert between["unexpected_count"] == 2
    assert between["sample_values"] == [-5, -5]
    assert between["kwargs"]["min_value"] == 1
    in_set = failed[("expect_column_values_to_be_in_set", "device")]
    assert in_set["sample_values"] == ["toaster"]


def test_out_of_range_in_an_int_column_with_nulls_shows_ints(landing, spec, good):
    good = good.astype({"cart_items": object})
    good.loc[0, "cart_items"] = None
    good.loc[1, "cart_items"] = 1000
    err = _rejected(write_batch(good, landing / "c.csv"), spec, "expectations_failed", "cart_items", "1000")
    assert _failed(err)[("expect_column_values_to_be_between", "cart_items")]["sample_values"] == [1000]


def test_duplicate_keys(landing, spec, good):
    good.loc[10, "session_id"] = good.loc[11, "session_id"]
    dup = good.loc[11, "session_id"]
    path = write_batch(good, landing / "dupes.csv")
    err = _rejected(path, spec, "expectations_failed", "session_id", "duplicated", dup)
    assert _failed(err)[("expect_column_values_to_be_unique", "session_id")]["unexpected_count"] == 2


def test_message_lists_at_most_three_failures(landing, spec, good):
    good.loc[0, "pages_viewed"] = -5
    good.loc[0, "cart_items"] = -1
    good.loc[0, "discount_pct"] = 99.0
    good.loc[0, "device"] = "toaster"
    path = write_batch(good, landing / "many.csv")
    err = _rejected(path, spec, "expectations_failed", "failed 4 of", "and 1 more")
    assert len(err.report.failures) == 4
    # in the spec's column order
    assert [f["column"] for f in err.report.failures] == ["device", "pages_viewed", "cart_items", "discount_pct"]


def test_quarantine_accepts_a_report(landing, spec, good):
    good.loc[0, "pages_viewed"] = -5
    path = write_batch(good, landing / "r.csv")
    df = read_batch(path, spec)
    report = validate(df, spec, batch=path.name)
    folder = quarantine(path, report)
    record = json.loads((folder / "report.json").read_text())
    assert record["kind"] == "expectations_failed"
    assert record["validation_id"] == report.validation_id
    assert record["failures"][0]["column"] == "pages_viewed"
    assert "| expect_column_values_to_be_between | pages_viewed |" in (folder / "report.md").read_text()


def test_quarantine_never_overwrites(landing, spec, state):
    folders = []
    for _ in range(3):
        path = landing / "same.csv"
        path.write_bytes(b"")
        with pytest.raises(BatchRejected) as info:
            read_batch(path, spec)
        folders.append(quarantine(path, info.value))
    assert len(set(folders)) == 3
    assert all((f / "same.csv").exists() and f.parent == state.quarantine_dir for f in folders)


def test_rejection_pickles_with_its_report(spec, good):
    import pickle

    good.loc[0, "device"] = "toaster"
    report = validate(good, spec, batch="p.csv")
    err = BatchRejected("p.csv", "expectations_failed", report.summary(), {"n": 1}, report=report)
    again = pickle.loads(pickle.dumps(err))
    assert (again.batch, again.kind, str(again), again.details) == ("p.csv", "expectations_failed", str(err), {"n": 1})
    assert again.report == report


def test_quarantine_of_a_missing_file_raises(landing, spec):
    err = BatchRejected("gone.csv", "empty_file", "batch 'gone.csv' rejected (empty_file): empty")
    with pytest.raises(FileNotFoundError):
        quarantine(landing / "gone.csv", err)


# ------------------------------------------------------------------------------------------------
# suite, report and records


def test_suite_is_derived_from_the_spec(spec):
    suite = build_suite(spec)
    kinds = [(e.expectation_type, getattr(e, "column", None)) for e in suite.expectations]
    assert ("expect_table_columns_to_match_set", None) in kinds
    assert ("expect_table_row_count_to_be_between", None) in kinds
    assert ("expect_column_values_to_be_unique", "session_id") in kinds
    not_null = {e.column: e.mostly for e in suite.expectations if e.expectation_type == "expect_column_values_to_not_be_null"}
    assert set(not_null) == set(spec.column_names)
    assert not_null["price_viewed"] == 0.9 and not_null["device"] == 1.0
    between = {e.column for e in suite.expectations if e.expectation_type == "expect_column_values_to_be_between"}
    assert between == {c.name for c in spec.columns if c.min is not None or c.max is not None}
    in_set = {e.column for e in suite.expectations if e.expectation_type == "expect_column_values_to_be_in_set"}
    assert in_set == {"device", "country", "channel"}


def test_validate_reports_missing_columns_of_a_frame(spec, good):
    report = validate(good.drop(columns=["channel"]), spec, batch="frame")
    assert not report.success
    assert "expect_table_columns_to_match_set" in {f["expectation"] for f in report.failures}


def test_save_validation_round_trips(state, landing, spec, good):
    path = write_batch(good, landing / "day-003.csv")
    _, report = check_batch(path, spec)
    out = save_validation(report)
    assert out == state.reports_dir / "validations" / f"{report.validation_id}.json"
    data = json.loads(out.read_text())
    assert data == report.to_json()
    assert data["gx_result"]["success"] is True
    assert data["data_fingerprint"]
    again = ValidationReport.from_json(data)
    assert again == report
    md = report.to_markdown()
    assert "PASSED" in md and "day-003.csv" in md


def test_validation_ids_are_unique(spec, good):
    ids = {validate(good, spec, batch="x").validation_id for _ in range(3)}
    assert len(ids) == 3
    assert all(i.startswith("sessions-") for i in ids)


def test_failed_report_markdown_has_a_table(spec, good):
    good.loc[0, "device"] = "toaster"
    md = validate(good, spec, batch="t.csv").to_markdown()
    assert "FAILED" in md
    assert "| expectation | column | unexpected | % | sample values |" in md
    assert '"toaster"' in md


def test_importing_the_module_does_not_import_gx():
    code = "import sys, include.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
