"""One error type for everything a user can get wrong: tasks print its message on one line and exit non-zero."""


class TriforceError(Exception):
    """A user-facing failure: the message says what, where, and what to do next, in one line."""

    exit_code = 1


class UnsupportedError(TriforceError):
    """A requested precision, kernel, arch or device cannot be used here (never silently replaced)."""

    exit_code = 3
