"""The one exception type for mistakes a user can make and fix.

Its message is shown as-is by the CLI, the REST handlers and the panels, so it says what was
wrong and what to do, in one line.
"""


class LoraLabError(Exception):
    """A user-facing error: bad input, a missing file, a name that is taken."""


class NotFound(LoraLabError):
    """The named dataset, image or job does not exist."""


class Conflict(LoraLabError):
    """The request clashes with what exists (a taken name, a newer edit)."""


class Unavailable(LoraLabError):
    """What the request needs is not there to serve it (no Ray cluster configured or reachable):
    the server's trouble, not the request's."""


class NoSpace(LoraLabError):
    """The disk has too little room for what was asked (a model to download)."""
