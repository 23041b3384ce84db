"""Official DCASE 2024 Task 2 metrics, submission files and decision thresholds.

The figures follow the organisers' evaluator: per machine type and section, AUC (source) over the
source-domain normal clips plus all anomalous clips of both domains, AUC (target) likewise, and
pAUC (McClish-standardised, max FPR 0.1) over all clips of the section. The official score is the
harmonic mean of every AUC (source), AUC (target) and pAUC value (each floored at machine epsilon).
Unlike the organisers' script, clips are matched by file name, never by sort order, and a score file
with missing, extra or duplicated clips is refused.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score

from asdtool.core.atomic import atomic_path
from asdtool.data import dcase
from asdtool.data.layouts import section_of
from asdtool.core.errors import AsdError, few

MAX_FPR = 0.1
EPS = sys.float_info.epsilon
DECISION_QUANTILE = 0.9
# the name of a submission score file: score_file_name(machine, section, split) matches it
SCORE_FILE = re.compile(r"^anomaly_score_(?P<machine>.+)_section_(?P<section>\d{2})_(?P<split>test|train)\.csv$")
DECISION_FILE = re.compile(r"^decision_result_(?P<machine>.+)_section_(?P<section>\d{2})_test\.csv$")
_GT_FILE = re.compile(r"^ground_truth_(?P<machine>.+)_section_(?P<section>\d{2})_test\.csv$")
# DCASE 2021: one file per section and domain
_GT_DOMAIN_FILE = re.compile(r"^ground_truth_(?P<machine>.+)_section_(?P<section>\d{2})_(?P<domain>source|target)_test\.csv$")
EVAL_LIST_2020 = "eval_data_list.csv"  # DCASE 2020: one list of every eval clip, machine type by machine type


# --- submission files -------------------------------------------------------------------------


def score_file_name(machine: str, section: str = "00", split: str = "test") -> str:
    """Return the name of the score file of one machine type, section and split (test or train)."""
    return f"anomaly_score_{machine}_section_{section}_{split}.csv"


def decision_file_name(machine: str, section: str = "00") -> str:
    """Return the name of the decision file of one machine type and section's test clips."""
    return f"decision_result_{machine}_section_{section}_test.csv"


def nonblank_rows(f: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, row) of an open CSV file's rows, skipping rows whose cells are all blank.

    Line numbers count from 1 as csv.reader yields rows, the skipped rows included.
    """
    for line_no, row in enumerate(csv.reader(f), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        yield line_no, row


def read_score_csv(path: str | Path) -> dict[str, float]:
    """Return {file_name: score} of an official score file (`file_name,score` rows, no header)."""
    path = Path(path)
    if not path.is_file():
        raise AsdError("score file does not exist", path)
    scores: dict[str, float] = {}
    duplicates: list[str] = []
    bad: list[str] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line_no, row in nonblank_rows(f):
                if len(row) != 2:
                    raise AsdError(f"line {line_no} has {len(row)} fields, expected file_name,score", path)
                name, text = row[0].strip(), row[1].strip()
                try:
                    value = float(text)
                except ValueError:
                    raise AsdError(f"line {line_no}: score {text!r} of {name} is not a number", path) from None
                if not math.isfinite(value):
                    bad.append(name)
                if name in scores:
                    duplicates.append(name)
                scores[name] = value
    except (OSError, UnicodeDecodeError) as exc:
        raise AsdError(f"cannot read score file ({exc.__class__.__name__})", path) from None
    if duplicates:
        raise AsdError(f"duplicated clips: {few(duplicates)}", path)
    if bad:
        raise AsdError(f"non-finite scores for {few(bad)}", path)
    if not scores:
        raise AsdError("score file is empty", path)
    return scores


def write_score_csv(path: str | Path, scores: Mapping[str, float] | Iterable[tuple[str, float]]) -> None:
    """Write an official score (or decision) file atomically, rows in the given order."""
    items = list(scores.items()) if isinstance(scores, Mapping) else list(scores)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            for name, value in items:
                writer.writerow([name, value if isinstance(value, (int, np.integer)) else repr(float(value))])


# --- ground truth -----------------------------------------------------------------------------


@dataclass
class SectionTruth:
    """Labels (0 normal, 1 anomaly) and domains (0 source, 1 target) of one section's test clips."""

    machine: str
    section: str
    label: dict[str, int]
    domain: dict[str, int]
    aliases: dict[str, str] = field(default_factory=dict)  # other accepted names -> ground-truth name
    source: str = ""  # where the truth came from, for messages


