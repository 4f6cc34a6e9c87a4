"""User-facing errors.

A `KnowpackError` is a mistake the user can fix (a missing file, a misspelled key, a bad value).
The CLI prints its message as one line and exits with code 2; it never shows a traceback for it.
"""

from __future__ import annotations


class KnowpackError(Exception):
    """A user error: one clear line naming the problem and the fix."""

    exit_code = 2
