"""The library's failure signals besides ``ValueError`` (bad input): callers map each to a response code."""


class Unavailable(RuntimeError):
    """Not now: a queue is full or a dependency is down; the same request may succeed later."""


class Cancelled(RuntimeError):
    """The work was cancelled by its owner."""
