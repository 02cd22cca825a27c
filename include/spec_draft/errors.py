"""The one error of the drafter: the CSV cannot become a spec as it is (exit 2, with what to change)."""


class DraftError(Exception):
    """The CSV cannot be turned into a spec as it is; the message says what to change."""
