"""Where batch rows come from and where results go: a data-repo revision or files (local / S3),
split into partitions, read back as Arrow record batches of bounded size.

A partition is a whole CSV file (CSV has no index to seek to a row) or a range of a Parquet
file's row groups, so a mapped task reads only its own part and memory does not grow with the
input. Everything a partition needs to find its rows is in its small dict (it travels by XCom).
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from include.config import settings

PARQUET = (".parquet", ".pq")
CSV = (".csv", ".csv.gz")
_CSV_BLOCK = 1 << 19
_REV_RE = re.compile(r"^(latest|HEAD([~^][0-9]*)*|[0-9a-fA-F]{4,40})$")


class SourceError(ValueError):
    """The source names nothing to score (no such files, an unknown rev): a retry would not help."""


# --------------------------------------------------------------------------------------- storage


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(Arrow filesystem, path in it) for a local path or ``s3://bucket/key``."""
    if uri.startswith("s3://"):
        s = settings()
        kwargs = {"endpoint_override": s.s3_endpoint} if s.s3_endpoint else {}
        # credentials: the standard AWS environment/profile chain, as boto3 and DVC use it
        return pafs.S3FileSystem(region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), **kwargs), uri[5:]
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def read_text(fs: pafs.FileSystem, path: str) -> str | None:
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def commit_file(fs: pafs.FileSystem, tmp: str, final: str) -> None:
    """Make ``tmp`` visible as ``final`` at once: a rename locally, a server-side copy on S3 (the
    object appears whole when the copy completes); readers never see a partial file."""
    fs.move(tmp, final)


def temp_name(final: str) -> str:
    head, _, name = final.rpartition("/")
    return f"{head}/.tmp-{name}-{uuid.uuid4().hex[:8]}"


def write_text_atomic(fs: pafs.FileSystem, path: str, text: str) -> None:
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = temp_name(path)
    with fs.open_output_stream(tmp) as fh:
        fh.write(text.encode())
    commit_file(fs, tmp, path)


def md5_of(fs: pafs.FileSystem, path: str) -> str:
    h = hashlib.md5()
    with fs.open_input_stream(path) as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- listing


def is_rev(source: str | None) -> bool:
    return source in (None, "") or bool(_REV_RE.match(source))


def list_files(source: str) -> list[str]:
    """Data files (CSV, gzipped CSV, Parquet) named by a path, a directory, a glob or an S3 prefix/glob."""
    wanted = PARQUET + CSV
    if source.startswith("s3://"):
        fs, path = filesystem(source)
        base = re.split(r"[*?\[]", path, maxsplit=1)[0]
        pattern = path if base != path else None
        if pattern is None and exists(fs, path):
            found = [path]
        else:
            root = base.rstrip("/") if pattern is None else base.rpartition("/")[0]
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
            found = [i.path for i in infos if i.type == pafs.FileType.File
                     and (pattern is None or fnmatch.fnmatch(i.path, pattern))]
        files = [f"s3://{p}" for p in found]
    else:
        p = Path(source)
        if p.is_dir():
            files = [str(f) for f in p.rglob("*") if f.is_file()]
        else:
            files = glob.glob(source, recursive=True) if glob.has_magic(source) else ([source] if p.is_file() else [])
    files = sorted(f for f in files if f.lower().endswith(wanted) and not f.rsplit("/", 1)[-1].startswith((".", "_")))
    if not files:
        raise SourceError(f"source {source!r} names no CSV or Parquet files")
    return files


def file_partitions(uri: str, *, partition_rows: int) -> list[dict]:
    """One partition per CSV file; Parquet files split into row-group ranges of ~partition_rows."""
    fs, path = filesystem(uri)
    md5 = md5_of(fs, path)
    if not uri.lower().endswith(PARQUET):
        return [{"source": uri, "kind": "csv", "source_md5": md5, "rows": None}]
    with fs.open_input_file(path) as fh:
        return _parquet_ranges(pq.ParquetFile(fh).metadata, {"source": uri, "kind": "parquet", "source_md5": md5},
                               partition_rows)


def _parquet_ranges(meta: pq.FileMetaData, base: dict, partition_rows: int) -> list[dict]:
    out, start, rows = [], 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= partition_rows or g == meta.num_row_groups - 1:
            out.append({**base, "row_groups": [start, g + 1], "rows": rows})
            start, rows = g + 1, 0
    return out or [{**base, "row_groups": [0, 0], "rows": 0}]


