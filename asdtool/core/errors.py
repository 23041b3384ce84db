"""The one error type the library raises for user-facing failures."""

from __future__ import annotations

from pathlib import Path


class AsdError(Exception):
    """A user-facing failure: one line naming the file (when there is one) and the problem.

    Library modules raise it; the command-line layer prints it in red and exits with code 1.
    """

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        message = problem if path is None else f"{path}: {problem}"
        super().__init__(" ".join(message.split("\n")))


def few(items, n: int = 3) -> str:
    """Return the first `n` of `items` in sorted order, for a one-line message: `a, b, c and 4 more`.

    Items are shown as `str(item)` and sorted as strings; `n` or fewer items are all shown (`a, b`);
    an empty input gives "".
    """
    names = sorted(str(item) for item in items)
    n = max(n, 0)
    if len(names) <= n:
        return ", ".join(names)
    return ", ".join(names[:n]) + f" and {len(names) - n} more" if n else f"{len(names)} more"


QUOTE_LIMIT = 80  # characters of a quoted value in a message


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """Return `repr(value)` cut to `limit` characters (`...` and the full length added), for a one-line message.

    A value from a user's file may be huge (an expanded YAML alias, a long string); a message quotes
    only its start, so that printing the error costs nothing.
    """
    if isinstance(value, (str, bytes)) and len(value) > 4 * limit:
        value = value[: 4 * limit]  # repr of a long string would copy all of it first
        text = repr(value)
    elif isinstance(value, (list, tuple, dict, set)):
        text = _bounded_repr(value, limit + 1)
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def _bounded_repr(value, budget: int) -> str:
    """Return a repr of a nested container that stops once `budget` characters are written (no full expansion)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset, r.maxstring, r.maxother = 3, 6, 6, 4, 6, budget, budget
    return r.repr(value)