def truth_from_dataset(dataset: dcase.Dataset) -> list[SectionTruth]:
    """Return the ground truth that dev test-clip names carry, one entry per machine and section."""
    out: list[SectionTruth] = []
    for machine in dataset.machines:
        clips = dataset.select(machine, "test")
        for section in sorted({c.section for c in clips}):
            sec = [c for c in clips if c.section == section]
            unlabeled = [c.file_name for c in sec if c.label == dcase.UNKNOWN or c.domain is None]
            if unlabeled:
                raise AsdError(
                    f"test clips carry no labels (eval names such as {unlabeled[0]}); use --ground-truth",
                    dataset.root / machine / "test",
                )
            out.append(
                SectionTruth(
                    machine=machine,
                    section=section,
                    label={c.file_name: c.label for c in sec},
                    domain={c.file_name: c.domain_id for c in sec},
                    source=str(dataset.root / machine / "test"),
                )
            )
    if not out:
        raise AsdError("no labelled test clips found", dataset.root)
    return out


def _read_truth_csv(path: Path, allowed: set[str]) -> dict[str, int]:
    if not path.is_file():
        raise AsdError("ground-truth file does not exist", path)
    out: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 2 or row[1].strip() not in allowed:
                raise AsdError(f"line {line_no} is not file_name,{'|'.join(sorted(allowed))}", path)
            if row[0] in out:
                raise AsdError(f"clip {row[0]} is listed twice", path)
            out[row[0]] = int(row[1])
    return out


def truth_from_folder(folder: str | Path) -> list[SectionTruth]:
    """Return the ground truth of the organisers' evaluator layout, any year.

    2022 on: `folder` holds ground_truth_data/ (file_name,label), ground_truth_domain/ (file_name,domain)
    and, where eval clips were renamed, ground_truth_attributes/ (eval name, renamed stem, name with
    attributes). 2021: ground_truth_data/ holds one file per section and domain. 2020: eval_data_list.csv.
    """
    folder = Path(folder)
    data_dir, domain_dir, attr_dir = (folder / n for n in ("ground_truth_data", "ground_truth_domain", "ground_truth_attributes"))
    if not data_dir.is_dir() and (folder / EVAL_LIST_2020).is_file():
        return _truth_from_eval_list(folder / EVAL_LIST_2020)
    if not data_dir.is_dir():
        raise AsdError(f"ground-truth folder has no ground_truth_data/ folder (nor a 2020 {EVAL_LIST_2020})", folder)
    if any(_GT_DOMAIN_FILE.match(p.name) for p in data_dir.iterdir()):
        return _truth_by_domain_files(data_dir)
    if not domain_dir.is_dir():
        raise AsdError("ground-truth folder has no ground_truth_domain/ folder", folder)
    out: list[SectionTruth] = []
    for path in sorted(data_dir.iterdir()):
        m = _GT_FILE.match(path.name)
        if not m:
            continue
        label = _read_truth_csv(path, {"0", "1"})
        domain = _read_truth_csv(domain_dir / path.name, {"0", "1"})
        if set(label) != set(domain):
            diff = set(label) ^ set(domain)
            raise AsdError(f"lists other clips than {path} ({few(diff)})", domain_dir / path.name)
        aliases: dict[str, str] = {}
        attr_path = attr_dir / path.name
        if attr_path.is_file():
            with open(attr_path, newline="", encoding="utf-8") as f:
                for row in csv.reader(f):
                    if not row or row[0] not in label:
                        continue
                    for other in row[1:]:
                        other = other if other.endswith(".wav") else f"{other}.wav"
                        aliases[other] = row[0]
        out.append(SectionTruth(m["machine"], m["section"], label, domain, aliases, str(path)))
    if not out:
        raise AsdError("no ground_truth_<machine>_section_NN_test.csv files found", data_dir)
    return out


def _truth_by_domain_files(data_dir: Path) -> list[SectionTruth]:
    """DCASE 2021: ground_truth_<machine>_section_NN_<source|target>_test.csv, rows file_name,label."""
    sections: dict[tuple[str, str], SectionTruth] = {}
    for path in sorted(data_dir.iterdir()):
        m = _GT_DOMAIN_FILE.match(path.name)
        if not m:
            continue
        key = (m["machine"], m["section"])
        truth = sections.setdefault(key, SectionTruth(*key, {}, {}, source=str(data_dir)))
        for name, label in _read_truth_csv(path, {"0", "1"}).items():
            if name in truth.label:
                raise AsdError(f"clip {name} is listed in both domains' files", path)
            truth.label[name] = label
            truth.domain[name] = 0 if m["domain"] == "source" else 1
    return list(sections.values())