def rev_partitions(dataset: str, rev: str | None, *, partition_rows: int) -> tuple[dict, list[dict]]:
    """(lineage of the revision, partitions of its batch files in manifest order)."""
    import json

    from include.versioning import DataRepo

    repo = DataRepo()
    lineage = repo.lineage(dataset, rev)  # RevisionNotFound (a permanent error) if it does not exist
    sha = lineage["data_rev"]
    entries = json.loads(repo._show(sha, f"manifests/{dataset}.json"))
    files = [f"data/{dataset}/{e['file']}" for e in entries]
    out = []
    for i, rel in enumerate(files):
        with _dvc_open(sha, rel) as fh:
            meta = pq.ParquetFile(fh).metadata
        base = {"source": rel, "kind": "parquet", "data_rev": sha, "source_md5": entries[i]["batch_md5"],
                # a later batch may correct a row (last write wins per key, as DataRepo.load reads them)
                "superseded_by": files[i + 1:]}
        out.extend(_parquet_ranges(meta, base, partition_rows))
    return lineage, out


def _dvc_open(rev: str, rel: str):
    from dvc.api import DVCFileSystem

    from include.versioning import DataRepo

    return DVCFileSystem(str(DataRepo().path), rev=rev).open("/" + rel, "rb")


# ---------------------------------------------------------------------------------------- reading


class Progress:
    """Bytes or rows done of a partition, for the log's rows/s and ETA."""

    def __init__(self) -> None:
        self.fraction = 0.0


def read_chunks(part: dict, *, text_columns: set[str], chunk_rows: int,
                progress: Progress, malformed: list) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(row offset in the source, record batch) for the partition's rows, at most ~chunk_rows each.

    CSV rows with the wrong number of cells are skipped by the reader and appended to ``malformed``
    as (row number or None, text) for the rejects file.
    """
    if part["kind"] == "parquet":
        yield from _read_parquet(part, chunk_rows, progress)
    else:
        yield from _read_csv(part, text_columns, chunk_rows, progress, malformed)


def _read_parquet(part: dict, chunk_rows: int, progress: Progress) -> Iterator[tuple[int, pa.RecordBatch]]:
    if part.get("data_rev"):
        fh = _dvc_open(part["data_rev"], part["source"])
    else:
        fs, path = filesystem(part["source"])
        fh = fs.open_input_file(path)
    with fh:
        pf = pq.ParquetFile(fh)
        lo, hi = part["row_groups"]
        offset = sum(pf.metadata.row_group(g).num_rows for g in range(lo))
        total = max(1, part["rows"] or 1)
        done = 0
        for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=list(range(lo, hi))):
            yield offset + done, batch
            done += batch.num_rows
            progress.fraction = done / total


def _read_csv(part: dict, text_columns: set[str], chunk_rows: int, progress: Progress,
              malformed: list) -> Iterator[tuple[int, pa.RecordBatch]]:
    from pyarrow import csv

    fs, path = filesystem(part["source"])
    size = max(1, fs.get_file_info(path).size or 1)
    raw = fs.open_input_stream(path)
    stream = pa.CompressedInputStream(raw, "gzip") if path.lower().endswith(".gz") else raw

    def skip(row) -> str:
        malformed.append((row.number, row.text[:500]))
        return "skip"

    with stream:
        reader = csv.open_csv(
            stream,
            # small blocks, gathered into chunks below: the reader's working memory is several times
            # its block (12.8 MB blocks: ~100 MiB of Arrow memory, 2 MiB: ~65 MiB, 512 KiB: ~18 MiB, as fast)
            read_options=csv.ReadOptions(block_size=min(_CSV_BLOCK, max(1 << 16, chunk_rows * 128))),
            parse_options=csv.ParseOptions(invalid_row_handler=skip),
            convert_options=csv.ConvertOptions(
                column_types={c: pa.string() for c in text_columns},
                strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=False),
        )
        offset, group, rows = 0, [], 0
        for batch in reader:
            group.append(batch)
            rows += batch.num_rows
            if rows < chunk_rows:
                continue
            yield offset, _one_batch(group)
            offset += rows
            group, rows = [], 0
            try:
                progress.fraction = min(1.0, raw.tell() / size)
            except OSError:  # not every stream knows its position
                pass
        if group:
            yield offset, _one_batch(group)


def _one_batch(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def superseded_keys(part: dict, key: str) -> pa.Array | None:
    """Keys of the revision's later batches: rows of this one with those keys were replaced."""
    later = part.get("superseded_by") or []
    if not later:
        return None
    arrays = []
    for rel in later:
        with _dvc_open(part["data_rev"], rel) as fh:
            arrays.append(pq.read_table(fh, columns=[key]).column(key).combine_chunks())
    return pa.concat_arrays(arrays) if arrays else None
