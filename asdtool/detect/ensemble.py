"""Score fusion: per-machine z-normalisation, linear combination, and the paper's simplex grid search.

Each model's scores are normalised per machine type to zero mean and unit standard deviation, with the
statistics of that model's test-clip scores of that machine type (training-clip scores, when present,
are normalised with the same statistics), then combined linearly. The grid search tries every weight
vector on a simplex grid (weights >= 0 summing to 1, step 0.1 by default) and ranks them by the official
score on the dev set; the metrics are computed for the whole grid at once (sklearn-exact ROC areas).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from asdtool.evaluate import metrics
from asdtool.core.errors import AsdError, few
from asdtool.evaluate.scorefolder import SCORE_STORE, Key
from asdtool.data.store import SCORES, Group, StoreMeta, read_store

MAX_GRID_POINTS = 2_000_000

# --- score folders ----------------------------------------------------------------------------


@dataclass
class ScoreFolder:
    """The official score files of one folder: {(machine, section, split): {file_name: score}} in file order."""

    path: Path
    files: dict[Key, dict[str, float]]

    def keys(self, split: str) -> list[Key]:
        return [key for key in self.files if key[2] == split]

    @property
    def has_train(self) -> bool:
        """Whether every test file has its training-clip counterpart."""
        return all((m, s, "train") in self.files for m, s, _ in self.keys("test"))

    @property
    def machines(self) -> list[str]:
        return list(dict.fromkeys(m for m, _, _ in self.files))


def read_score_folder(path: str | Path) -> ScoreFolder:
    """Return every `anomaly_score_<machine>_section_NN_{test,train}.csv` of a folder."""
    path = Path(path)
    if not path.is_dir():
        raise AsdError("score folder does not exist", path)
    found = [(m, p) for p in path.iterdir() if (m := metrics.SCORE_FILE.match(p.name)) and p.is_file()]
    found.sort(key=lambda mp: (mp[0]["split"] != "test", mp[0]["machine"].lower(), mp[0]["section"]))
    files: dict[Key, dict[str, float]] = {}
    for m, p in found:
        files[(m["machine"], m["section"], m["split"])] = metrics.read_score_csv(p)
    if not any(split == "test" for _, _, split in files):
        raise AsdError("holds no anomaly_score_<machine>_section_NN_test.csv files", path)
    return ScoreFolder(path, files)


def check_same_clips(folders: Sequence[ScoreFolder], split: str = "test") -> None:
    """Refuse score folders whose `split` files or clip lists differ from the first folder's."""
    ref = folders[0]
    ref_keys = set(ref.keys(split))
    for other in folders[1:]:
        keys = set(other.keys(split))
        if keys != ref_keys:
            missing = sorted(metrics.score_file_name(m, s, sp) for m, s, sp in ref_keys - keys)
            extra = sorted(metrics.score_file_name(m, s, sp) for m, s, sp in keys - ref_keys)
            what = "; ".join(x for x in (missing and f"lacks {few(missing)}", extra and f"has extra {few(extra)}") if x)
            raise AsdError(f"holds other score files than {ref.path}: {what}", other.path)
        for key in ref.keys(split):
            a, b = set(ref.files[key]), set(other.files[key])
            if a != b:
                name = metrics.score_file_name(*key)
                parts = [f"lacks {few(sorted(a - b))}" if a - b else "", f"has extra {few(sorted(b - a))}" if b - a else ""]
                raise AsdError(
                    f"{name} lists other clips than in {ref.path}: {'; '.join(p for p in parts if p)}", other.path
                )


def read_score_folders(paths: Sequence[str | Path]) -> tuple[list[ScoreFolder], bool]:
    """Return the folders, checked to score the same clips, and whether their training-clip files can be fused too."""
    if not paths:
        raise AsdError("no score folders given")
    resolved = [Path(p).resolve() for p in paths]
    dup = [str(p) for p, r in zip(paths, resolved) if resolved.count(r) > 1]
    if dup:
        raise AsdError(f"score folder {dup[0]} is given twice")
    folders = [read_score_folder(p) for p in paths]
    check_same_clips(folders, "test")
    with_train = all(f.has_train for f in folders)
    if with_train:
        check_same_clips(folders, "train")
    return folders, with_train


# --- normalisation and fusion ------------------------------------------------------------------


def machine_stats(folder: ScoreFolder) -> dict[str, tuple[float, float]]:
    """Return {machine: (mean, std)} of the folder's test-clip scores (std 1 where all scores are equal)."""
    out: dict[str, tuple[float, float]] = {}
    for machine in folder.machines:
        values = np.array([v for (m, _, sp), rows in folder.files.items() if m == machine and sp == "test" for v in rows.values()])
        if not len(values):
            raise AsdError(f"has training-clip scores but no test-clip scores for {machine}", folder.path)
        std = float(values.std())
        out[machine] = (float(values.mean()), std if std > 0 else 1.0)
    return out


