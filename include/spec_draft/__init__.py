"""Draft a dataset spec from a CSV: ``mlops-spec draft data.csv --name NAME``.

The draft is a starting point for review, not a verdict: ranges, category sets and nullability
describe the rows seen, and the next batch may legitimately go beyond them. Every guess is printed
with its reason (and repeated as a comment at the top of the YAML) so the reviewer knows what to
check. What the drafter decides, and why:

* **dtypes** from the raw text, the way ingest will read it (``include.validation.read_batch``:
  pandas' default NA strings, numbers as ``pd.to_numeric``, datetimes as ISO 8601 only). A column
  whose values do not *all* parse is text: a spec saying ``int`` would reject this very file.
  Dates in other formats (``03/01/2026``, ``1 Mar 2026``) are recognised and reported, but drafted
  as ``string`` for the same reason.
* **category** vs **string**: at most ``CATEGORY_MAX_VALUES`` distinct values, each seen at least
  twice on average, make a closed set; anything else is free text (the model one-hot encodes its
  most frequent values only).
* **ranges**: observed min/max widened by ``RANGE_MARGIN`` (half) of the observed span on each
  side, so the next batch's larger extremes are not rejected, and never below 0 when no negative
  value was seen; 0/1 flags and classification targets keep their exact bounds; the key gets none.
* **key**: a unique, non-null int or string column, preferring id-like names. The spec requires
  one (batches are merged and late labels joined on it) and ingest checks its uniqueness, so with
  no such column the drafter stops and says so rather than inventing one.
* **timestamp**: a non-null ISO 8601 datetime column, preferring time-like names.
* **target**: ``--target``, else a column named like a label (target, label, y, ...), else the last
  column; **task**: two distinct values is classification (training supports binary only), a
  numeric target with more is regression.
* **slices**: up to ``MAX_SLICES`` categorical features with 2 to ``SLICE_MAX_VALUES`` values.
* **model_name**: ``<name>_model``.

Errors that no guess can fix (empty file, no rows, an all-null column, no usable target, no key)
exit with status 2 and say what to change in the CSV.

Modules, in the order a draft runs: :mod:`.reading`, :mod:`.profile` (one column), :mod:`.guesses`
(key, timestamp, target, task, ranges), :mod:`.draft` (:func:`draft_spec`), :mod:`.writing` (YAML),
:mod:`.cli` (``mlops-spec``, also ``python -m include.spec_draft``), :mod:`.errors`. Every public
name stays importable from ``include.spec_draft``.
"""

from include.spec_draft.cli import main
from include.spec_draft.draft import MAX_SLICES, Draft, draft_spec
from include.spec_draft.errors import DraftError
from include.spec_draft.guesses import RANGE_MARGIN
from include.spec_draft.profile import CATEGORY_MAX_VALUES, SLICE_MAX_VALUES, ColumnProfile, profile_column
from include.spec_draft.reading import MAX_ROWS, read_csv
from include.spec_draft.writing import render_yaml

__all__ = [
    "CATEGORY_MAX_VALUES", "MAX_ROWS", "MAX_SLICES", "RANGE_MARGIN", "SLICE_MAX_VALUES", "ColumnProfile", "Draft",
    "DraftError", "draft_spec", "main", "profile_column", "read_csv", "render_yaml",
]
