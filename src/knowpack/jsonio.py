"""Reading JSON and JSON Lines from users' files, where anything can be wrong.

In:  a path.  Out: parsed records, or a `KnowpackError` naming the file and line — never a
`UnicodeDecodeError`, `RecursionError` (deep nesting), `ValueError` (a 5,000-digit integer) or a
lone UTF-16 surrogate (``"\\ud800"``) that would only fail later, when the facts are written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator


_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")


def _loads(text: str, where: str) -> Any:
    from knowpack.errors import KnowpackError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise KnowpackError(f"{where}: not valid JSON ({err.msg})") from err
    except (ValueError, RecursionError) as err:  # huge integers, absurd nesting
        raise KnowpackError(f"{where}: not usable JSON ({type(err).__name__}: {str(err)[:80]})") from err
    # Decoded UTF-8 cannot hold a surrogate; only a \uD800-\uDFFF escape can, so only such text is checked.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise KnowpackError(f"{where}: text holds an invalid \\u escape (a lone surrogate)") from err
    return value


def read_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a UTF-8 JSON Lines file."""
    from knowpack.errors import KnowpackError

    number = 0
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, _loads(line, f"{path}:{number}")
    except UnicodeDecodeError as err:
        raise KnowpackError(f"{path}:{number + 1}: not UTF-8 text ({err.reason})") from err


def read_json_file(path: Path) -> Any:
    """One UTF-8 JSON document."""
    from knowpack.errors import KnowpackError

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise KnowpackError(f"{path}: not UTF-8 text ({err.reason})") from err
    return _loads(text, str(path))


def read_append_log(path: Path, valid: Callable[[Any], bool]) -> tuple[list[Any], int | None]:
    """The records of a JSON Lines file a program appends to as it works (a cache), and the byte offset to
    truncate it at before the next append (None: nothing to cut).

    A corrupt or unterminated last line (a run killed mid-write) is ignored with a warning and cut off; a
    corrupt line elsewhere is ignored with a warning. ``valid`` says whether a parsed record is usable.
    """
    from knowpack.errors import warn

    if not path.is_file():
        return [], None
    lines = path.read_bytes().splitlines(keepends=True)
    records, offset, cut = [], 0, None
    for number, raw in enumerate(lines, start=1):
        start, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        last = number == len(lines)
        if not valid(record) or (last and not raw.endswith(b"\n")):
            if last:
                warn(f"{path}:{number}: ignored an incomplete last line (an interrupted run); it is regenerated")
                cut = start
            else:
                warn(f"{path}:{number}: ignored a corrupt line")
            continue
        records.append(record)
    return records, cut
