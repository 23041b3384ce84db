"""The AITHU detector: L2-normalised embeddings, SMOTE over the target domain, k-NN cosine distance.

Per machine type, the memory bank holds the source-domain training embeddings plus the target-domain
ones, oversampled with SMOTE so the two domains weigh the same (the paper's domain equalisation). The
anomaly score of a clip is its cosine distance to the nearest bank embedding (k = 1 in the paper; with
k > 1 the mean over the k nearest). Training clips are scored leave-one-out (their own embedding and
the synthetic points SMOTE made from it do not count), so decision thresholds can be fitted on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from imblearn.over_sampling import SMOTE
from sklearn.neighbors import NearestNeighbors

from asdtool.errors import AsdError
from asdtool.store import EMBEDDINGS, Group, Store
from asdtool.vectors import l2_normalise, nearest_cosine_distance

SOURCE, TARGET = 0, 1
_PARENT_TOL = 1e-9  # squared distance of a synthetic point to its parents' segment (unit-norm inputs, float64)


@dataclass
class SmoteResult:
    """What SMOTE added to the target domain."""

    n_target: int  # original target-domain clips
    synthetic: np.ndarray  # (S, D) new target-domain points
    parents: np.ndarray  # (S, 2) indices into the target clips of the two points each one lies between; -1 unknown
    skipped: str = ""  # why no points were made ("" when SMOTE ran)
    k: int = 0  # neighbours SMOTE used (after clipping to n_target - 1)

    @property
    def target_count(self) -> int:
        """Target-domain points in the bank: the originals plus the synthetic ones."""
        return self.n_target + len(self.synthetic)


def smote_target_domain(
    source: np.ndarray, target: np.ndarray, ratio: float = 1.0, k: int = 5, seed: int = 0
) -> SmoteResult:
    """Return synthetic target-domain points so that target count = round(ratio x source count).

    imbalanced-learn's SMOTE interpolates between each target point and one of its `k` nearest target
    neighbours (k is clipped to n_target - 1). Nothing is made, and `skipped` says why, when ratio is 0,
    when there are fewer than 2 target clips, or when the target domain already has enough points.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    dim = source.shape[1] if source.ndim == 2 else target.shape[-1]
    n_s, n_t = len(source), len(target)
    goal = int(round(ratio * n_s))

    def nothing(reason: str) -> SmoteResult:
        return SmoteResult(n_t, np.zeros((0, dim)), np.zeros((0, 2), dtype=np.int64), reason)

    if ratio < 0 or not np.isfinite(ratio):
        raise AsdError(f"SMOTE ratio must be 0 or more, got {ratio}")
    if k < 1:
        raise AsdError(f"SMOTE k must be 1 or more, got {k}")
    if ratio == 0:
        return nothing("disabled (ratio 0)")
    if n_t < 2:
        return nothing(f"{n_t} target training clip(s): SMOTE needs at least 2")
    if goal <= n_t:
        return nothing(f"target domain already has {n_t} clips >= {ratio:g} x {n_s} source clips")
    k_eff = min(k, n_t - 1)
    x = np.concatenate([source, target])
    y = np.concatenate([np.full(n_s, SOURCE), np.full(n_t, TARGET)])
    sampler = SMOTE(sampling_strategy={TARGET: goal}, k_neighbors=k_eff, random_state=seed)
    x_res, _ = sampler.fit_resample(x, y)
    synthetic = np.asarray(x_res[len(x):], dtype=np.float64)  # imbalanced-learn appends the new points
    return SmoteResult(n_t, synthetic, _smote_parents(target, synthetic, k_eff), "", k_eff)


