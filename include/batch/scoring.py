"""Score one partition: read its chunks, validate them with the online rules, score the good rows,
write its scores and rejects files whole (the partition's commit point)."""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from include.batch import sources
from include.batch.layout import HIST_BINS, META_KEY, committed_stats, fingerprint, label, part_paths
from include.crashpoints import crash_point

log = logging.getLogger(__name__)


def _hist_edges(spec) -> np.ndarray | None:
    if spec.task == "classification":
        return np.linspace(0.0, 1.0, HIST_BINS + 1)
    target = spec.column(spec.target)
    if target.min is not None and target.max is not None:
        return np.linspace(float(target.min), float(target.max), HIST_BINS + 1)
    return None  # no range to bin into: min/max/mean only


def score_partition(part: dict) -> dict:
    """Validate and score one partition into its scores and rejects files; returns its stats."""
    from threadpoolctl import threadpool_limits

    from include.config import env_number

    fs, base = sources.filesystem(part["output"])
    scores_path, rejects_path = part_paths(base, part["index"])
    fp = fingerprint(part)
    done = committed_stats(fs, scores_path)
    if done and done.get("fingerprint") == fp:
        log.info("partition %s is already scored (%d rows): nothing to do", label(part), done["scored"])
        return done
    _lean_memory_pool()
    # Scale-out is one mapped task per core: OpenMP threads inside a task only fight the other
    # tasks (HistGradientBoosting predicted 200k rows in 2.7 s with 1 thread, 4.4 s with 2, here).
    with threadpool_limits(limits=env_number("MLOPS_BATCH_MODEL_THREADS", 1)):
        return _score_partition(part, fs, scores_path, rejects_path, fp)


def _lean_memory_pool() -> None:
    """Arrow's jemalloc pool for the chunks, where the wheel has it: on the 1M-row benchmark it kept
    ~25-45 MiB less resident than the default mimalloc, whose per-thread heaps keep what the CSV
    reader's threads freed (reading alone: +30 MiB peak RSS with jemalloc, +60 MiB with mimalloc)."""
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a build without jemalloc: the default pool
        pass


def _score_partition(part: dict, fs, scores_path: str, rejects_path: str, fp: str) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from include.batch.model import load as load_model
    from include.batch.rows import ChunkValidator
    from include.spec import load_spec

    spec = load_spec(part["dataset"])
    validator = ChunkValidator(spec)
    # loaded once per worker process (cached), whatever the number of partitions it scores
    loaded = load_model(part, spec)
    score_chunk = _chunk_scorer(loaded, spec, validator)
    classes = loaded.classes
    edges = _hist_edges(spec)
    superseded = sources.superseded_keys(part, spec.key)

    consts = {"model_name": part["model"], "model_version": part["version"], "data_rev": part.get("data_rev"),
              "source": part["source"], "source_md5": part["source_md5"], "run_id": part["run_id"],
              "batch_run_id": part["batch_run_id"]}
    score_fields = [pa.field(spec.key, pa.string()), pa.field("score", pa.float64())]
    if classes is not None:
        score_fields.append(pa.field("label", pa.array(classes).type))
    score_fields += [pa.field(k, pa.string()) for k in consts] + [pa.field("row", pa.int64())]
    score_schema = pa.schema(score_fields)
    reject_schema = pa.schema([("source", pa.string()), ("row", pa.int64()), (spec.key, pa.string()),
                               ("type", pa.string()), ("field", pa.string()), ("reason", pa.string()),
                               ("values", pa.string())])
    fs.create_dir(scores_path.rpartition("/")[0], recursive=True)
    fs.create_dir(rejects_path.rpartition("/")[0], recursive=True)
    tmp_scores, tmp_rejects = sources.temp_name(scores_path), sources.temp_name(rejects_path)
    stats = {"fingerprint": fp, "index": part["index"], "source": part["source"], "rows_in": 0, "scored": 0,
             "rejected": 0, "superseded": 0, "reasons": {}, "hist": [0] * HIST_BINS if edges is not None else None,
             "hist_edges": edges.tolist() if edges is not None else None, "labels": {},
             "score_min": None, "score_max": None, "score_sum": 0.0}
    progress, malformed = sources.Progress(), []
    t0 = last = time.monotonic()
    # dictionaries only where values repeat: on the unique keys, scores and row numbers they cost
    # half the write time for nothing
    repeated = [*consts, *(["label"] if classes is not None else [])]
    with fs.open_output_stream(tmp_scores) as s_out, fs.open_output_stream(tmp_rejects) as r_out, \
            pq.ParquetWriter(s_out, score_schema, use_dictionary=repeated) as s_w, \
            pq.ParquetWriter(r_out, reject_schema) as r_w:
        for offset, batch in sources.read_chunks(part, text_columns=validator.text_columns(),
                                                 chunk_rows=part["chunk_rows"], progress=progress, malformed=malformed):
            n = batch.num_rows
            stats["rows_in"] += n
            rows = np.arange(offset, offset + n, dtype=np.int64)
            if superseded is not None and spec.key in batch.schema.names:
                keep = pc.invert(pc.fill_null(pc.is_in(batch.column(spec.key), value_set=superseded), False))
                stats["superseded"] += n - pc.sum(keep).as_py()
                batch, rows = batch.filter(keep), rows[keep.to_numpy(zero_copy_only=False)]
            checked = validator.check(batch)
            keys = checked.columns.get(spec.key)
            keys = pc.cast(keys, pa.string()) if keys is not None else pa.nulls(batch.num_rows, pa.string())
            if checked.rejects:
                _write_rejects(r_w, reject_schema, part["source"], rows, keys, checked, batch, stats)
            ok_idx = pa.array(np.flatnonzero(checked.ok))
            if len(ok_idx):
                scores = score_chunk(checked, ok_idx)
                cols = {spec.key: keys.take(ok_idx), "score": pa.array(scores)}
                if classes is not None:
                    lab = np.where(scores >= 0.5, classes[1], classes[0])
                    cols["label"] = pa.array(lab, type=score_schema.field("label").type)
                    for c in classes:
                        stats["labels"][str(c)] = stats["labels"].get(str(c), 0) + int((lab == c).sum())
                m = len(ok_idx)
                cols.update({k: pa.repeat(pa.scalar(v, pa.string()), m) for k, v in consts.items()})
                cols["row"] = pa.array(rows[checked.ok])
                s_w.write_table(pa.table(cols, schema=score_schema))
                _add_scores(stats, scores, edges)
            crash_point("batch.after_chunk")
            now = time.monotonic()
            if now - last >= 5:
                last = now
                _log_progress(part, stats, progress, now - t0)
        if malformed:
            _write_malformed(r_w, reject_schema, part["source"], malformed, stats)
        stats["seconds"] = round(time.monotonic() - t0, 3)
        s_w.add_key_value_metadata({META_KEY: json.dumps(stats)})
    sources.commit_file(fs, tmp_rejects, rejects_path)
    crash_point("batch.before_commit")
    sources.commit_file(fs, tmp_scores, scores_path)  # the partition's commit point
    crash_point("batch.after_commit")
    _log_progress(part, stats, progress, time.monotonic() - t0, final=True)
    return stats


