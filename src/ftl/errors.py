"""One exception type for problems a user can fix, so the CLI can print one line instead of a traceback."""


class FTLError(ValueError):
    """A user-facing error: its message names the problem and the fix."""