def _smote_parents(target: np.ndarray, synthetic: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Return (S, 2) the target points each synthetic point lies between (-1 where none fits).

    SMOTE does not report them; every synthetic point lies on the segment between a target point and
    one of its k nearest target neighbours, so the segment it lies on (to float precision) is found.
    """
    parents = np.full((len(synthetic), 2), -1, dtype=np.int64)
    if not len(synthetic):
        return parents
    nns = NearestNeighbors(n_neighbors=k + 1).fit(target).kneighbors(target, return_distance=False)
    pairs = np.array(sorted({(min(i, int(j)), max(i, int(j))) for i, row in enumerate(nns) for j in row if j != i}))
    a, b = target[pairs[:, 0]], target[pairs[:, 1]]
    d = b - a  # (P, D)
    dd = np.einsum("pd,pd->p", d, d)
    ad = np.einsum("pd,pd->p", a, d)
    aa = np.einsum("pd,pd->p", a, a)
    for lo in range(0, len(synthetic), chunk):
        z = synthetic[lo : lo + chunk]  # (s, D)
        zz = np.einsum("sd,sd->s", z, z)
        proj = z @ d.T - ad  # (z - a).d  (s, P)
        dist2 = zz[:, None] - 2.0 * (z @ a.T) + aa  # |z - a|^2
        t = proj / np.where(dd > 0, dd, 1.0)
        residual = dist2 - t * proj  # squared distance from z to the line through a and b
        residual[(t < -1e-9) | (t > 1 + 1e-9)] = np.inf
        best = np.argmin(residual, axis=1)
        ok = residual[np.arange(len(z)), best] <= _PARENT_TOL * (1.0 + zz)
        parents[lo : lo + chunk][ok] = pairs[best[ok]]
    return parents


@dataclass
class MachineDetection:
    """What the detector used for one machine type (for the command's table)."""

    machine: str
    n_source: int
    n_target: int
    smote: SmoteResult
    n_test: int

    @property
    def bank_size(self) -> int:
        return self.n_source + self.smote.target_count


@dataclass
class Detection:
    """Anomaly scores per (machine, split), in store order, and what was done per machine type."""

    scores: dict[tuple[str, str], Group] = field(default_factory=dict)
    machines: dict[str, MachineDetection] = field(default_factory=dict)


def detect_machine(
    train: Group, test: Group | None, k: int = 1, smote_ratio: float = 1.0, smote_k: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None, MachineDetection]:
    """Return (train scores leave-one-out, test scores, what was done) of one machine type."""
    x = l2_normalise(train.values)  # (N, D)
    if np.any(train.domain == -1):
        raise AsdError("training clips of unknown domain: cannot split source from target")
    src_idx = np.flatnonzero(train.domain == SOURCE)
    tgt_idx = np.flatnonzero(train.domain == TARGET)
    sm = smote_target_domain(x[src_idx], x[tgt_idx], smote_ratio, smote_k, seed)
    bank = np.concatenate([x, sm.synthetic])  # training clips in store order, then the synthetic points

    # leave-one-out: clip i skips its own row and the synthetic points with it as an endpoint
    excluded: list[np.ndarray] = [np.array([i]) for i in range(len(x))]
    for j, i in enumerate(tgt_idx):
        made_from = np.flatnonzero((sm.parents == j).any(axis=1))
        excluded[i] = np.concatenate([[i], len(x) + made_from])
    if len(bank) - max(len(e) for e in excluded) < k:
        raise AsdError(f"{len(x)} training clips are too few to score them leave-one-out with k={k}")
    train_scores = nearest_cosine_distance(bank, x, k, excluded)
    test_scores = None
    if test is not None and len(test):
        if test.values.shape[1] != x.shape[1]:
            raise AsdError(f"test embeddings have {test.values.shape[1]} dimensions, training ones {x.shape[1]}")
        test_scores = nearest_cosine_distance(bank, test.values, k)
    info = MachineDetection("", len(src_idx), len(tgt_idx), sm, 0 if test is None else len(test))
    return train_scores, test_scores, info


def detect_store(
    store: Store, k: int = 1, smote_ratio: float = 1.0, smote_k: int = 5, seed: int = 0
) -> Detection:
    """Return the anomaly scores of every clip of an embedding store (training clips leave-one-out)."""
    if store.kind != EMBEDDINGS:
        raise AsdError(f"is a {store.kind} store, expected an embedding store", store.path)
    if k < 1:
        raise AsdError(f"k must be 1 or more, got {k}")
    if smote_k < 1:
        raise AsdError(f"SMOTE k must be 1 or more, got {smote_k}")
    if not (smote_ratio >= 0 and np.isfinite(smote_ratio)):
        raise AsdError(f"SMOTE ratio must be 0 or more, got {smote_ratio}")
    out = Detection()
    for machine in store.machines:
        train, test = store.get(machine, "train"), store.get(machine, "test")
        if train is None or not len(train):
            raise AsdError(f"machine type {machine} has no training embeddings", store.path)
        try:
            train_scores, test_scores, info = detect_machine(train, test, k, smote_ratio, smote_k, seed)
        except AsdError as exc:
            raise AsdError(f"{machine}: {exc.problem}", store.path) from None
        info.machine = machine
        out.machines[machine] = info
        out.scores[(machine, "train")] = train.with_values(train_scores)
        if test is not None:
            out.scores[(machine, "test")] = test.with_values(
                test_scores if test_scores is not None else np.zeros(0, dtype=np.float64)
            )
    # keep the store's group order
    out.scores = {key: out.scores[key] for key in store.groups if key in out.scores}
    return out


def detect_to_folder(
    embeddings: str | Path, out: str | Path, k: int = 1, smote_ratio: float = 1.0, smote_k: int = 5, seed: int = 0,
    data_root: str | Path | None = None,
) -> tuple[Store, Detection]:  # fmt: skip
    """Score every clip of an embedding store and write the score folder `out`; return (store, detection).

    With `data_root`, refuse a store built from another clip list than that data root's.
    """
    from asdtool import store as stores
    from asdtool.data import dcase
    from asdtool.scorefolder import check_score_folder, write_score_folder

    embeddings, out = Path(embeddings), Path(out)
    if out.resolve() == embeddings.resolve() or out.resolve() in embeddings.resolve().parents:
        raise AsdError("--out would replace the embedding store or the folder that holds it", out)
    check_score_folder(out)
    emb = stores.read_store(embeddings, EMBEDDINGS)
    if data_root is not None:
        emb.check_clips(stores.clips_sha256(dcase.scan(data_root, emb.machines).clips), data_root)
    result = detect_store(emb, k=k, smote_ratio=smote_ratio, smote_k=smote_k, seed=seed)
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for (machine, split), group in result.scores.items():
        for name, score in zip(group.file_names, group.values.tolist()):
            try:
                section = dcase.parse_name(name).section
            except ValueError as exc:
                raise AsdError(f"/{machine}/{split}: clip {name}: {exc}", embeddings) from None
            rows.setdefault((machine, section, split), {})[name] = score
    meta = stores.StoreMeta(
        model=emb.meta.model, checkpoint_sha256=emb.meta.checkpoint_sha256, clips_sha256=emb.meta.clips_sha256
    )
    write_score_folder(out, rows, (meta, result.scores))
    return emb, result
