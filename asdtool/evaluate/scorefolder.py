"""Score folders: the official `anomaly_score_<machine>_section_<ss>_<split>.csv` files plus `scores.h5`.

One writer serves every producer (detect, baseline, ensemble); the folder appears only when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from asdtool.core import outputs
from asdtool.core.atomic import atomic_dir
from asdtool.evaluate.metrics import DECISION_FILE, SCORE_FILE, score_file_name, write_score_csv

SCORE_STORE = "scores.h5"
Key = tuple[str, str, str]  # (machine, section, split)


SCORE_ENTRY = outputs.any_of(  # what a score folder holds, each by its name and its content
    outputs.named(lambda name: name == SCORE_STORE, outputs.SCORE_STORE),
    outputs.named(lambda name: bool(SCORE_FILE.match(name)), outputs.SCORE_LINES),
    outputs.named(lambda name: bool(DECISION_FILE.match(name)), outputs.DECISION_LINES),
)
DECISION_ENTRY = outputs.named(lambda name: bool(DECISION_FILE.match(name)), outputs.DECISION_LINES)


def check_score_folder(out: str | Path, inputs=()) -> Path:
    """Refuse, before any work, an --out that is a file, cannot be written, holds foreign files or holds an input."""
    return outputs.check_folder(out, SCORE_ENTRY, inputs=inputs)


def write_score_folder(out: str | Path, rows: Mapping[Key, Mapping[str, float]], store=None) -> None:
    """Write one official CSV per (machine, section, split) and, given (meta, groups), `scores.h5`, atomically."""
    from asdtool.data.store import write_scores

    with atomic_dir(out) as tmp:
        for (machine, section, split), by_clip in rows.items():
            write_score_csv(tmp / score_file_name(machine, section, split), by_clip)
        if store is not None:
            write_scores(tmp / SCORE_STORE, *store)
