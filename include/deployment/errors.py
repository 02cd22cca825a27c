"""The one exception of the deploy steps; a module of its own so every step module can raise it."""


class DeployError(RuntimeError):
    """A deployment step failed; the message says which and why."""
