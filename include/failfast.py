"""Errors no retry can fix fail the task at once, with their cause, instead of after every retry.

A bad spec, a data rev that does not exist, a model family the task cannot use, a schema that does
not match: the third try fails exactly like the first, minutes later. Tasks wrap their work in
:func:`fail_fast`; outages (MLflow down, a git lock, a dead container) still raise as they are and
get retried.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def permanent_errors() -> tuple[type[BaseException], ...]:
    from include.spec import SpecError
    from include.training.inputs import TrainingInputError
    from include.versioning import RevisionNotFound

    return SpecError, TrainingInputError, RevisionNotFound


@contextmanager
def fail_fast(*also: type[BaseException]) -> Iterator[None]:
    """Re-raise permanent errors (and ``also``) as AirflowFailException (no retry), message kept."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except (*permanent_errors(), *also) as err:
        raise AirflowFailException(f"{type(err).__name__}: {err} (not retried: a retry would fail the same way)") \
            from err
