"""User-facing errors.

A `KnowpackError` is a mistake the user can fix (a missing file, a misspelled key, a bad value).
The CLI prints its message as one line and exits with code 2; it never shows a traceback for it.
"""

from __future__ import annotations


class KnowpackError(Exception):
    """A user error: one clear line naming the problem and the fix."""

    exit_code = 2


class KnowpackWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. skipped input lines)."""


def warn(message: str) -> None:
    """Report a `KnowpackWarning`; the CLI prints it as one ``warning:`` line."""
    import warnings

    warnings.warn(message, KnowpackWarning, stacklevel=2)
