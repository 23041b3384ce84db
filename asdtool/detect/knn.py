"""The AITHU detector: L2-normalised embeddings, SMOTE over the target domain, k-NN cosine distance.

Per machine type, the memory bank holds the source-domain training embeddings plus the target-domain
ones, oversampled with SMOTE so the two domains weigh the same (the paper's domain equalisation). The
anomaly score of a clip is its cosine distance to the nearest bank embedding (k = 1 in the paper; with
k > 1 the mean over the k nearest). Training clips are scored leave-one-out (their own embedding and
the synthetic points SMOTE made from it do not count), so decision thresholds can be fitted on them.

Domain-wise normalisation (`normalise`) puts source and target scores on one scale: the target bank is
6-10 real clips plus their SMOTE interpolants, so normal target clips lie farther from it than normal
source clips from the source bank. The domain of a clip is the domain of its nearest bank point (SMOTE
points count as target), since DCASE 2024 and later hide the test clips' domain.

- `domain-z`: (distance - mean) / std, with the mean and std of the leave-one-out scores of the
  training clips of that domain. A training clip's own score is left out of its statistics (it plays
  a test clip); a domain with fewer than 2 such scores uses those of all training clips.
- `local-density`: distance / r(nearest bank point), where r(o) is the mean cosine distance of o to
  its `density_k` nearest real training clips of its domain (LOF-like; k clipped to the clips there).
  SMOTE points are left out of these density banks: each lies on the segment between two target
  clips, often close to one, so counting them would shrink r to a fraction of the real spacing and
  inflate every score near the target domain. A SMOTE point that is itself the nearest point takes
  r interpolated between its two parents, r = (1 - t) r(a) + t r(b), as it stands for that segment.
  A training clip scored leave-one-out is also left out of its neighbour's density bank (else its
  neighbour's r would be its own distance). A domain with no other clip uses all training clips.
  The default k = 2 is the smallest that one near-duplicate clip cannot shrink to about 0, and it
  stays local with 6-10 target clips (a target neighbour has 4-8 others left in leave-one-out).

With a normalisation, detect records it in the root attributes of `scores.h5` (`detect_normalise`,
and `detect_density_k` for local-density); without, `scores.h5` is unchanged (no attribute: none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from imblearn.over_sampling import SMOTE
from sklearn.neighbors import NearestNeighbors

from asdtool.core.errors import AsdError
from asdtool.data.store import EMBEDDINGS, Group, Store
from asdtool.core.vectors import l2_normalise, nearest_cosine_distance
from asdtool.config.choices import Normalise

SOURCE, TARGET = 0, 1
_SCALE_FLOOR = 1e-6  # smallest std or density radius divided by (cosine distances of identical clips are 0)
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


# --- domain-wise normalisation -----------------------------------------------------------------


@dataclass
class Normalisation:
    """How the scores of one machine type were normalised (for the command's table)."""

    mode: str
    test_nn_target: int = 0  # test clips whose nearest bank point is of the target domain (a clip or a SMOTE point)
    stats: dict[int, tuple[float, float]] = field(default_factory=dict)  # domain-z: domain -> (mean, std)
    density_k: dict[int, int] = field(default_factory=dict)  # local-density: domain -> k of its density bank
    fallback: str = ""  # which domain fell back to all training clips ("" when none did)


def check_normalisation(normalise: str, density_k: int) -> None:
    """Refuse an unknown normalisation or a density k below 1."""
    if normalise not in Normalise.values():
        raise AsdError(f"normalise must be one of {Normalise.listed()}, got {normalise!r}")
    if isinstance(density_k, bool) or not isinstance(density_k, (int, np.integer)) or density_k < 1:
        raise AsdError(f"density k must be an integer of 1 or more, got {density_k!r}")


def nearest_rows(bank: np.ndarray, query: np.ndarray, excluded: list[np.ndarray] | None = None) -> np.ndarray:
    """Return the index of each query row's nearest bank row by cosine distance (the lowest index on ties)."""
    d = 1.0 - l2_normalise(query) @ l2_normalise(bank).T  # (Q, N)
    np.clip(d, 0.0, 2.0, out=d)
    if excluded is not None:
        for i, rows in enumerate(excluded):
            d[i, rows] = np.inf
    return d.argmin(axis=1)


def _mean_std(values: np.ndarray) -> tuple[float, float] | None:
    """Return (mean, sample std floored at _SCALE_FLOOR) of 2 or more values, None for fewer."""
    if len(values) < 2:
        return None
    return float(np.mean(values)), max(float(np.std(values, ddof=1)), _SCALE_FLOOR)


def domain_z(
    train_scores: np.ndarray, train_domain: np.ndarray, train_nn_domain: np.ndarray,
    test_scores: np.ndarray, test_nn_domain: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, Normalisation]:  # fmt: skip
    """Return (training, test scores) standardised by the statistics of their nearest bank point's domain.

    The statistics of domain d are the mean and std of the (leave-one-out) scores of d's training
    clips. A training clip's own score is left out of the statistics it is standardised with, so it
    is scored like a test clip; a domain with fewer than 2 scores uses those of all training clips.
    """
    train_scores, test_scores = np.asarray(train_scores, np.float64), np.asarray(test_scores, np.float64)
    info = Normalisation("domain-z")
    fell_back: set[int] = set()
    for d in (SOURCE, TARGET):
        stats = _mean_std(train_scores[train_domain == d])
        if stats is None:
            stats = _mean_std(train_scores)
            fell_back.add(d)
        if stats is None:
            raise AsdError(f"{len(train_scores)} training clip(s) are too few for domain-z normalisation")
        info.stats[d] = stats
    test_z = np.empty_like(test_scores)
    for d, (mean, std) in info.stats.items():
        on = test_nn_domain == d
        test_z[on] = (test_scores[on] - mean) / std
    train_z = np.empty_like(train_scores)
    others = np.ones(len(train_scores), dtype=bool)
    for i, d in enumerate(train_nn_domain):
        others[i] = False
        stats = _mean_std(train_scores[others & (train_domain == d)])
        if stats is None:
            stats = _mean_std(train_scores[others])
            fell_back.add(int(d))
        others[i] = True
        if stats is None:
            raise AsdError(f"{len(train_scores)} training clip(s) are too few for domain-z normalisation")
        train_z[i] = (train_scores[i] - stats[0]) / stats[1]
    info.test_nn_target = int(np.sum(test_nn_domain == TARGET))
    info.fallback = _fallback_note(fell_back)
    return train_z, test_z, info


def _fallback_note(domains: set[int]) -> str:
    names = [name for d, name in ((SOURCE, "source"), (TARGET, "target")) if d in domains]
    return " and ".join(names) + " used all training clips" if names else ""


class _DensityBanks:
    """Mean cosine distance of a training clip to its k nearest real training clips of its own domain."""

    def __init__(self, x: np.ndarray, domain: np.ndarray, k: int):
        self.x, self.domain, self.k = x, np.asarray(domain), k
        self.d = 1.0 - x @ x.T  # (N, N) cosine distances of the unit rows
        np.clip(self.d, 0.0, 2.0, out=self.d)
        self.fell_back: set[int] = set()

    def members(self, d: int, leave_out: tuple[int, ...]) -> np.ndarray:
        """Return the mask of domain d's clips, less `leave_out`; all clips less `leave_out` when that is empty."""
        mask = self.domain == d
        mask[list(leave_out)] = False
        if not mask.any():
            self.fell_back.add(d)
            mask = np.ones(len(self.domain), dtype=bool)
            mask[list(leave_out)] = False
        if not mask.any():
            raise AsdError(f"{len(self.domain)} training clip(s) are too few for local-density normalisation")
        return mask

    def of_clip(self, j: int, leave_out: int = -1) -> float:
        """Return r of training clip j: mean distance to its k nearest other clips of its domain (never `leave_out`)."""
        mask = self.members(int(self.domain[j]), (j,) if leave_out < 0 else (j, leave_out))
        return _mean_smallest(self.d[j, mask], self.k)

    def of_point(self, z: np.ndarray, parents: np.ndarray, tgt_idx: np.ndarray, leave_out: int = -1) -> float:
        """Return r of a SMOTE point: its parents' r interpolated along their segment (k-NN over target clips if unknown)."""
        if parents[0] >= 0:
            a, b = tgt_idx[parents[0]], tgt_idx[parents[1]]
            ab = self.x[b] - self.x[a]
            t = float(np.clip(np.dot(z - self.x[a], ab) / max(float(np.dot(ab, ab)), 1e-300), 0.0, 1.0))
            return (1.0 - t) * self.of_clip(a, leave_out) + t * self.of_clip(b, leave_out)
        mask = self.members(TARGET, () if leave_out < 0 else (leave_out,))
        return _mean_smallest(1.0 - self.x[mask] @ l2_normalise(z), self.k)

    def k_used(self, d: int) -> int:
        """Return the k of domain d's density bank for a test clip's neighbour (k clipped to the clips there)."""
        n = int(np.sum(self.domain == d))
        return min(self.k, n - 1 if n > 1 else len(self.domain) - 1)


def _mean_smallest(values: np.ndarray, k: int) -> float:
    k = min(k, len(values))
    return float(np.partition(np.clip(values, 0.0, 2.0), k - 1)[:k].mean())


def _radius(banks: _DensityBanks, sm: SmoteResult, tgt_idx: np.ndarray, row: int, leave_out: int = -1) -> float:
    """Return r of bank row `row` (training clips first, then the SMOTE points), never using clip `leave_out`."""
    n = len(banks.x)
    if row < n:
        return banks.of_clip(row, leave_out)
    return banks.of_point(sm.synthetic[row - n], sm.parents[row - n], tgt_idx, leave_out)


def local_density(
    x: np.ndarray, domain: np.ndarray, sm: SmoteResult, tgt_idx: np.ndarray, density_k: int,
    train_scores: np.ndarray, train_nn: np.ndarray,
) -> tuple[np.ndarray, _DensityBanks, Normalisation]:  # fmt: skip
    """Return (training scores divided by the density radius r of each one's nearest bank point, the banks, info).

    Bank rows are the training clips `x` (unit rows, store order) then the SMOTE points `sm.synthetic`;
    `train_nn` are the nearest bank rows. Training clip i (scored leave-one-out) is left out of the
    density bank of its neighbour. New clips are divided by `_radius(banks, ...)` of their neighbour.
    """
    banks = _DensityBanks(x, domain, density_k)
    r_train = np.array([_radius(banks, sm, tgt_idx, int(j), i) for i, j in enumerate(train_nn)], dtype=np.float64)
    info = Normalisation("local-density")
    info.density_k = {d: banks.k_used(d) for d in (SOURCE, TARGET) if np.any(domain == d)}
    info.fallback = _fallback_note(banks.fell_back)
    return np.asarray(train_scores, np.float64) / np.maximum(r_train, _SCALE_FLOOR), banks, info


# --- the detector --------------------------------------------------------------------------------


@dataclass
class MachineDetection:
    """What the detector used for one machine type (for the command's table)."""

    machine: str
    n_source: int
    n_target: int
    smote: SmoteResult
    n_test: int
    normalisation: Normalisation | None = None  # None: raw distances

    @property
    def bank_size(self) -> int:
        return self.n_source + self.smote.target_count


@dataclass
class Detection:
    """Anomaly scores per (machine, split), in store order, and what was done per machine type."""

    scores: dict[tuple[str, str], Group] = field(default_factory=dict)
    machines: dict[str, MachineDetection] = field(default_factory=dict)


@dataclass
class FittedSection:
    """One section's detector fitted on its training embeddings: everything that scores a new clip.

    `bank` holds the unit training rows (store order), then the SMOTE points; `bank_domain` their
    domains (SMOTE points: target). `train_scores` are the training clips' own scores (leave-one-out,
    normalised as the new clips' will be).
    """

    bank: np.ndarray
    bank_domain: np.ndarray
    k: int
    normalise: str
    train_scores: np.ndarray
    info: MachineDetection
    smote: SmoteResult
    tgt_idx: np.ndarray
    banks: _DensityBanks | None = None  # local-density

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def score(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (anomaly scores, domain of the nearest bank point) of embeddings [Q, D]."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.dim:
            raise AsdError(f"embeddings of shape {tuple(values.shape)} do not fit a bank of {self.dim} dimensions")
        raw = nearest_cosine_distance(self.bank, values, self.k)
        nn = nearest_rows(self.bank, values) if len(values) else np.zeros(0, dtype=np.int64)
        nn_domain = self.bank_domain[nn]
        if self.normalise == "none":
            return raw, nn_domain
        if self.normalise == "domain-z":
            out = np.empty_like(raw)
            for d, (mean, std) in self.info.normalisation.stats.items():
                on = nn_domain == d
                out[on] = (raw[on] - mean) / std
            return out, nn_domain
        r = np.array([_radius(self.banks, self.smote, self.tgt_idx, int(j)) for j in nn], dtype=np.float64)
        self.info.normalisation.fallback = _fallback_note(self.banks.fell_back)
        return raw / np.maximum(r, _SCALE_FLOOR), nn_domain


def fit_section(
    train: Group, k: int = 1, smote_ratio: float = 1.0, smote_k: int = 5, seed: int = 0,
    normalise: str = "none", density_k: int = 2,
) -> FittedSection:  # fmt: skip
    """Return the detector of one machine type (or section) fitted on its training embeddings."""
    check_normalisation(normalise, density_k)
    x = l2_normalise(train.values)  # (N, D)
    if np.any(train.domain == -1):
        raise AsdError("training clips of unknown domain: cannot split source from target")
    src_idx = np.flatnonzero(train.domain == SOURCE)
    tgt_idx = np.flatnonzero(train.domain == TARGET)
    sm = smote_target_domain(x[src_idx], x[tgt_idx], smote_ratio, smote_k, seed)
    bank = np.concatenate([x, sm.synthetic])  # training clips in store order, then the synthetic points
    bank_domain = np.concatenate([np.asarray(train.domain), np.full(len(sm.synthetic), TARGET)]).astype(np.int64)

    # leave-one-out: clip i skips its own row and the synthetic points with it as an endpoint
    excluded: list[np.ndarray] = [np.array([i]) for i in range(len(x))]
    for j, i in enumerate(tgt_idx):
        made_from = np.flatnonzero((sm.parents == j).any(axis=1))
        excluded[i] = np.concatenate([[i], len(x) + made_from])
    if len(bank) - max(len(e) for e in excluded) < k:
        raise AsdError(f"{len(x)} training clips are too few to score them leave-one-out with k={k}")
    train_scores = nearest_cosine_distance(bank, x, k, excluded)
    info = MachineDetection("", len(src_idx), len(tgt_idx), sm, 0)
    fitted = FittedSection(bank, bank_domain, k, normalise, train_scores, info, sm, tgt_idx)
    if normalise == "none":
        return fitted

    # the nearest bank point (the first of the k) decides the domain a clip is normalised in
    train_nn = nearest_rows(bank, x, excluded)
    if normalise == "domain-z":
        fitted.train_scores, _, info.normalisation = domain_z(
            train_scores, train.domain, bank_domain[train_nn], np.zeros(0), np.zeros(0, dtype=np.int64)
        )
    else:
        fitted.train_scores, fitted.banks, info.normalisation = local_density(
            x, train.domain, sm, tgt_idx, density_k, train_scores, train_nn
        )
    return fitted


def detect_machine(
    train: Group, test: Group | None, k: int = 1, smote_ratio: float = 1.0, smote_k: int = 5, seed: int = 0,
    normalise: str = "none", density_k: int = 2,
) -> tuple[np.ndarray, np.ndarray | None, MachineDetection]:  # fmt: skip
    """Return (train scores leave-one-out, test scores, what was done) of one machine type."""
    fitted = fit_section(train, k, smote_ratio, smote_k, seed, normalise, density_k)
    info = fitted.info
    test_scores = None
    if test is not None and len(test):
        if test.values.shape[1] != fitted.dim:
            raise AsdError(f"test embeddings have {test.values.shape[1]} dimensions, training ones {fitted.dim}")
        test_scores, nn_domain = fitted.score(test.values)
        info.n_test = len(test)
        if info.normalisation is not None:
            info.normalisation.test_nn_target = int(np.sum(nn_domain == TARGET))
    return fitted.train_scores, test_scores, info


def detect_store(
    store: Store, k: int = 1, smote_ratio: float = 1.0, smote_k: int = 5, seed: int = 0,
    normalise: str = "none", density_k: int = 2,
) -> Detection:  # fmt: skip
    """Return the anomaly scores of every clip of an embedding store (training clips leave-one-out)."""
    if store.kind != EMBEDDINGS:
        raise AsdError(f"is a {store.kind} store, expected an embedding store", store.path)
    if k < 1:
        raise AsdError(f"k must be 1 or more, got {k}")
    if smote_k < 1:
        raise AsdError(f"SMOTE k must be 1 or more, got {smote_k}")
    if not (smote_ratio >= 0 and np.isfinite(smote_ratio)):
        raise AsdError(f"SMOTE ratio must be 0 or more, got {smote_ratio}")
    check_normalisation(normalise, density_k)
    out = Detection()
    for machine in store.machines:
        train, test = store.get(machine, "train"), store.get(machine, "test")
        if train is None or not len(train):
            raise AsdError(f"machine type {machine} has no training embeddings", store.path)
        train_sections = np.array(_sections(train, machine, "train", store.path))
        test_sections = np.array(_sections(test, machine, "test", store.path)) if test is not None else np.array([])
        untrained = sorted(set(test_sections.tolist()) - set(train_sections.tolist()))
        if untrained:
            raise AsdError(f"{machine}: section(s) {', '.join(untrained)} have test clips but no training clips", store.path)
        train_scores = np.zeros(len(train), dtype=np.float64)
        test_scores = np.zeros(0 if test is None else len(test), dtype=np.float64)
        # each section is its own detector: its training clips are the memory bank of its test clips
        for section in sorted(set(train_sections.tolist())):
            tr, te = np.flatnonzero(train_sections == section), np.flatnonzero(test_sections == section)
            where = machine if section == "00" and len(set(train_sections.tolist())) == 1 else f"{machine} section {section}"
            try:
                sec_train, sec_test, info = detect_machine(
                    train.subset(tr), test.subset(te) if len(te) else None, k, smote_ratio, smote_k, seed,
                    normalise, density_k,
                )  # fmt: skip
            except AsdError as exc:
                raise AsdError(f"{where}: {exc.problem}", store.path) from None
            train_scores[tr] = sec_train
            if sec_test is not None:
                test_scores[te] = sec_test
            info.machine = machine if where == machine else f"{machine}/section_{section}"
            out.machines[info.machine] = info
        out.scores[(machine, "train")] = train.with_values(train_scores)
        if test is not None:
            out.scores[(machine, "test")] = test.with_values(test_scores)
    # keep the store's group order
    out.scores = {key: out.scores[key] for key in store.groups if key in out.scores}
    return out


def _sections(group: Group, machine: str, split: str, path) -> list[str]:
    try:
        return group.sections
    except ValueError as exc:
        raise AsdError(f"/{machine}/{split}: {exc}", path) from None


def detect_to_folder(
    embeddings: str | Path, out: str | Path, k: int = 1, smote_ratio: float = 1.0, smote_k: int = 5, seed: int = 0,
    data_root: str | Path | None = None, normalise: str = "none", density_k: int = 2, reading=None,
) -> tuple[Store, Detection]:  # fmt: skip
    """Score every clip of an embedding store and write the score folder `out`; return (store, detection).

    With `data_root`, refuse a store built from another clip list than that data root's. A
    normalisation is recorded in the root attributes of `scores.h5`.
    """
    import shutil

    import h5py

    from asdtool.data import store as stores
    from asdtool.core.atomic import replace_dir, staging_dir
    from asdtool.data import dcase
    from asdtool.evaluate.scorefolder import SCORE_STORE, check_score_folder, write_score_folder

    embeddings, out = Path(embeddings), Path(out)
    check_normalisation(normalise, density_k)
    check_score_folder(out, inputs=[embeddings, data_root])
    emb = stores.read_store(embeddings, EMBEDDINGS)
    if data_root is not None:
        emb.check_clips(stores.clips_sha256(dcase.scan(data_root, emb.machines, reading or dcase.Reading()).clips), data_root)
    result = detect_store(emb, k=k, smote_ratio=smote_ratio, smote_k=smote_k, seed=seed, normalise=normalise,
                          density_k=density_k)  # fmt: skip
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for (machine, split), group in result.scores.items():
        for name, section, score in zip(group.file_names, _sections(group, machine, split, embeddings),
                                        group.values.tolist()):  # fmt: skip
            rows.setdefault((machine, section, split), {})[name] = score
    meta = stores.StoreMeta(
        model=emb.meta.model, checkpoint_sha256=emb.meta.checkpoint_sha256, clips_sha256=emb.meta.clips_sha256
    )
    settings = normalisation_attrs(normalise, density_k)
    if not settings:  # raw distances: the folder of earlier versions, byte for byte
        write_score_folder(out, rows, (meta, result.scores))
        return emb, result
    # stage the folder beside `out`, record the settings in its scores.h5, then swap it in
    stage = staging_dir(out)
    try:
        write_score_folder(stage / out.name, rows, (meta, result.scores))
        with h5py.File(stage / out.name / SCORE_STORE, "r+") as f:
            for key, value in settings.items():
                f.attrs[key] = value
        replace_dir(stage / out.name, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return emb, result


def normalisation_attrs(normalise: str, density_k: int) -> dict[str, str | np.int64]:
    """Return the root attributes of scores.h5 that record a normalisation ({} for none)."""
    if normalise == "none":
        return {}
    attrs: dict[str, str | np.int64] = {"detect_normalise": normalise}
    if normalise == "local-density":
        attrs["detect_density_k"] = np.int64(density_k)
    return attrs
