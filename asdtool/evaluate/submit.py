"""DCASE Task 2 challenge submissions: write the folder of one system, and check a folder.

A submission folder `submission/<label>/` holds, for every machine type and section of the eval test
clips, two files without header, one row per test clip in clip-name order:

    anomaly_score_<machine>_section_<ss>_test.csv     <wav file name>,<score>
    decision_result_<machine>_section_<ss>_test.csv   <wav file name>,<0|1>     (1: anomalous)

plus `<label>.meta.yaml`, shaped like the challenge's meta file (submission, system, results). A clip
is anomalous when its score exceeds the `decision_quantile` of a gamma distribution fitted to the
section's training-clip scores (the organisers' baseline rule, `metrics.decision_threshold`).

The folder is written beside its target, checked by the same code as `asdtool submit --check`, and
renamed into place only when valid; every input is read and checked before anything is written.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from asdtool.core import outputs
from asdtool.evaluate import metrics
from asdtool.core.atomic import atomic_dir
from asdtool.data import dcase
from asdtool.core.errors import AsdError, few, quote
from asdtool.core.safeparse import read_json, read_yaml

META_SUFFIX = ".meta.yaml"
# the organisers' submission label: Lastname_Institute_task2_N, N the submission index (at most four per team)
LABEL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9-]*_[A-Za-z0-9-]+_task2_[1-4]$")
# system.description of the challenge's meta file; year-specific extra fields given are kept too
DESCRIPTION_FIELDS = (
    "input_sampling_rate", "acoustic_features", "data_augmentation", "front_end", "embeddings",
    "machine_learning_method", "ensemble_method_subsystem_count", "decision_making", "external_data_usage",
)  # fmt: skip
AFFILIATION_FIELDS = ("abbreviation", "institute", "department", "location")
AUTHOR_FIELDS = ("lastname", "firstname", "email", "corresponding", "affiliation")
DEV_FIELDS = ("auc_source", "auc_target", "pauc")  # per machine type, in percent as the results tables

Key = tuple[str, str]  # (machine, section)


@dataclass
class SectionSummary:
    """One machine type and section of a submission: its clips, threshold and clips decided anomalous."""

    machine: str
    section: str
    clips: int
    anomalous: int
    threshold: float | None = None  # the fitted threshold; None when only the files are known
    # what the files say of the threshold: (highest score decided normal, lowest decided anomalous)
    bounds: tuple[float | None, float | None] = (None, None)

    @property
    def anomalous_share(self) -> float:
        """Return the fraction of the section's clips decided anomalous; 0.0 for a section without clips."""
        return self.anomalous / self.clips if self.clips else 0.0


@dataclass
class CheckResult:
    """The problems of a submission folder (one line each, naming the file) and its sections when valid."""

    folder: Path
    label: str
    problems: list[str] = field(default_factory=list)
    sections: list[SectionSummary] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Return whether the folder has no problems."""
        return not self.problems


@dataclass
class Submission:
    """What `write_submission` wrote."""

    folder: Path
    label: str
    sections: list[SectionSummary]
    meta: dict


# --- the eval root -----------------------------------------------------------------------------


def eval_sections(data_root: str | Path, reading: dcase.Reading = dcase.Reading()) -> dict[Key, list[str]]:
    """Return {(machine, section): test-clip file names in name order} of a data root."""
    dataset = dcase.scan(data_root, reading=reading)
    found: dict[Key, list[str]] = {}
    for machine in dataset.machines:
        for clip in dataset.select(machine, "test"):
            found.setdefault((machine, clip.section), []).append(clip.file_name)
    if not found:
        raise AsdError("holds no test clips (<machine>/test/section_NN_NNNN.wav)", data_root)
    return {key: sorted(found[key]) for key in sorted(found, key=lambda k: (k[0].lower(), k[0], k[1]))}


# --- the meta file -----------------------------------------------------------------------------


def meta_template(label: str) -> dict:
    """Return the meta document with every field the challenge asks for, unknown values as empty strings."""
    return {
        "submission": {
            "label": label,
            "name": "",
            "abbreviation": "",
            "authors": [_blank_author()],
        },
        "system": {
            "description": {name: "" for name in DESCRIPTION_FIELDS},
            "complexity": {"total_parameters": ""},
            "source_code": "",
        },
        "results": {"development_dataset": {}},
    }


def _blank_author() -> dict:
    author: dict[str, Any] = {name: "" for name in AUTHOR_FIELDS}
    author["affiliation"] = {name: "" for name in AFFILIATION_FIELDS}
    return author


def label_problem(label: str) -> str | None:
    """Return why `label` is not a submission label of the organisers' pattern, or None when it is one."""
    if LABEL_PATTERN.fullmatch(label):
        return None
    return (f"submission label {quote(label)} is not of the organisers' form Lastname_Institute_task2_N, N the "
            f"submission index 1-4 ({LABEL_PATTERN.pattern})")