def z_normalise(folder: ScoreFolder) -> ScoreFolder:
    """Return the folder's scores normalised per machine type with its test-clip mean and std."""
    stats = machine_stats(folder)
    files = {
        key: {name: (value - stats[key[0]][0]) / stats[key[0]][1] for name, value in rows.items()}
        for key, rows in folder.files.items()
    }
    return ScoreFolder(folder.path, files)


def check_weights(weights: Sequence[float], n_models: int, of: str = "score folders") -> np.ndarray:
    """Return the weights as an array; refuse a wrong count, negative or non-finite weights, or a sum <= 0.

    `of` names what the weights belong to in the count's message (export: "--model members").
    """
    w = np.asarray(list(weights), dtype=np.float64)
    if len(w) != n_models:
        raise AsdError(f"{len(w)} weights for {n_models} {of}: give one weight to each")
    if not np.all(np.isfinite(w)):
        raise AsdError(f"weights must be finite numbers, got {list(weights)}")
    if np.any(w < 0):
        raise AsdError(f"weights must not be negative, got {list(weights)}")
    if not w.sum() > 0:
        raise AsdError(f"weights must sum to a positive number, got {list(weights)} (sum {w.sum():g})")
    return w


def fuse(folders: Sequence[ScoreFolder], weights: Sequence[float], with_train: bool = True) -> dict[Key, dict[str, float]]:
    """Return {(machine, section, split): {file_name: sum_i w_i z_i}} over z-normalised folders, in the first folder's order."""
    w = check_weights(weights, len(folders))
    normalised = [z_normalise(f) for f in folders]
    ref = normalised[0]
    out: dict[Key, dict[str, float]] = {}
    for key in ref.files:
        if key[2] == "train" and not with_train:
            continue
        names = list(ref.files[key])
        z = np.array([[f.files[key][n] for n in names] for f in normalised])  # (models, clips)
        out[key] = dict(zip(names, (w @ z).tolist()))
    return out


def fused_store(folders: Sequence[ScoreFolder], weights: Sequence[float], fused: dict[Key, dict[str, float]]):
    """Return (meta, groups) of a fused `scores.h5` when every input folder has one, else None.

    Clip records (domain, label, attributes) and the clip fingerprint come from the inputs' score stores.
    """
    paths = [f.path / SCORE_STORE for f in folders]
    if not all(p.is_file() for p in paths):
        return None
    stores = [read_store(p, SCORES) for p in paths]
    for s in stores[1:]:
        stores[0].check_clips(s.meta.clips_sha256, s.path)
    by_clip: dict[tuple[str, str], dict[str, float]] = {}
    for (machine, _, split), rows in fused.items():
        by_clip.setdefault((machine, split), {}).update(rows)
    groups: dict[tuple[str, str], Group] = {}
    for (machine, split), group in stores[0].groups.items():
        rows = by_clip.get((machine, split))
        if rows is None or any(n not in rows for n in group.file_names):
            return None  # the CSVs do not cover this group (training-clip files missing): no store
        groups[(machine, split)] = group.with_values(np.array([rows[n] for n in group.file_names]))
    lines = [f"{s.meta.model}:{s.meta.checkpoint_sha256}:{w!r}" for s, w in zip(stores, map(float, weights))]
    meta = StoreMeta(
        model="ensemble(" + ", ".join(f"{w:g}*{s.meta.model}" for s, w in zip(stores, map(float, weights))) + ")",
        checkpoint_sha256=hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest(),
        clips_sha256=stores[0].meta.clips_sha256,
    )
    return meta, groups


# --- vectorised official score ----------------------------------------------------------------


def roc_area_rows(y: np.ndarray, s: np.ndarray, max_fpr: float | None = None) -> np.ndarray:
    """Return the ROC AUC of every row of s (G, n) for labels y (n,); with max_fpr, the McClish pAUC.

    Identical to sklearn's roc_auc_score (ties make diagonal ROC segments), computed for all rows at once.
    """
    s = np.atleast_2d(np.asarray(s, dtype=np.float64))
    order = np.argsort(-s, axis=1)
    return _roc_area_sorted(np.asarray(y).astype(bool)[order], np.take_along_axis(s, order, axis=1), max_fpr)