def _chunk_scorer(loaded, spec, validator):
    """scores(checked chunk, indices of its ok rows): the fast path when the pipeline allows it
    (:mod:`include.batch.fastpath`, equal bit for bit), else ``predict_scores`` on the framed rows."""
    fast = loaded.fast
    log.info("scoring with %s", "the vectorised fast path" if fast else "the model's own predict")
    if fast is None:
        from include.training.metrics import predict_scores

        def slow(checked, ok_idx) -> np.ndarray:
            return np.asarray(predict_scores(loaded.pipeline, validator.frame(checked), spec), dtype=np.float64)

        return slow

    def score(checked, ok_idx) -> np.ndarray:
        return fast.scores(fast.matrix(checked.columns, ok_idx, lambda: validator.frame(checked)))

    return score


def _add_scores(stats: dict, scores: np.ndarray, edges: np.ndarray | None) -> None:
    stats["scored"] += len(scores)
    stats["score_sum"] += float(scores.sum())
    lo, hi = float(scores.min()), float(scores.max())
    stats["score_min"] = lo if stats["score_min"] is None else min(stats["score_min"], lo)
    stats["score_max"] = hi if stats["score_max"] is None else max(stats["score_max"], hi)
    if edges is not None:
        counts, _ = np.histogram(np.clip(scores, edges[0], edges[-1]), bins=edges)
        stats["hist"] = [a + int(b) for a, b in zip(stats["hist"], counts, strict=True)]


def _write_rejects(writer, schema, source, rows, keys, checked, batch, stats) -> None:
    import pyarrow as pa

    idx = [r[0] for r in checked.rejects]
    values = []
    for i in idx:
        row = {c: (checked.raw.get(c, {}).get(i) if i in checked.raw.get(c, {}) else batch.column(c)[i].as_py())
               for c in batch.schema.names}
        values.append(json.dumps(row, default=str, ensure_ascii=False)[:4000])
    for _, type_, field, _msg in checked.rejects:
        k = f"{field}: {type_}"
        stats["reasons"][k] = stats["reasons"].get(k, 0) + 1
    stats["rejected"] += len(idx)
    writer.write_table(pa.table({
        "source": [source] * len(idx), "row": rows[idx], spec_key(schema): keys.take(pa.array(idx, pa.int64())),
        "type": [r[1] for r in checked.rejects], "field": [r[2] for r in checked.rejects],
        "reason": [r[3] for r in checked.rejects], "values": values}, schema=schema))


def _write_malformed(writer, schema, source, malformed, stats) -> None:
    import pyarrow as pa

    n = len(malformed)
    stats["rows_in"] += n
    stats["rejected"] += n
    stats["reasons"]["row: malformed_csv"] = stats["reasons"].get("row: malformed_csv", 0) + n
    writer.write_table(pa.table({
        "source": [source] * n, "row": pa.array([m[0] for m in malformed], pa.int64()),
        spec_key(schema): pa.nulls(n, pa.string()), "type": ["malformed_csv"] * n, "field": ["row"] * n,
        "reason": ["the CSV line does not have the header's number of cells"] * n,
        "values": [m[1] for m in malformed]}, schema=schema))


def spec_key(reject_schema) -> str:
    return reject_schema.names[2]


def _log_progress(part: dict, stats: dict, progress, elapsed: float, *, final: bool = False) -> None:
    rate = stats["rows_in"] / elapsed if elapsed > 0 else 0.0
    if final:
        log.info("partition %s done: %d rows in, %d scored, %d rejected, %d superseded in %.1f s (%.0f rows/s)",
                 label(part), stats["rows_in"], stats["scored"], stats["rejected"], stats["superseded"], elapsed, rate)
        return
    eta = elapsed * (1 - progress.fraction) / progress.fraction if progress.fraction > 0 else float("nan")
    log.info("partition %s: %d rows (%.0f%%), %.0f rows/s, ETA %.0f s", label(part), stats["rows_in"],
             100 * progress.fraction, rate, eta)