def read_meta_params(path: str | Path) -> dict:
    """Return the meta values of a YAML file shaped like the meta file (submission:, system:)."""
    path = Path(path)
    doc = read_yaml(path, what="meta params file")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise AsdError("is not a mapping of submission: and system: values", path)
    return doc


def meta_document(label: str, values: Mapping[str, Any], dev: Mapping[str, Any] | None = None,
                  source: str | Path | None = None) -> dict:  # fmt: skip
    """Return the meta document: the template filled with `values` (from `source`) and the dev results.

    The identity blocks (submission, authors, affiliation) take only the template's fields; system's
    blocks also keep fields the template lacks, since the challenge's description fields change by year.
    """
    doc = meta_template(label)
    strangers = [k for k in values if k not in ("submission", "system")]
    if strangers:
        raise AsdError(f"has unknown top-level key {few(strangers)} (known: submission, system; results "
                       "come from --dev-metrics)", source)  # fmt: skip
    submission = _mapping(values.get("submission"), "submission", source)
    for key, value in submission.items():
        if key == "label":
            if str(value) != label:
                raise AsdError(f"submission.label {quote(value)} differs from the submission's label {quote(label)} "
                               "(the --out folder's name)", source)  # fmt: skip
        elif key == "authors":
            if not isinstance(value, list) or not value:
                raise AsdError("submission.authors: expected a list of authors (lastname, firstname, ...)", source)
            authors = [_author(a, f"submission.authors[{i}]", source) for i, a in enumerate(value)]
            doc["submission"]["authors"] = authors
        elif key in doc["submission"]:
            doc["submission"][key] = _scalar(value, f"submission.{key}", source)
        else:
            known = ", ".join(doc["submission"])
            raise AsdError(f"submission.{key} is not a field of the meta file (known: {known})", source)
    system = _mapping(values.get("system"), "system", source)
    for key, value in system.items():
        if key in ("description", "complexity"):
            block = doc["system"][key]
            for name, item in _mapping(value, f"system.{key}", source).items():
                block[name] = _scalar(item, f"system.{key}.{name}", source) if name in block else item
        elif key == "source_code":
            doc["system"][key] = _scalar(value, "system.source_code", source)
        else:
            doc["system"][key] = value  # e.g. external_datasets, kept as given
    if dev is not None:
        doc["results"]["development_dataset"] = dict(dev)
    return doc


def _author(value: Any, where: str, source: str | Path | None) -> dict:
    author = _blank_author()
    for key, item in _mapping(value, where, source).items():
        if key not in author:
            raise AsdError(f"{where}.{key} is not a field of an author (known: {', '.join(AUTHOR_FIELDS)})", source)
        if key == "affiliation":
            for name, part in _mapping(item, f"{where}.affiliation", source).items():
                if name not in AFFILIATION_FIELDS:
                    raise AsdError(f"{where}.affiliation.{name} is not a field of an affiliation (known: "
                                   f"{', '.join(AFFILIATION_FIELDS)})", source)  # fmt: skip
                author["affiliation"][name] = _scalar(part, f"{where}.affiliation.{name}", source)
        else:
            author[key] = _scalar(item, f"{where}.{key}", source)
    return author