def _roc_area_sorted(y_sorted: np.ndarray, s_sorted: np.ndarray, max_fpr: float | None) -> np.ndarray:
    """ROC area of rows already sorted by descending score (labels y_sorted, bool (G, n))."""
    g, n = s_sorted.shape
    tps = np.cumsum(y_sorted, axis=1)
    n_pos = int(tps[0, -1]) if n else 0
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise AsdError("a section needs both normal and anomalous test clips in each domain to compute AUC")
    fps = np.arange(1, n + 1) - tps
    # ROC points exist only where the score changes: tied clips share one point (a diagonal segment),
    # whatever order the sort left them in
    last = np.ones((g, n), dtype=bool)
    last[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    nxt = np.where(last, np.arange(n), n)
    nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
    fpr = np.concatenate([np.zeros((g, 1)), np.take_along_axis(fps, nxt, axis=1) / n_neg], axis=1)
    tpr = np.concatenate([np.zeros((g, 1)), np.take_along_axis(tps, nxt, axis=1) / n_pos], axis=1)
    x0, x1, y0, y1 = fpr[:, :-1], fpr[:, 1:], tpr[:, :-1], tpr[:, 1:]
    if max_fpr is None or max_fpr >= 1:
        return ((x1 - x0) * (y0 + y1)).sum(axis=1) / 2.0
    c0, c1 = np.minimum(x0, max_fpr), np.minimum(x1, max_fpr)
    dx = x1 - x0
    slope = np.divide(y1 - y0, dx, out=np.zeros_like(dx), where=dx > 0)
    area = ((c1 - c0) * (2.0 * y0 + slope * (c1 - x0 + c0 - x0))).sum(axis=1) / 2.0
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1.0 + (area - min_area) / (max_area - min_area))


@dataclass
class _Section:
    z: np.ndarray  # (n, models) z-normalised scores in the truth's clip order
    y: np.ndarray  # (n,) 0 normal, 1 anomaly
    source: np.ndarray  # (n,) bool: clips of the AUC (source): source normals and every anomaly
    target: np.ndarray  # (n,) bool: likewise for the target domain