def _truth_from_eval_list(path: Path) -> list[SectionTruth]:
    """DCASE 2020: a machine-type line, then eval_name,renamed_name,label rows; the machine ID is the section."""
    sections: dict[tuple[str, str], SectionTruth] = {}
    machine = None
    for line_no, row in enumerate(dcase.read_csv_rows(path, "2020 eval list"), start=1):
        if not row or not any(row):
            continue
        if len(row) == 1:
            machine = row[0].strip()
            continue
        if machine is None or len(row) < 3 or row[2].strip() not in ("0", "1"):
            raise AsdError(f"line {line_no} is not a machine-type line or eval_name,renamed_name,0|1", path)
        name = row[0].strip()
        try:
            section = section_of(name)
        except ValueError as exc:
            raise AsdError(f"line {line_no}: {exc}", path) from None
        truth = sections.setdefault((machine, section), SectionTruth(machine, section, {}, {}, source=str(path)))
        if name in truth.label:
            raise AsdError(f"clip {name} is listed twice", path)
        truth.label[name], truth.domain[name] = int(row[2]), 0
        renamed = row[1].strip()
        truth.aliases[renamed if renamed.endswith(".wav") else f"{renamed}.wav"] = name
    if not sections:
        raise AsdError("lists no eval clips", path)
    return list(sections.values())


# --- metrics ----------------------------------------------------------------------------------


@dataclass
class SectionResult:
    """AUC (source), AUC (target) and pAUC of one machine type and section, each in [0, 1]."""

    machine: str
    section: str
    auc_source: float
    auc_target: float | None  # None: the section has no target-domain clips (DCASE 2020)
    pauc: float


def align_scores(truth: SectionTruth, scores: Mapping[str, float], path: str | Path) -> np.ndarray:
    """Return the scores in the ground truth's clip order; refuse missing or extra clips."""
    by_truth: dict[str, float] = {}
    extra: list[str] = []
    duplicated: list[str] = []
    for name, value in scores.items():
        key = name if name in truth.label else truth.aliases.get(name)
        if key is None:
            extra.append(name)
        elif key in by_truth:
            duplicated.append(name)
        else:
            by_truth[key] = value
    if extra:
        raise AsdError(f"scores clips not in the ground truth: {few(extra)}", path)
    if duplicated:
        raise AsdError(f"scores the same clip under two names: {few(duplicated)}", path)
    missing = [n for n in truth.label if n not in by_truth]
    if missing:
        raise AsdError(f"misses {len(missing)} clip(s) of the ground truth: {few(missing)}", path)
    return np.array([by_truth[n] for n in truth.label], dtype=np.float64)


