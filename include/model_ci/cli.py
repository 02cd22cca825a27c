"""The ``mlops-ci`` command line (the console script points at :func:`main`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from include.cli import key_value_arg
from include.model_ci.errors import CiError
from include.model_ci.report import render
from include.model_ci.verdict import check


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mlops-ci", description="Model CI: train this working tree's pipeline on the "
                                 "champion's data and gate it against the champion.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="train the working tree's pipeline and gate it against the champion")
    p.add_argument("--dataset", required=True, help="dataset spec name (include/specs/<name>.yaml)")
    p.add_argument("--report", type=Path, default=None, help="also write the Markdown report to this file")
    p.add_argument("--reproduce", action="store_true",
                   help="also check that retraining the champion's recipe reproduces its recorded metrics exactly")
    p.add_argument("--family", default=None, help="model family instead of the champion's (simulates a code change)")
    p.add_argument("--param", action="append", type=key_value_arg, default=[], metavar="KEY=VALUE",
                   help="hyperparameter on top of the champion's (repeatable), e.g. --param max_iter=300")
    p.add_argument("--repo", type=Path, default=None,
                   help="git repository holding the champion's code sha for --reproduce (default: this project)")
    p.add_argument("--lock", type=Path, default=None,
                   help="the working tree's lock file to diff with the champion's logged one (default: constraints.txt)")
    p.add_argument("--allow-neutral", action="store_true",
                   help="pass a change that is neither significantly better nor worse (default: the gate's rule)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from include.tracking import TrackingUnavailable, fails_clearly_when_unreachable

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # an outage is a setup error with its cause, not a verdict (nor a traceback)
        result = fails_clearly_when_unreachable("nothing was judged: run mlops-ci again once it is back")(check)(
            args.dataset, family=args.family, params=dict(args.param) or None, reproduce=args.reproduce,
            allow_neutral=args.allow_neutral, repo=args.repo, lock=args.lock)
    except (CiError, TrackingUnavailable) as err:
        print(f"mlops-ci: {err}", file=sys.stderr)
        return 2
    report = render(result)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report)
    print(report)
    return result.exit_code