class FusionProblem:
    """z-normalised test scores of several models aligned with the dev ground truth, ready to score weight grids."""

    def __init__(self, folders: Sequence[ScoreFolder], truths: Sequence[metrics.SectionTruth]):
        normalised = [z_normalise(f) for f in folders]
        self.n_models = len(folders)
        self.sections: list[_Section] = []
        for t in truths:
            key = (t.machine, t.section, "test")
            cols = []
            for f in normalised:
                if key not in f.files:
                    raise AsdError(f"has no {metrics.score_file_name(t.machine, t.section)} for the ground truth", f.path)
                cols.append(metrics.align_scores(t, f.files[key], f.path / metrics.score_file_name(t.machine, t.section)))
            y = np.array([t.label[n] for n in t.label])
            d = np.array([t.domain[n] for n in t.label])
            self.sections.append(_Section(np.stack(cols, axis=1), y, (d == 0) | (y != 0), (d == 1) | (y != 0)))
        if not self.sections:
            raise AsdError("nothing to fuse: no ground-truth sections")

    def scores(self, weights: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Return (official score, arithmetic mean) of every AUC source, AUC target and pAUC, per weight row."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        official, mean = np.empty(len(weights)), np.empty(len(weights))
        n_values = 3 * len(self.sections)
        for lo in range(0, len(weights), chunk):
            w = weights[lo : lo + chunk]
            inv_sum, total = np.zeros(len(w)), np.zeros(len(w))
            for sec in self.sections:
                fused = w @ sec.z.T  # (G, n)
                order = np.argsort(-fused, axis=1)  # one sort per section; the domain subsets keep its order
                s_sorted = np.take_along_axis(fused, order, axis=1)
                y_sorted = sec.y.astype(bool)[order]
                values = [_roc_area_sorted(y_sorted, s_sorted, metrics.MAX_FPR)]
                for subset in (sec.source, sec.target):
                    keep = subset[order]  # every row keeps the same number of clips
                    shape = (len(w), int(subset.sum()))
                    values.append(_roc_area_sorted(y_sorted[keep].reshape(shape), s_sorted[keep].reshape(shape), None))
                for v in values:
                    inv_sum += 1.0 / np.maximum(v, metrics.EPS)
                    total += v
            official[lo : lo + chunk] = n_values / inv_sum
            mean[lo : lo + chunk] = total / n_values
        return official, mean


# --- grid search ------------------------------------------------------------------------------


def grid_size(n_models: int, step: float) -> int:
    """Return the number of points of the simplex grid: C(m + n - 1, n - 1) with m = 1 / step."""
    return math.comb(_units(step) + n_models - 1, n_models - 1)


def _units(step: float) -> int:
    if not (0 < step <= 1):
        raise AsdError(f"grid step must lie in (0, 1], got {step}")
    m = round(1.0 / step)
    if abs(m * step - 1.0) > 1e-9:
        raise AsdError(f"grid step {step} does not divide 1 (use 0.1, 0.05, 0.2, ...)")
    return m


def simplex_grid(n_models: int, step: float = 0.1) -> np.ndarray:
    """Return every weight vector with entries in {0, step, 2 step, ...} summing to 1, as rows (G, n_models)."""
    if n_models < 1:
        raise AsdError("the grid needs at least one model")
    m = _units(step)
    size = grid_size(n_models, step)
    if size > MAX_GRID_POINTS:
        raise AsdError(f"a grid of {size} points is too large for {n_models} models; use a coarser step")
    rows = np.empty((size, n_models), dtype=np.int64)
    for i, bars in enumerate(itertools.combinations(range(m + n_models - 1), n_models - 1)):  # stars and bars
        edges = (-1, *bars, m + n_models - 1)
        rows[i] = np.diff(edges) - 1
    return rows / m


@dataclass
class GridPoint:
    weights: tuple[float, ...]
    official_score: float
    arithmetic_mean: float


def grid_search(
    folders: Sequence[ScoreFolder], truths: Sequence[metrics.SectionTruth], step: float = 0.1
) -> list[GridPoint]:
    """Return every simplex-grid weight vector ranked by official score on the dev set, best first.

    Equal official scores are ranked by the arithmetic mean of the same figures, then by grid order.
    """
    grid = simplex_grid(len(folders), step)
    official, mean = FusionProblem(folders, truths).scores(grid)
    order = np.lexsort((np.arange(len(grid)), -mean, -official))
    return [GridPoint(tuple(round(float(x), 10) for x in grid[i]), float(official[i]), float(mean[i])) for i in order]


# --- the whole stage ---------------------------------------------------------------------------


@dataclass
class EnsembleRun:
    """What `ensemble_to_folder` did: the weights used, the search ranking, the fused metrics."""

    names: list[str]
    weights: list[float]
    ranked: list | None  # grid points, best first (None without a search)
    search_seconds: float
    summary: dict | None  # official metrics of the fused scores (None without a data root)
    with_train: bool
    wrote_store: bool


def ensemble_to_folder(
    scores: Sequence[Path], out: Path, weights: Sequence[float] = (), search: bool = False,
    data_root: Path | None = None, step: float = 0.1, top: int = 10, search_out: Path | None = None, reading=None,
    force: bool = False,
) -> EnsembleRun:  # fmt: skip
    """Fuse score folders (given weights, or the best of a grid search on `data_root`) into `out`."""
    import time

    from asdtool.core import outputs
    from asdtool.core.atomic import write_json
    from asdtool.data import dcase
    from asdtool.evaluate.scorefolder import check_score_folder, write_score_folder

    scores, out = [Path(p) for p in scores], Path(out)
    inputs = [*scores, data_root]
    check_score_folder(out, inputs)
    if search_out is not None:
        outputs.check_file(search_out, outputs.SEARCH_JSON, inputs=inputs, force=force)
    folders, with_train = read_score_folders(scores)
    names = [p.name for p in scores]
    truths = metrics.truth_from_dataset(dcase.scan(data_root, reading=reading or dcase.Reading())) if data_root is not None else None
    ranked, seconds = None, 0.0
    if search:
        simplex_grid(len(folders), step)  # refuse a bad step before the work
        started = time.perf_counter()
        ranked = grid_search(folders, truths, step)
        seconds = time.perf_counter() - started
        weights = list(ranked[0].weights)
    fused = fuse(folders, weights, with_train)
    store = fused_store(folders, weights, fused)
    summary = None
    if truths is not None:  # evaluate before writing: a folder that does not fit the truth writes nothing
        by_machine: dict[str, dict[str, float]] = {}
        for (machine, _, split), rows in fused.items():
            if split == "test":
                by_machine.setdefault(machine, {}).update(rows)
        summary = metrics.summarize(metrics.evaluate_scores(truths, by_machine))
    write_score_folder(out, fused, store)
    if ranked is not None and search_out is not None:
        result = {
            "models": names,
            "score_folders": [str(p) for p in scores],
            "step": step,
            "best": {"weights": list(ranked[0].weights), "official_score": ranked[0].official_score},
            "top": [
                {"weights": list(p.weights), "official_score": p.official_score, "arithmetic_mean": p.arithmetic_mean}
                for p in ranked[:top]
            ],
        }
        write_json(search_out, result)
    return EnsembleRun(names, list(weights), ranked, seconds, summary, with_train, store is not None)
