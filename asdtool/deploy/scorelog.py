"""The score log of `score --log` and `serve --log`, which `asdtool drift` reads, and the plots of long recordings.

A log folder holds `scores.csv`, one row per scored window (time, file, machine type, section,
window, start, score, threshold, decision), appended under an exclusive lock so that concurrent
writers (score commands, the service) never interleave, and `bundle.json`, what `log_reference`
records of the bundle (its name, content hash, thresholds and training scores), written once; a
folder that logs another bundle's scores is refused. `plot_recording` draws the window scores of a
recording of several windows over time against its threshold (`score --plot`). Nothing here imports
torch: `asdtool drift` takes the log's names from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from asdtool.core.errors import AsdError
from asdtool.deploy.bundle import Bundle, RecordingScore

LOG_SCORES = "scores.csv"
LOG_BUNDLE = "bundle.json"
LOG_DRIFT_PLOT = "drift.png"  # where asdtool drift draws by default
LOG_HEADER = ("time", "file", "machine", "section", "window", "start", "score", "threshold", "decision")


def _log_entry(path: Path) -> bool:
    """Return whether a log folder entry is one score/serve --log or drift writes there.

    scores.csv and bundle.json are taken by name here: `check_log` reads their content next, with
    its own messages. A plot must be asdtool's by content.
    """
    from asdtool.core import outputs

    if path.name in (LOG_SCORES, LOG_BUNDLE):
        return True
    if path.name == LOG_DRIFT_PLOT:
        return outputs.png_of_ours(path)
    return path.name.startswith(".")  # a lock file of the writers


def _log_kind():
    from asdtool.core.outputs import Kind

    return Kind("a score log", _log_entry)


def log_reference(bundle: Bundle) -> dict:
    """Return what a log folder records of its bundle: name, content hash, thresholds and training scores."""
    return {
        "bundle": str(bundle.path),
        "content_sha256": bundle.meta["content_sha256"],
        "kind": bundle.meta["kind"],
        "members": [m["name"] for m in bundle.meta["members"]],
        "thresholds": bundle.meta["thresholds"],
        "train_scores": bundle.meta["train_scores"],
    }


def check_log(folder: str | Path, bundle: Bundle) -> Path:
    """Return the log folder after refusing one that logs another bundle's scores or is not a log folder."""
    from asdtool.core import outputs

    folder = Path(folder)
    outputs.check_folder(folder, _log_kind())
    _check_log_reference(folder, bundle)
    scores = folder / LOG_SCORES
    if scores.exists():
        with open(scores, encoding="utf-8") as f:
            first = f.readline()  # empty: a writer created it and writes the header under its lock
            if first and first.rstrip("\r\n") != ",".join(LOG_HEADER):
                raise AsdError(f"is not a score log (its header is not {','.join(LOG_HEADER)})", scores)
    return folder


def _check_log_reference(folder: Path, bundle: Bundle) -> bool:
    """Refuse a log folder whose bundle.json records another bundle; return whether there is one."""
    from asdtool.core import safeparse

    ref = folder / LOG_BUNDLE
    if not ref.exists():
        return False
    doc = safeparse.read_json(ref, what="score log record")
    if not isinstance(doc, dict) or not isinstance(doc.get("content_sha256"), str):
        raise AsdError("is not a score log's bundle.json", ref)
    if doc["content_sha256"] != bundle.meta["content_sha256"]:
        raise AsdError("logs the scores of another bundle; give another --log folder", folder)
    return True


def append_log(folder: str | Path, bundle: Bundle, results: Sequence[RecordingScore], when: str) -> int:
    """Append one row per window of `results` (scored at `when`, ISO 8601 UTC) to the log; return the rows written.

    Under an exclusive lock of scores.csv the folder's bundle.json is checked, or written (atomically)
    when there is none yet, and the rows are appended in one write: concurrent writers (score
    commands, the service) never interleave inside a row, and two writers of different bundles
    starting the same fresh folder cannot both log there. Text cells (file, machine, section) are
    made safe for spreadsheets (`asdtool.core.outputs.spreadsheet_text`).
    """
    import csv
    import fcntl
    import io
    import os

    from asdtool.core.atomic import write_json
    from asdtool.core.outputs import spreadsheet_text

    folder = check_log(folder, bundle)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rows = 0
    for r in results:
        text = [spreadsheet_text(str(v)) for v in (r.name, r.machine, r.section)]
        for i, (start, score) in enumerate(zip(r.window_starts, r.window_scores)):
            writer.writerow([when, *text, i, f"{start:g}", repr(score), repr(r.threshold), int(score > r.threshold)])
            rows += 1
    path = folder / LOG_SCORES
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time: bundle.json checked or created, the header once, whole rows
        if not _check_log_reference(folder, bundle):
            write_json(folder / LOG_BUNDLE, log_reference(bundle))
        if os.fstat(fd).st_size == 0:
            os.write(fd, (",".join(LOG_HEADER) + "\n").encode())
        os.write(fd, buf.getvalue().encode("utf-8"))
    finally:
        os.close(fd)
    return rows


# ----------------------------------------------------------------------------- plots of long recordings


def plot_name(index: int, name: str) -> str:
    """Return the PNG file name of the `index`-th recording (its stem, made safe; the index keeps names apart)."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:80] or "stdin"
    return f"{index:04d}_{stem}.png"


def plot_recording(path: str | Path, result: RecordingScore, seconds: float) -> None:
    """Draw a recording's window scores over time (each at its window's centre) with the threshold, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    t = np.asarray(result.window_starts) + seconds / 2
    s = np.asarray(result.window_scores)
    ax.plot(t, s, color="0.3", linewidth=1)
    above = s > result.threshold
    ax.scatter(t[~above], s[~above], s=12, color="tab:blue", label="normal", zorder=3)
    ax.scatter(t[above], s[above], s=12, color="tab:red", label="anomalous", zorder=3)
    ax.axhline(result.threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {result.threshold:.3g}")
    ax.set_xlabel("time (s, window centre)")
    ax.set_ylabel("anomaly score")
    ax.set_title(f"{result.name}: {result.machine} section {result.section}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    from asdtool.core.outputs import PNG_METADATA

    fig.savefig(path, format="png", metadata=PNG_METADATA)
