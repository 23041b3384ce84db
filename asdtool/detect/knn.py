"""The AITHU detector: L2-normalised embeddings, SMOTE over the target domain, k-NN cosine distance.

Per machine type, the memory bank holds the source-domain training embeddings plus the target-domain
ones, oversampled with SMOTE so the two domains weigh the same (the paper's domain equalisation). The
anomaly score of a clip is its cosine distance to the nearest bank embedding (k = 1 in the paper; with
k > 1 the mean over the k nearest). Training clips are scored leave-one-out (their own embedding and
the synthetic points SMOTE made from it do not count), so decision thresholds can be fitted on them.

The scores can be normalised domain-wise (`asdtool.detect.normalise`). With a normalisation, detect
records it in the root attributes of `scores.h5` (`detect_normalise`, and `detect_density_k` for
local-density); without, `scores.h5` is unchanged (no attribute: none). What the detector is told
comes as one `DetectorSettings` (`asdtool.detect.settings`), checked when it was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asdtool.core.errors import AsdError
from asdtool.core.vectors import l2_normalise, nearest_cosine_distance
from asdtool.data.store import EMBEDDINGS, Group, Store
from asdtool.detect.normalise import (
    SCALE_FLOOR, DensityBanks, Normalisation, density_radius, domain_z, fallback_note, local_density, nearest_rows,
)  # fmt: skip
from asdtool.detect.settings import DetectorSettings
from asdtool.detect.smote import SOURCE, TARGET, SmoteResult, smote_target_domain

__all__ = ["SOURCE", "TARGET", "Detection", "FittedSection", "MachineDetection", "detect_machine", "detect_store",
           "detect_to_folder", "fit_section"]


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
        """Points in the memory bank: the source clips, the target clips and SMOTE's."""
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
    banks: DensityBanks | None = None  # local-density

    @property
    def dim(self) -> int:
        """The embedding dimension the bank holds."""
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
        r = np.array([density_radius(self.banks, self.smote, self.tgt_idx, int(j)) for j in nn], dtype=np.float64)
        self.info.normalisation.fallback = fallback_note(self.banks.fell_back)
        return raw / np.maximum(r, SCALE_FLOOR), nn_domain


def fit_section(train: Group, settings: DetectorSettings = DetectorSettings()) -> FittedSection:
    """Return the detector of one machine type (or section) fitted on its training embeddings."""
    k, normalise = settings.k, settings.normalise
    x = l2_normalise(train.values)  # (N, D)
    if np.any(train.domain == -1):
        raise AsdError("training clips of unknown domain: cannot split source from target")
    src_idx = np.flatnonzero(train.domain == SOURCE)
    tgt_idx = np.flatnonzero(train.domain == TARGET)
    sm = smote_target_domain(x[src_idx], x[tgt_idx], settings.smote_ratio, settings.smote_k, settings.seed)
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
            x, train.domain, sm, tgt_idx, settings.density_k, train_scores, train_nn
        )
    return fitted


def detect_machine(
    train: Group, test: Group | None, settings: DetectorSettings = DetectorSettings()
) -> tuple[np.ndarray, np.ndarray | None, MachineDetection]:
    """Return (train scores leave-one-out, test scores, what was done) of one machine type."""
    fitted = fit_section(train, settings)
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


def detect_store(store: Store, settings: DetectorSettings = DetectorSettings()) -> Detection:
    """Return the anomaly scores of every clip of an embedding store (training clips leave-one-out)."""
    if store.kind != EMBEDDINGS:
        raise AsdError(f"is a {store.kind} store, expected an embedding store", store.path)
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
                sec_train, sec_test, info = detect_machine(train.subset(tr), test.subset(te) if len(te) else None,
                                                           settings)  # fmt: skip
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
    embeddings: str | Path, out: str | Path, settings: DetectorSettings = DetectorSettings(),
    data_root: str | Path | None = None, reading=None,
) -> tuple[Store, Detection]:
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
    check_score_folder(out, inputs=[embeddings, data_root])
    emb = stores.read_store(embeddings, EMBEDDINGS)
    if data_root is not None:
        emb.check_clips(stores.clips_sha256(dcase.scan(data_root, emb.machines, reading or dcase.Reading()).clips), data_root)
    result = detect_store(emb, settings)
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for (machine, split), group in result.scores.items():
        for name, section, score in zip(group.file_names, _sections(group, machine, split, embeddings),
                                        group.values.tolist()):  # fmt: skip
            rows.setdefault((machine, section, split), {})[name] = score
    meta = stores.StoreMeta(
        model=emb.meta.model, checkpoint_sha256=emb.meta.checkpoint_sha256, clips_sha256=emb.meta.clips_sha256
    )
    attrs = settings.score_attrs()
    if not attrs:  # raw distances: the folder of earlier versions, byte for byte
        write_score_folder(out, rows, (meta, result.scores))
        return emb, result
    # stage the folder beside `out`, record the settings in its scores.h5, then swap it in
    stage = staging_dir(out)
    try:
        write_score_folder(stage / out.name, rows, (meta, result.scores))
        with h5py.File(stage / out.name / SCORE_STORE, "r+") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
        replace_dir(stage / out.name, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return emb, result

