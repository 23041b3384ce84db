"""The true operating conditions of clips whose names hide them (`noAttribute`), for scoring pseudo-labels.

Two sources: `hidden_attributes.csv`, which `asdtool synth` writes beside the machine folders of the
embedded default, and the organisers' own files, which their baseline repository ships for the
hidden-attribute machine types (2024: gearbox, slider, ToyTrain; 2025: bearing, slider, ToyTrain):
`<machine>/attributes_<ss>_{train,test}_correspondence.csv` under a folder such as
`datasets/ground_truth_attributes/dcase2024t2/dev_data/`, with rows
`source_file_name,target_file_name` (the name with the true attributes, the name as distributed).
`asdtool synth --layout` writes the same files into its ground-truth folder.
`asdtool pseudolabel` scores its clusters against either (adjusted Rand index).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from asdtool.data.dcase import read_csv_rows
from asdtool.core.errors import AsdError

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


CORRESPONDENCE_HEADER = ["source_file_name", "target_file_name"]


def read_correspondence_folder(folder: str | Path) -> dict[tuple[str, str], str]:
    """Return {(machine, distributed clip file name): true attribute string} of the organisers' correspondence files.

    `folder` holds one sub-folder per machine type with `attributes_<ss>_<split>_correspondence.csv` files.
    """
    from asdtool.data.layouts import parse_sections_name

    folder = Path(folder)
    if not folder.is_dir():
        raise AsdError("attribute ground-truth folder does not exist", folder)
    files = sorted(folder.glob("*/attributes_*_correspondence.csv"))
    if not files:
        raise AsdError("holds no <machine>/attributes_NN_{train,test}_correspondence.csv files", folder)
    out: dict[tuple[str, str], str] = {}
    for path in files:
        rows = read_csv_rows(path, "correspondence file")
        if not rows or [c.strip() for c in rows[0][:2]] != CORRESPONDENCE_HEADER:
            raise AsdError("has no 'source_file_name,target_file_name' header", path)
        for line_no, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) < 2:
                raise AsdError(f"line {line_no} is not source_file_name,target_file_name", path)
            true_name, given = (Path(c.strip()).name for c in row[:2])
            try:
                attrs = parse_sections_name(true_name).attribute_string
            except ValueError as exc:
                raise AsdError(f"line {line_no}: {true_name}: {exc}", path) from None
            out[(path.parent.name, given)] = attrs
    return out


def write_hidden_rows(path: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    """Write (machine, file_name, hidden_attributes) rows under the header (not atomic: callers stage it)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(_HEADER)
        writer.writerows(rows)
