"""User-facing errors.

A `KnowpackError` is a mistake the user can fix (a missing file, a misspelled key, a bad value).
The CLI prints its message as one line and exits with code 2; it never shows a traceback for it.
"""

from __future__ import annotations


class KnowpackError(Exception):
    """A user error: one clear line naming the problem and the fix."""

    exit_code = 2
    MAX_CHARS = 2000

    def __init__(self, message: object = "") -> None:
        # One line, bounded: a value quoted from hostile input may hold newlines or megabytes.
        text = " ".join(str(message).splitlines())
        if len(text) > self.MAX_CHARS:
            text = text[: self.MAX_CHARS - 1] + "…"
        super().__init__(text)


class KnowpackWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. skipped input lines)."""


def warn(message: str) -> None:
    """Report a `KnowpackWarning`; the CLI prints it as one ``warning:`` line."""
    import warnings

    warnings.warn(message, KnowpackWarning, stacklevel=2)
