"""Read a CSV the way a reviewer would hand it over (any of the usual encodings and delimiters,
gzipped or not) into text columns, refusing files no guess can fix: no rows, a data row as the
header, duplicate column names."""

from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path

import pandas as pd

from include.spec_draft.errors import DraftError

#: Rows profiled at most; a bigger file is profiled on its first rows (and the output says so).
MAX_ROWS = 1_000_000
_SNIFF_BYTES = 64 * 1024
_DELIMITERS = ",;\t|"
# cp1252 before latin-1: it is what "not UTF-8" CSVs from Excel on Windows are, and it decodes the
# same letters as latin-1 plus the quotes and dashes latin-1 puts in control-code slots.
_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


def _decode(data: bytes) -> tuple[str, str]:
    for enc in _ENCODINGS:
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def read_csv(path: Path, max_rows: int = MAX_ROWS) -> tuple[pd.DataFrame, dict]:
    """Every column as text (missing values as NaN, as ingest reads them) plus how the file was read."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if not data.strip():
        raise DraftError(f"{path} is empty: there is no header and no rows to draft a spec from")
    text, encoding = _decode(data)
    sample = text[:_SNIFF_BYTES]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:  # one column, or too little text to tell: a comma is what ingest expects anyway
        delimiter = ","
    try:
        df = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=True, index_col=False,
                         nrows=max_rows + 1)
    except pd.errors.EmptyDataError as err:
        raise DraftError(f"{path} has no header and no rows") from err
    except pd.errors.ParserError as err:
        raise DraftError(f"{path} does not parse as CSV with delimiter {delimiter!r}: {err}") from err
    header = [str(c) for c in df.columns]
    numeric_header = [c for c in header if parses_as_number(c)]
    if numeric_header and not csv.Sniffer().has_header(sample):
        raise DraftError(
            f"{path}: the first row looks like data, not a header (column names {numeric_header[:3]} are "
            "numbers); ingest takes the first row as the column names, so add a header row"
        )
    dupes = sorted({c.rsplit(".", 1)[0] for c in header if re.search(r"\.\d+$", c) and c.rsplit(".", 1)[0] in header})
    if dupes:
        raise DraftError(f"{path}: column name(s) {dupes} appear more than once in the header; rename them")
    if len(df) == 0:
        raise DraftError(f"{path} has a header ({len(header)} columns) but no data rows")
    truncated = len(df) > max_rows
    df = df.iloc[:max_rows]
    return df, {"encoding": encoding, "delimiter": delimiter, "truncated": truncated}


def parses_as_number(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True
