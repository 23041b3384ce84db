"""hidden_attributes.csv: the true operating conditions of clips whose names say `noAttribute`.

`asdtool synth` writes it beside the machine folders; `asdtool pseudolabel` scores its clusters
against it (adjusted Rand index). Real DCASE data has no such file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from asdtool.data.dcase import read_csv_rows
from asdtool.errors import AsdError

HIDDEN_ATTRIBUTES_FILE = "hidden_attributes.csv"
_HEADER = ["machine", "file_name", "hidden_attributes"]


def read_hidden_rows(path: str | Path) -> list[tuple[str, str, str]]:
    """Return the (machine, file_name, hidden_attributes) rows of a hidden_attributes.csv."""
    path = Path(path)
    rows = read_csv_rows(path, "hidden attribute file")
    if not rows or rows[0] != _HEADER:
        raise AsdError("hidden attribute file has no 'machine,file_name,hidden_attributes' header", path)
    return [tuple(r) for r in rows[1:] if len(r) == 3]  # type: ignore[misc]


def read_hidden_attributes(path: str | Path) -> dict[tuple[str, str], str]:
    """Return {(machine, clip file name): hidden attribute string} of a hidden_attributes.csv."""
    # file_name is the path under the data root (<machine>/<split>/<name>); clips are keyed by name
    return {(m, name.rsplit("/", 1)[-1]): hidden for m, name, hidden in read_hidden_rows(path)}


def write_hidden_rows(path: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    """Write (machine, file_name, hidden_attributes) rows under the header (not atomic: callers stage it)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(_HEADER)
        writer.writerows(rows)
