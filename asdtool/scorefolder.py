"""Score folders: the official `anomaly_score_<machine>_section_<ss>_<split>.csv` files plus `scores.h5`.

One writer serves every producer (detect, baseline, ensemble); the folder appears only when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from asdtool.atomic import atomic_dir, check_output
from asdtool.metrics import DECISION_FILE, SCORE_FILE, score_file_name, write_score_csv

SCORE_STORE = "scores.h5"
Key = tuple[str, str, str]  # (machine, section, split)


def is_own_entry(name: str) -> bool:
    """Return whether a file name is one a score folder holds (so a folder of them may be replaced)."""
    return name == SCORE_STORE or bool(SCORE_FILE.match(name) or DECISION_FILE.match(name))


def check_score_folder(out: str | Path) -> Path:
    """Refuse, before any work, an --out that is a file, cannot be written or holds foreign files."""
    return check_output(out, folder=True, ours=is_own_entry)


def write_score_folder(out: str | Path, rows: Mapping[Key, Mapping[str, float]], store=None) -> None:
    """Write one official CSV per (machine, section, split) and, given (meta, groups), `scores.h5`, atomically."""
    from asdtool.store import write_scores

    with atomic_dir(out) as tmp:
        for (machine, section, split), by_clip in rows.items():
            write_score_csv(tmp / score_file_name(machine, section, split), by_clip)
        if store is not None:
            write_scores(tmp / SCORE_STORE, *store)
