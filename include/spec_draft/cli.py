"""The ``mlops-spec`` command line (the console script points at :func:`main`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from include.spec_draft.draft import draft_spec
from include.spec_draft.errors import DraftError


def _default_out(name: str) -> Path:
    from include.config import settings

    return settings().specs_dir / f"{name}.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops-spec", description="Dataset specs for the MLOps loop.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draft", help="profile a CSV and write a spec to review",
                       description="Profile a CSV and write a dataset spec, printing every guess and why.")
    d.add_argument("csv", type=Path, help="a CSV (or CSV.gz) with a header row")
    d.add_argument("--name", required=True, help="dataset name (letters, digits, _ or -)")
    d.add_argument("--target", help="the label column (default: a guess, printed)")
    d.add_argument("--out", type=Path, help="where to write (default: <specs dir>/<name>.yaml)")
    d.add_argument("--force", action="store_true", help="overwrite an existing spec")
    args = parser.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"mlops-spec: error: {msg}", file=sys.stderr)
        return 2

    if not args.csv.is_file():
        return fail(f"{args.csv}: no such file")
    out = args.out or _default_out(args.name)
    if out.exists() and not args.force:
        return fail(f"{out} exists; not overwriting it (pass --force to replace it, or --out PATH)")
    try:
        draft = draft_spec(args.csv, args.name, target=args.target)
    except DraftError as err:
        return fail(str(err))
    for line in draft.decisions:
        print(line)
    for note in draft.notes:
        print(f"NOTE: {note}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(draft.to_yaml())
    print(f"wrote {out}: review it, then land batches for dataset {args.name!r}")
    return 0
