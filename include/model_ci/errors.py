"""The setup errors of model CI: the command exits 2 with the message, not a verdict."""


class CiError(RuntimeError):
    """A setup problem (no champion, unknown dataset, missing rev): exit 2 with this message."""
