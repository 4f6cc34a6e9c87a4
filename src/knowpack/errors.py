"""User-facing errors.

A `KnowpackError` is a mistake the user can fix (a missing file, a misspelled key, a bad value).
The CLI prints its message as one line and exits with code 2; it never shows a traceback for it.
The helpers below write the parts such lines share: a "did you mean" hint for a misspelled name
(`did_you_mean`) and pydantic's first problem as ``origin: field: problem`` (`first_problem`,
`validation_line`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # pydantic is imported by the code that validates, not by every user of this module
    from pydantic import ValidationError


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


def did_you_mean(name: str, choices: Iterable[str], otherwise: str, *, lead: str = "; ", cutoff: float = 0.6,
                 spell: Callable[[str], str] = str) -> str:
    """``{lead}did you mean 'X'?`` for the choice closest to a misspelled ``name``; ``otherwise`` when none is close.

    ``spell`` turns the close choice into the text to suggest (e.g. the whole dotted path around it);
    ``cutoff`` is difflib's similarity threshold.
    """
    import difflib  # only on the error path

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return f"{lead}did you mean {spell(close[0])!r}?" if close else otherwise


def first_problem(err: ValidationError) -> tuple[str, dict[str, Any]]:
    """(dotted location, record) of the first problem pydantic found: a one-line message names one problem.

    The location is ``""`` for a problem with the whole object (a model validator's).
    """
    first = err.errors()[0]
    return ".".join(str(part) for part in first["loc"]), first


def validation_line(err: ValidationError, origin: str, *, empty: str = "", spell: Callable[[str], str] = str,
                    got: Callable[[Any], str] | None = None) -> str:
    """``{origin}: {where}: {problem}``, where ``where`` is the first problem's dotted location.

    ``empty`` stands for a location-less problem, ``spell`` renders the location (e.g. quoted), and
    ``got`` (when given) renders the rejected value, appended as `` (got …)``.
    """
    where, first = first_problem(err)
    line = f"{origin}: {spell(where or empty)}: {first['msg']}"
    return line if got is None else f"{line} (got {got(first.get('input'))})"