def section_metrics(y_true: np.ndarray, y_score: np.ndarray, domain: np.ndarray) -> tuple[float, float | None, float]:
    """Return (AUC source, AUC target, pAUC) of one section, as the official evaluator computes them.

    A section without target-domain clips (DCASE 2020 has no domains; its clips count as source) has
    AUC target None, and the means leave it out: 2020's figures are AUC and pAUC per machine ID.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    domain = np.asarray(domain)
    out = []
    for d in (0, 1):
        if d == 1 and not np.any(domain == 1):
            out.append(None)
            continue
        keep = (domain == d) | (y_true != 0)
        out.append(_auc(y_true[keep], y_score[keep]))
    out.append(_auc(y_true, y_score, max_fpr=MAX_FPR))
    return out[0], out[1], out[2]


def _auc(y: np.ndarray, s: np.ndarray, max_fpr: float | None = None) -> float:
    if len(np.unique(y)) != 2:
        raise AsdError("a section needs both normal and anomalous test clips in each domain to compute AUC")
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def hmean(values: Sequence[float]) -> float:
    """Return the harmonic mean with each value floored at machine epsilon, as the organisers do."""
    return float(scipy.stats.hmean(np.maximum(np.asarray(values, dtype=np.float64), EPS), axis=None))


def evaluate_sections(truths: Sequence[SectionTruth], score_dir: str | Path) -> list[SectionResult]:
    """Return the metrics of every section, reading `anomaly_score_<machine>_section_NN_test.csv` files."""
    score_dir = Path(score_dir)
    if not score_dir.is_dir():
        raise AsdError("score folder does not exist", score_dir)
    check_score_folder(truths, score_dir)
    # read and check every file before computing anything
    aligned = []
    for t in truths:
        path = score_dir / score_file_name(t.machine, t.section)
        aligned.append((t, align_scores(t, read_score_csv(path), path)))
    return [_section_result(t, s) for t, s in aligned]


def check_score_folder(truths: Sequence[SectionTruth], score_dir: str | Path) -> None:
    """Refuse a test score file in `score_dir` whose machine type and section the ground truth lacks.

    Only `anomaly_score_<machine>_section_NN_test.csv` names count; other files (training-clip
    scores, decision files, scores.h5, ...) are left alone.
    """
    known: dict[str, set[str]] = {}
    for t in truths:
        known.setdefault(t.machine, set()).add(t.section)
    for path in sorted(Path(score_dir).iterdir()):
        m = SCORE_FILE.match(path.name)
        if not m or m["split"] != "test" or m["section"] in known.get(m["machine"], ()):
            continue
        machine, section = m["machine"], m["section"]
        if machine in known:
            hint = f"known sections of {machine}: {', '.join(sorted(known[machine]))}"
        else:
            hint = f"known: {', '.join(sorted(known, key=str.lower))}"
        raise AsdError(f"machine type {machine!r} section {section} is not in the ground truth ({hint})", path)


def evaluate_scores(truths: Sequence[SectionTruth], scores: Mapping[str, Mapping[str, float]]) -> list[SectionResult]:
    """Return the metrics of every section from in-memory scores {machine: {file_name: score}}."""
    aligned = []
    for t in truths:
        if t.machine not in scores:
            raise AsdError(f"no scores for machine type {t.machine}")
        section_scores = {n: v for n, v in scores[t.machine].items() if n in t.label or n in t.aliases}
        aligned.append((t, align_scores(t, section_scores, f"scores of {t.machine}")))
    return [_section_result(t, s) for t, s in aligned]


def _section_result(t: SectionTruth, s: np.ndarray) -> SectionResult:
    y = np.array([t.label[n] for n in t.label])
    d = np.array([t.domain[n] for n in t.label])
    try:
        a_s, a_t, p = section_metrics(y, s, d)
    except AsdError as exc:
        raise AsdError(exc.problem, t.source) from None
    return SectionResult(t.machine, t.section, a_s, a_t, p)


def summarize(results: Sequence[SectionResult]) -> dict:
    """Return the metrics.json dict: official score, means, and per machine AUCs, pAUC and hmean."""
    if not results:
        raise AsdError("nothing to summarise: no sections were evaluated")
    auc_s = [r.auc_source for r in results]
    auc_t = [r.auc_target for r in results if r.auc_target is not None]  # none for sections without domains
    pauc = [r.pauc for r in results]
    machines: dict[str, dict[str, float | None]] = {}
    for machine in dict.fromkeys(r.machine for r in results):
        rs = [r for r in results if r.machine == machine]
        targets = [r.auc_target for r in rs if r.auc_target is not None]
        values = [r.auc_source for r in rs] + targets + [r.pauc for r in rs]
        machines[machine] = {
            "auc_source": float(np.mean([r.auc_source for r in rs])),
            "auc_target": float(np.mean(targets)) if targets else None,
            "pauc": float(np.mean([r.pauc for r in rs])),
            "hmean": hmean(values),
        }
    all_values = auc_s + auc_t + pauc
    return {
        "official_score": hmean(all_values),
        "arithmetic_mean": float(np.mean(all_values)),
        "hmean_auc_source": hmean(auc_s),
        "hmean_auc_target": hmean(auc_t) if auc_t else None,
        "hmean_pauc": hmean(pauc),
        "machines": machines,
    }


def roc_points(truths: Sequence[SectionTruth], score_dir: str | Path) -> dict[str, np.ndarray]:
    """Return {machine: [[fpr, tpr], ...]} of the ROC curve over all test clips of each machine type."""
    from sklearn.metrics import roc_curve

    out: dict[str, np.ndarray] = {}
    for machine in dict.fromkeys(t.machine for t in truths):
        ys, ss = [], []
        for t in (t for t in truths if t.machine == machine):
            path = Path(score_dir) / score_file_name(t.machine, t.section)
            ss.append(align_scores(t, read_score_csv(path), path))
            ys.append(np.array([t.label[n] for n in t.label]))
        fpr, tpr, _ = roc_curve(np.concatenate(ys), np.concatenate(ss))
        out[machine] = np.stack([fpr, tpr], axis=1)
    return out


# --- decisions --------------------------------------------------------------------------------


def decision_threshold(train_scores: Sequence[float], quantile: float = DECISION_QUANTILE) -> float:
    """Return the baseline's threshold: the `quantile` of a gamma distribution fitted to training-clip scores."""
    s = np.asarray(train_scores, dtype=np.float64)
    if s.size < 3 or not np.all(np.isfinite(s)):
        raise AsdError("a decision threshold needs at least 3 finite training-clip scores")
    if np.ptp(s) == 0:
        return float(s[0])
    shape, loc, scale = scipy.stats.gamma.fit(s)
    return float(scipy.stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))


def decide(scores: Mapping[str, float], threshold: float) -> dict[str, int]:
    """Return {file_name: 1 if anomalous else 0}: a clip is anomalous when its score exceeds the threshold."""
    return {name: int(value > threshold) for name, value in scores.items()}