def _mapping(value: Any, where: str, source: str | Path | None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AsdError(f"{where}: expected a mapping of fields, got {quote(value)}", source)
    return value


def _scalar(value: Any, where: str, source: str | Path | None) -> Any:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise AsdError(f"{where}: expected a single value, got {quote(value)}", source)
    return value


def read_dev_metrics(path: str | Path) -> dict:
    """Return the results.development_dataset block from an `asdtool evaluate --out` JSON, in percent.

    Per machine type its AUC (source), AUC (target) and pAUC (the JSON's means over the type's sections,
    one section per type since DCASE 2023), then the official score.
    """
    path = Path(path)
    doc = read_json(path, what="dev metrics file")
    machines = doc.get("machines") if isinstance(doc, dict) else None
    if not isinstance(machines, dict) or not machines or not _is_number(doc.get("official_score")):
        raise AsdError("is not a metrics file of asdtool evaluate --out (it needs official_score and machines)", path)
    out: dict[str, Any] = {}
    for machine, values in machines.items():
        if not isinstance(values, dict):
            raise AsdError(f"machines.{_short(machine)} is not a mapping of metrics", path)
        for key in DEV_FIELDS:
            if key not in values or not (values[key] is None or _is_number(values[key])):  # null: no target domain
                raise AsdError(f"machines.{_short(machine)}.{key} is missing or not a number", path)
        out[machine] = {key: None if values[key] is None else _percent(values[key]) for key in DEV_FIELDS}
    out["official_score"] = _percent(doc["official_score"])  # DCASE machine type names hold no "_"
    return out


def _short(name: str, limit: int = 80) -> str:
    """Return a key of the user's file cut to `limit` characters, for a message."""
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _percent(value: float) -> float:
    return round(100.0 * float(value), 6)  # beyond 1e-6 % the digits are float noise


# --- writing -----------------------------------------------------------------------------------


def _meta_file_of_ours(path: Path) -> bool:
    """Return whether a file reads as a meta file submit writes: its first line opens the submission mapping."""
    return outputs.first_line(path) == "submission:"


SUBMISSION_ENTRY = outputs.any_of(  # what a submission folder holds, each by its name and its content
    outputs.named(lambda n: bool((m := metrics.SCORE_FILE.match(n)) and m["split"] == "test"), outputs.SCORE_LINES),
    outputs.named(lambda n: bool(metrics.DECISION_FILE.match(n)), outputs.DECISION_LINES),
    outputs.named(lambda n: n.endswith(META_SUFFIX), outputs.Kind("a meta file", _meta_file_of_ours)),
)


def write_submission(scores: str | Path, data_root: str | Path, out: str | Path, label: str | None = None,
                     decision_quantile: float = metrics.DECISION_QUANTILE, meta_params: str | Path | None = None,
                     dev_metrics: str | Path | None = None, force: bool = False,
                     reading: dcase.Reading = dcase.Reading()) -> Submission:  # fmt: skip
    """Return the submission written to `out`: score and decision files of every eval section and the meta file.

    `scores` holds `anomaly_score_<machine>_section_<ss>_{test,train}.csv` of every machine type and
    section with test clips under `data_root`; the test files must score exactly those clips.
    """
    out, scores = Path(out), Path(scores)
    label = label or out.name
    if label != out.name:
        raise AsdError(f"--label {quote(label)} differs from the --out folder's name {quote(out.name)}; a submission "
                       "folder is named by its label")  # fmt: skip
    problem = label_problem(label)
    if problem:
        raise AsdError(problem, out)
    if not 0.0 < decision_quantile < 1.0:
        raise AsdError(f"--decision-quantile must lie in (0, 1), got {decision_quantile}")
    if (out.exists() or out.is_symlink()) and not force:
        raise AsdError("exists; give --force to replace it", out)
    outputs.check_folder(out, SUBMISSION_ENTRY, inputs=[scores, data_root, meta_params, dev_metrics])
    if not scores.is_dir():
        raise AsdError("score folder does not exist", scores)
    sections = eval_sections(data_root, reading)
    meta = meta_document(label, read_meta_params(meta_params) if meta_params else {},
                         read_dev_metrics(dev_metrics) if dev_metrics else None, meta_params)  # fmt: skip

    rows: dict[Key, tuple[dict[str, float], dict[str, int]]] = {}
    summaries: list[SectionSummary] = []
    for (machine, section), names in sections.items():
        test_path = scores / metrics.score_file_name(machine, section)
        train_path = scores / metrics.score_file_name(machine, section, "train")
        if not test_path.is_file():
            raise AsdError(f"has no test-clip scores of {machine} section {section} ({test_path.name})", scores)
        if not train_path.is_file():
            raise AsdError(f"has no training-clip scores of {machine} section {section} ({train_path.name}), "
                           "which its decision threshold is fitted to", scores)  # fmt: skip
        test = metrics.read_score_csv(test_path)
        _same_clips(test, names, test_path, Path(data_root) / machine / "test")
        train = list(metrics.read_score_csv(train_path).values())
        if len(train) < 3:
            raise AsdError(f"holds {len(train)} training-clip score(s); the gamma fit of the decision threshold "
                           "needs at least 3", train_path)  # fmt: skip
        threshold = metrics.decision_threshold(train, decision_quantile)
        if not math.isfinite(threshold):
            raise AsdError(f"the gamma fit of its training-clip scores gave no threshold ({threshold})", train_path)
        scored = {name: test[name] for name in names}
        decided = metrics.decide(scored, threshold)
        rows[(machine, section)] = (scored, decided)
        summaries.append(SectionSummary(machine, section, len(names), sum(decided.values()), threshold,
                                        _bounds(scored, decided)))  # fmt: skip

    import yaml

    class MetaDumper(yaml.SafeDumper):
        """A safe YAML dumper that writes no anchors or aliases."""

        def ignore_aliases(self, data):  # a value given twice is written twice: the check refuses aliases
            """Return True: every value is written out in full, never as an alias."""
            return True

    with atomic_dir(out) as tmp:
        for (machine, section), (scored, decided) in rows.items():
            metrics.write_score_csv(tmp / metrics.score_file_name(machine, section), scored)
            metrics.write_score_csv(tmp / metrics.decision_file_name(machine, section), decided)
        text = yaml.dump(meta, Dumper=MetaDumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
        (tmp / f"{label}{META_SUFFIX}").write_text(text, encoding="utf-8")
        check = check_folder(tmp, label, sections)
        if check.problems:  # a bug of this module, never of the inputs (they were checked above)
            raise AsdError(f"the written submission fails its check ({len(check.problems)} problem(s)), the first: "
                           f"{check.problems[0]}", out)  # fmt: skip
    return Submission(out, label, summaries, meta)


def _same_clips(scored: Mapping[str, float], names: list[str], path: Path, where: Path) -> None:
    missing = [n for n in names if n not in scored]
    if missing:
        raise AsdError(f"lacks {len(missing)} eval test clip(s) of {where}: {few(missing)}", path)
    extra = set(scored) - set(names)
    if extra:
        raise AsdError(f"scores {len(extra)} clip(s) that {where} lacks: {few(extra)}", path)


def _bounds(scores: Mapping[str, float], decisions: Mapping[str, int]) -> tuple[float | None, float | None]:
    normal = [scores[n] for n, d in decisions.items() if d == 0]
    anomalous = [scores[n] for n, d in decisions.items() if d == 1]
    return (max(normal) if normal else None, min(anomalous) if anomalous else None)


# --- checking ----------------------------------------------------------------------------------


def check_submission(folder: str | Path, data_root: str | Path, reading: dcase.Reading = dcase.Reading()) -> CheckResult:
    """Return every problem of a submission folder against the test clips of `data_root` (none: valid)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AsdError("submission folder does not exist", folder)
    result = check_folder(folder, folder.name, eval_sections(data_root, reading))
    problem = label_problem(folder.name)
    if problem:
        result.problems.insert(0, f"{folder}: {problem}")
    return result


def check_folder(folder: Path, label: str, sections: Mapping[Key, list[str]]) -> CheckResult:
    """Return the problems of `folder` as the submission `label` of `sections`' test clips.

    Each eval clip must appear exactly once in its section's score and decision files; no other clip,
    file or duplicate row; every score finite, every decision 0 or 1; `<label>.meta.yaml` parses and
    its submission.label is `label`.
    """
    result = CheckResult(folder, label)
    meta_name = f"{label}{META_SUFFIX}"
    wanted = {meta_name}
    for machine, section in sections:
        wanted |= {metrics.score_file_name(machine, section), metrics.decision_file_name(machine, section)}
    for path in sorted(folder.iterdir()):
        if path.name not in wanted:
            result.problems.append(f"{path}: {_why_extra(path, meta_name)}")
    for (machine, section), names in sections.items():
        what = f"{machine} section {section}"
        scores = _check_rows(folder / metrics.score_file_name(machine, section), names, what, _score, result.problems)
        decisions = _check_rows(folder / metrics.decision_file_name(machine, section), names, what, _decision,
                                result.problems)  # fmt: skip
        if scores is not None and decisions is not None and len(scores) == len(decisions) == len(names):
            result.sections.append(SectionSummary(machine, section, len(names), sum(decisions.values()),
                                                  bounds=_bounds(scores, decisions)))  # fmt: skip
    result.problems += _check_meta(folder / meta_name, label)
    return result


def _why_extra(path: Path, meta_name: str) -> str:
    if path.is_dir():
        return "is a folder; a submission holds only its files"
    m = metrics.SCORE_FILE.match(path.name) or metrics.DECISION_FILE.match(path.name)
    if m and m.groupdict().get("split") == "train":
        return "training-clip scores are not part of a submission"
    if m:
        return f"machine type {m['machine']!r} section {m['section']} has no test clips in the eval root"
    if path.name.endswith(META_SUFFIX):
        return f"is the meta file of another label (this folder's is {meta_name})"
    return "is not a file of a submission"


def _score(text: str, name: str) -> tuple[float | None, str]:
    try:
        value = float(text)
    except ValueError:
        return None, f"score {text!r} of {name} is not a number"
    if not math.isfinite(value):
        return None, f"score {text} of {name} is not a finite number"
    return value, ""


def _decision(text: str, name: str) -> tuple[int | None, str]:
    if text not in ("0", "1"):
        return None, f"decision {text!r} of {name} is not 0 or 1"
    return int(text), ""


def _check_rows(path: Path, names: list[str], what: str, parse: Callable[[str, str], tuple[Any, str]],
                problems: list[str]) -> dict[str, Any] | None:  # fmt: skip
    """Return {clip: value} of the readable rows of one file, adding a line to `problems` for each fault."""
    if not path.is_file():
        problems.append(f"{path}: file is missing")
        return None
    expected = set(names)
    seen: dict[str, int] = {}
    values: dict[str, Any] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line_no, row in metrics.nonblank_rows(f):
                if len(row) != 2:
                    problems.append(f"{path}: line {line_no} has {len(row)} fields, expected file_name,value")
                    continue
                name, text = row[0].strip(), row[1].strip()
                if name in seen:
                    problems.append(f"{path}: {name} is listed twice (lines {seen[name]} and {line_no})")
                    continue
                seen[name] = line_no
                if name not in expected:
                    problems.append(f"{path}: {name} is not a test clip of {what} in the eval root")
                    continue
                value, problem = parse(text, name)
                if problem:
                    problems.append(f"{path}: line {line_no}: {problem}")
                else:
                    values[name] = value
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(f"{path}: cannot be read ({exc.__class__.__name__})")
        return None
    problems += [f"{path}: {name} is missing" for name in names if name not in seen]
    return values


def _check_meta(path: Path, label: str) -> list[str]:
    if not path.is_file():
        return [f"{path}: file is missing"]
    try:
        doc = read_yaml(path, what="meta file")
    except AsdError as exc:
        return [str(exc)]
    submission = doc.get("submission") if isinstance(doc, dict) else None
    if not isinstance(submission, dict) or "label" not in submission:
        return [f"{path}: has no submission.label"]
    if str(submission["label"]) != label:
        return [f"{path}: submission.label {quote(submission['label'])} is not the folder's label {quote(label)}"]
    return []
