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
