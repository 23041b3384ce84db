"""asdtool submit: the submission folder of a score folder, its meta file, and --check of a folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from asdtool.evaluate import metrics
from asdtool.core.atomic import write_json
from asdtool.cli import app
from asdtool.evaluate.submit import check_submission, write_submission

from tests.conftest import write_wave

runner = CliRunner()
LABEL = "Doe_LAB_task2_1"
# machine type -> section -> test clips (eval names carry neither domain nor label)
EVAL = {"fan": {"00": 4, "01": 3}, "valve": {"00": 5}}
N_TRAIN = 10  # training-clip scores per section


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval") / "eval"
    seed = 0
    for machine, sections in EVAL.items():
        for section, n in sections.items():
            for i in range(2):
                name = f"section_{section}_source_train_normal_{i:04d}_a_1.wav"
                write_wave(root / machine / "train" / name, seed=seed)
                seed += 1
            for i in range(n):
                write_wave(root / machine / "test" / f"section_{section}_{i:04d}.wav", seed=seed)
                seed += 1
    return root


def _write_scores(folder: Path, seed: int = 0) -> dict:
    """Write test and training-clip score files of every eval section; return {(machine, section, split): rows}."""
    rng = np.random.default_rng(seed)
    rows = {}
    for machine, sections in EVAL.items():
        for section, n in sections.items():
            train = {f"section_{section}_source_train_normal_{i:04d}_a_1.wav": float(rng.gamma(4.0, 0.1))
                     for i in range(N_TRAIN)}  # fmt: skip
            # every other test clip scores far above the training clips: both decisions occur
            test = {f"section_{section}_{i:04d}.wav": float(rng.gamma(4.0, 0.1) + (2.0 if i % 2 else 0.0))
                    for i in range(n)}  # fmt: skip
            for split, by_clip in (("train", train), ("test", test)):
                metrics.write_score_csv(folder / metrics.score_file_name(machine, section, split), by_clip)
                rows[(machine, section, split)] = by_clip
    return rows


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("scores") / "system"
    return folder, _write_scores(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A meta params file and the dev metrics JSON that `asdtool evaluate --out` writes."""
    folder = tmp_path_factory.mktemp("inputs")
    meta = folder / "submission.yaml"
    meta.write_text(yaml.safe_dump({
        "submission": {
            "name": "BEATs and EAT kNN ensemble", "abbreviation": "AITHU-kNN",
            "authors": [{"lastname": "Doe", "firstname": "Jane", "email": "jane@example.org", "corresponding": True,
                         "affiliation": {"abbreviation": "LAB", "institute": "Example Lab", "location": "Nowhere"}}],
        },
        "system": {"description": {"input_sampling_rate": "16kHz", "machine_learning_method": "kNN"},
                   "complexity": {"total_parameters": 1000}, "source_code": "https://example.org/asdtool"},
    }))  # fmt: skip
    summary = metrics.summarize([metrics.SectionResult("bearing", "00", 0.71, 0.55, 0.52),
                                 metrics.SectionResult("ToyCar", "00", 0.93, 0.81, 0.64)])  # fmt: skip
    write_json(folder / "dev.json", summary)
    return meta, folder / "dev.json", summary


def _submit(*args) -> object:
    return runner.invoke(app, ["submit", *map(str, args)])


def _problem_lines(r, folder: Path) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith(f"{folder}/")]


def _written(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


EXPECTED_FILES = {
    "anomaly_score_fan_section_00_test.csv", "decision_result_fan_section_00_test.csv",
    "anomaly_score_fan_section_01_test.csv", "decision_result_fan_section_01_test.csv",
    "anomaly_score_valve_section_00_test.csv", "decision_result_valve_section_00_test.csv",
    f"{LABEL}.meta.yaml",
}  # fmt: skip


@pytest.fixture(scope="module")
def submission(tmp_path_factory, eval_root, scores, inputs) -> Path:
    out = tmp_path_factory.mktemp("sub") / LABEL
    r = _submit("--scores", scores[0], "--data-root", eval_root, "--out", out, "--meta-params", inputs[0],
                "--dev-metrics", inputs[1])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"submission {LABEL}" in " ".join(r.output.split()) and "valve" in r.output
    return out


def test_submit_writes_every_section_with_gamma_threshold_decisions(submission, eval_root, scores):
    folder, rows = scores
    assert _written(submission) == EXPECTED_FILES
    ones = zeros = 0
    for machine, sections in EVAL.items():
        for section, n in sections.items():
            names = [f"section_{section}_{i:04d}.wav" for i in range(n)]
            score_lines = (submission / metrics.score_file_name(machine, section)).read_text().splitlines()
            decision_lines = (submission / metrics.decision_file_name(machine, section)).read_text().splitlines()
            assert [line.split(",")[0] for line in score_lines] == names  # clip-name order, no header
            assert [line.split(",")[0] for line in decision_lines] == names
            written = [float(line.split(",")[1]) for line in score_lines]
            assert written == [rows[(machine, section, "test")][n] for n in names]  # full float precision
            threshold = metrics.decision_threshold(list(rows[(machine, section, "train")].values()), 0.9)
            assert [line.split(",")[1] for line in decision_lines] == [str(int(s > threshold)) for s in written]
            ones += sum(s > threshold for s in written)
            zeros += sum(s <= threshold for s in written)
    assert ones and zeros


def test_library_thresholds_are_the_gamma_quantile(tmp_path, eval_root, scores):
    folder, rows = scores
    for q in (0.9, 0.5):
        done = write_submission(folder, eval_root, tmp_path / str(q) / LABEL, decision_quantile=q)
        assert [(s.machine, s.section, s.clips) for s in done.sections] == [("fan", "00", 4), ("fan", "01", 3), ("valve", "00", 5)]
        for s in done.sections:
            expected = metrics.decision_threshold(list(rows[(s.machine, s.section, "train")].values()), q)
            assert s.threshold == pytest.approx(expected, abs=1e-12)
            test = rows[(s.machine, s.section, "test")]
            assert s.anomalous == sum(v > expected for v in test.values())
    assert done.meta["submission"]["label"] == LABEL


def test_meta_file_carries_label_values_and_dev_metrics(submission, inputs):
    meta = yaml.safe_load((submission / f"{LABEL}.meta.yaml").read_text())
    assert list(meta) == ["submission", "system", "results"]
    sub = meta["submission"]
    assert (sub["label"], sub["name"], sub["abbreviation"]) == (LABEL, "BEATs and EAT kNN ensemble", "AITHU-kNN")
    assert sub["authors"] == [{"lastname": "Doe", "firstname": "Jane", "email": "jane@example.org", "corresponding": True,
                               "affiliation": {"abbreviation": "LAB", "institute": "Example Lab", "department": "",
                                               "location": "Nowhere"}}]  # fmt: skip
    description = meta["system"]["description"]
    assert description["input_sampling_rate"] == "16kHz" and description["machine_learning_method"] == "kNN"
    assert description["acoustic_features"] == "" and description["decision_making"] == ""  # not given: empty, never invented
    assert meta["system"]["complexity"] == {"total_parameters": 1000}
    assert meta["system"]["source_code"] == "https://example.org/asdtool"
    dev, summary = meta["results"]["development_dataset"], inputs[2]
    assert list(dev) == ["bearing", "ToyCar", "official_score"]
    assert dev["bearing"] == pytest.approx({"auc_source": 71.0, "auc_target": 55.0, "pauc": 52.0}, abs=1e-9)
    assert dev["ToyCar"]["pauc"] == pytest.approx(64.0, abs=1e-9)
    assert dev["official_score"] == pytest.approx(100 * summary["official_score"], abs=1e-6)


def test_dev_metrics_without_target_domain_give_null(tmp_path, eval_root, scores):
    dev = tmp_path / "dev.json"  # DCASE 2020 sections have no domains: evaluate writes auc_target null
    write_json(dev, {"official_score": 0.6, "machines": {"fan": {"auc_source": 0.7, "auc_target": None, "pauc": 0.55}}})
    done = write_submission(scores[0], eval_root, tmp_path / LABEL, dev_metrics=dev)
    assert done.meta["results"]["development_dataset"] == {"fan": {"auc_source": 70.0, "auc_target": None, "pauc": 55.0},
                                                           "official_score": 60.0}  # fmt: skip


def test_meta_file_without_values_is_the_blank_template(tmp_path, eval_root, scores):
    done = write_submission(scores[0], eval_root, tmp_path / LABEL)
    meta = yaml.safe_load((tmp_path / LABEL / f"{LABEL}.meta.yaml").read_text())
    assert meta == done.meta
    assert meta["submission"]["name"] == "" and meta["system"]["source_code"] == ""
    assert meta["submission"]["authors"][0]["affiliation"]["institute"] == ""
    assert set(meta["system"]["description"].values()) == {""}
    assert meta["results"] == {"development_dataset": {}}


def test_check_passes_on_the_written_folder(submission, eval_root, scores):
    r = _submit("--check", submission, "--data-root", eval_root)
    assert r.exit_code == 0, r.output
    assert "a valid submission" in " ".join(r.output.split()) and "fan" in r.output and "valve" in r.output
    result = check_submission(submission, eval_root)
    assert result.valid and [(s.machine, s.section, s.clips) for s in result.sections] == [
        ("fan", "00", 4), ("fan", "01", 3), ("valve", "00", 5)]  # fmt: skip
    for s in result.sections:  # the files bracket the fitted threshold: highest normal <= t < lowest anomalous
        t = metrics.decision_threshold(list(scores[1][(s.machine, s.section, "train")].values()), 0.9)
        lo, hi = s.bounds
        assert (lo is None or lo <= t) and (hi is None or t < hi)
        decisions = (submission / metrics.decision_file_name(s.machine, s.section)).read_text().splitlines()
        assert s.anomalous == sum(line.endswith(",1") for line in decisions)


def _edit_lines(path: Path, edit) -> None:
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _drop_row(clip: str):
    return lambda path: _edit_lines(path, lambda lines: [x for x in lines if not x.startswith(f"{clip},")])


def _set_row(clip: str, value: str):
    return lambda path: _edit_lines(path, lambda lines: [f"{clip},{value}" if x.startswith(f"{clip},") else x for x in lines])


FAN00 = "anomaly_score_fan_section_00_test.csv"
META = f"{LABEL}.meta.yaml"
BROKEN = {  # case: (file, edit, the one problem line's text after "<file>: ")
    "missing clip row": (FAN00, _drop_row("section_00_0002.wav"), "section_00_0002.wav is missing"),
    "nan score": (FAN00, _set_row("section_00_0001.wav", "nan"), "line 2: score nan of section_00_0001.wav is not a finite number"),
    "duplicated row": (FAN00, lambda p: _edit_lines(p, lambda lines: lines + lines[:1]),
                       "section_00_0000.wav is listed twice (lines 1 and 5)"),
    "extra clip": (FAN00, lambda p: _edit_lines(p, lambda lines: lines + ["section_00_0099.wav,0.5"]),
                   "section_00_0099.wav is not a test clip of fan section 00 in the eval root"),
    "missing decision file": ("decision_result_valve_section_00_test.csv", Path.unlink, "file is missing"),
    "decision 2": ("decision_result_fan_section_00_test.csv", _set_row("section_00_0000.wav", "2"),
                   "line 1: decision '2' of section_00_0000.wav is not 0 or 1"),
    "extra file": ("notes.txt", lambda p: p.write_text("x"), "is not a file of a submission"),
    "training-clip scores": ("anomaly_score_fan_section_00_train.csv", lambda p: p.write_text("a.wav,1.0\n"),
                             "training-clip scores are not part of a submission"),
    "meta label": (META, lambda p: p.write_text(p.read_text().replace(f"label: {LABEL}", "label: Other_X_task2_1")),
                   f"submission.label 'Other_X_task2_1' is not the folder's label '{LABEL}'"),
    "missing meta file": (META, Path.unlink, "file is missing"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_refuses_a_broken_copy_one_line_per_problem(case, submission, eval_root, tmp_path):
    name, edit, message = BROKEN[case]
    folder = tmp_path / LABEL
    shutil.copytree(submission, folder)
    edit(folder / name)
    r = _submit("--check", folder, "--data-root", eval_root)
    assert r.exit_code == 1
    assert _problem_lines(r, folder) == [f"{folder / name}: {message}"]
    assert r.stderr.splitlines()[-1] == f"error: {folder}: not a valid submission (1 problem(s))"


def test_check_lists_at_most_20_problems(submission, eval_root, tmp_path):
    folder = tmp_path / LABEL
    shutil.copytree(submission, folder)
    for path in folder.glob("*.csv"):
        path.write_text("")  # every clip of every file is missing: 2 x 12 problems
    r = _submit("--check", folder, "--data-root", eval_root)
    assert r.exit_code == 1
    lines = _problem_lines(r, folder)
    assert len(lines) == 20 and all(line.endswith(" is missing") for line in lines)
    assert "... and 4 more" in r.stderr.splitlines()
    assert len(check_submission(folder, eval_root).problems) == 24


def _refused(r, out: Path) -> str:
    """The one error line of a refused submit; nothing (not even a temporary folder) is left beside --out."""
    assert r.exit_code == 1, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert not out.exists()
    assert not out.parent.exists() or not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return " ".join(lines[0].split())


def _broken_scores(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "scores"
    _write_scores(folder)
    edit(folder)
    return folder


REFUSALS = {  # case: (edit of the score folder, file named (or the folder), problem)
    "no train scores": (lambda f: (f / "anomaly_score_fan_section_01_train.csv").unlink(), "",
                        "has no training-clip scores of fan section 01 (anomaly_score_fan_section_01_train.csv), which its "
                        "decision threshold is fitted to"),
    "no test scores": (lambda f: (f / "anomaly_score_valve_section_00_test.csv").unlink(), "",
                       "has no test-clip scores of valve section 00 (anomaly_score_valve_section_00_test.csv)"),
    "test lacks a clip": (lambda f: _edit_lines(f / FAN00, lambda ls: ls[1:]), FAN00,
                          "lacks 1 eval test clip(s) of {root}/fan/test: section_00_0000.wav"),
    "test has an extra clip": (lambda f: _edit_lines(f / FAN00, lambda ls: ls + ["section_00_0042.wav,0.1"]), FAN00,
                               "scores 1 clip(s) that {root}/fan/test lacks: section_00_0042.wav"),
    "two train scores": (lambda f: _edit_lines(f / "anomaly_score_valve_section_00_train.csv", lambda ls: ls[:2]),
                         "anomaly_score_valve_section_00_train.csv", "holds 2 training-clip score(s); the gamma fit of the decision threshold needs at least 3"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_submit_refuses_incomplete_scores_and_writes_nothing(case, tmp_path, eval_root):
    edit, file_name, message = REFUSALS[case]
    folder = _broken_scores(tmp_path, edit)
    out = tmp_path / "submission" / LABEL
    line = _refused(_submit("--scores", folder, "--data-root", eval_root, "--out", out), out)
    assert line == f"error: {folder / file_name if file_name else folder}: {message.format(root=eval_root)}"


def test_submit_refuses_bad_options_and_inputs(tmp_path, eval_root, scores, inputs):
    out = tmp_path / "submission" / LABEL
    base = ["--data-root", eval_root, "--out", out]
    assert "score folder does not exist" in _refused(_submit("--scores", tmp_path / "none", *base), out)
    assert "--decision-quantile must lie in (0, 1), got 1.0" in _refused(
        _submit("--scores", scores[0], *base, "--decision-quantile", "1"), out)
    assert "--label 'Other_X_task2_1' differs from the --out folder's name" in _refused(
        _submit("--scores", scores[0], *base, "--label", "Other_X_task2_1"), out)
    assert "give --scores and --out" in _refused(_submit("--data-root", eval_root, "--out", out), out)
    assert "give it without --scores and --out" in _refused(
        _submit("--check", tmp_path, "--scores", scores[0], "--data-root", eval_root), out)
    bad_meta = tmp_path / "meta.yaml"
    bad_meta.write_text("submission:\n  nmae: x\n")
    line = _refused(_submit("--scores", scores[0], *base, "--meta-params", bad_meta), out)
    assert f"{bad_meta}: submission.nmae is not a field of the meta file" in line
    bad_meta.write_text("submission:\n  authors:\n    - lastname: Doe\n      affiliation: {institue: X}\n")
    line = _refused(_submit("--scores", scores[0], *base, "--meta-params", bad_meta), out)
    assert f"{bad_meta}: submission.authors[0].affiliation.institue is not a field of an affiliation" in line
    bad_dev = tmp_path / "dev.json"
    bad_dev.write_text('{"official_score": 0.5, "machines": {"fan": {"auc_source": 0.5}}}')
    line = _refused(_submit("--scores", scores[0], *base, "--dev-metrics", bad_dev), out)
    assert f"{bad_dev}: machines.fan.auc_target is missing or not a number" in line


def test_submit_replaces_an_existing_folder_only_with_force(tmp_path, eval_root, scores):
    out = tmp_path / LABEL
    assert _submit("--scores", scores[0], "--data-root", eval_root, "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other"
    _write_scores(other, seed=1)
    r = _submit("--scores", other, "--data-root", eval_root, "--out", out)
    assert r.exit_code == 1 and f"{out}: exists; give --force to replace it" in " ".join(r.stderr.split())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    r = _submit("--scores", other, "--data-root", eval_root, "--out", out, "--force")
    assert r.exit_code == 0, r.output
    assert _written(out) == EXPECTED_FILES and (out / FAN00).read_bytes() != before[FAN00]
    (out / "notes.txt").write_text("mine")  # a folder holding foreign files is never replaced
    r = _submit("--scores", scores[0], "--data-root", eval_root, "--out", out, "--force")
    assert r.exit_code == 1 and "holds notes.txt, which this command did not write" in " ".join(r.stderr.split())
    assert (out / "notes.txt").read_text() == "mine"


LABEL_FORM = ("is not of the organisers' form Lastname_Institute_task2_N, N the submission index 1-4 "
              "(^[A-Za-z][A-Za-z0-9-]*_[A-Za-z0-9-]+_task2_[1-4]$)")  # fmt: skip


@pytest.mark.parametrize(
    "label, valid",
    [("Doe_LAB_task2_1", True), ("Other_X_task2_4", True), ("van-Dam_TU-Delft2_task2_3", True),
     ("not-a-label", False), ("Doe_LAB_task2_5", False), ("Doe_LAB_task2_0", False), ("Doe_LAB_task1_1", False),
     ("Doe_task2_1", False), ("1Doe_LAB_task2_1", False), ("Doe_LAB_task2_1_x", False), ("Doe_L.B_task2_1", False),
     ("Doe_LAB_task2_1\n", False)],
)  # fmt: skip
def test_labels_follow_the_organisers_pattern(label, valid):
    from asdtool.evaluate.submit import label_problem

    assert label_problem(label) == (None if valid else f"submission label {label!r} {LABEL_FORM}")


def test_submit_refuses_an_out_folder_not_named_as_a_label(tmp_path, eval_root, scores):
    out = tmp_path / "sub" / "not-a-label"
    line = _refused(_submit("--scores", scores[0], "--data-root", eval_root, "--out", out), out)
    assert line == f"error: {out}: submission label 'not-a-label' {LABEL_FORM}"
    out = tmp_path / "sub" / "Doe_LAB_task2_5"
    line = _refused(_submit("--scores", scores[0], "--data-root", eval_root, "--out", out, "--label", out.name), out)
    assert line == f"error: {out}: submission label 'Doe_LAB_task2_5' {LABEL_FORM}"


def test_check_names_a_folder_not_named_as_a_label(submission, eval_root, tmp_path):
    folder = tmp_path / "not-a-label"
    shutil.copytree(submission, folder)
    (folder / META).rename(folder / "not-a-label.meta.yaml")
    r = _submit("--check", folder, "--data-root", eval_root)
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        f"{folder}: submission label 'not-a-label' {LABEL_FORM}",
        f"{folder}/not-a-label.meta.yaml: submission.label '{LABEL}' is not the folder's label 'not-a-label'",
        f"error: {folder}: not a valid submission (2 problem(s))"]  # fmt: skip


DEEP = "submission: " + "[" * 50_000 + "\n"
TOO_DEEP = "nests lists and mappings deeper than 64 levels (line 1)"


def test_check_of_a_deeply_nested_meta_file_is_one_problem_line(submission, eval_root, tmp_path):
    folder = tmp_path / LABEL
    shutil.copytree(submission, folder)
    (folder / META).write_text(DEEP)
    before = (folder / META).read_bytes()
    r = _submit("--check", folder, "--data-root", eval_root)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)  # no RecursionError caught by the runner
    assert "Traceback" not in r.output
    assert _problem_lines(r, folder) == [f"{folder / META}: {TOO_DEEP}"]
    assert r.stderr.splitlines()[-1] == f"error: {folder}: not a valid submission (1 problem(s))"
    assert (folder / META).read_bytes() == before


META_PARAMS_REFUSED = {  # case: (text of --meta-params, the one error's problem)
    "deep": (DEEP, TOO_DEEP),
    "duplicate key": ("submission:\n  name: A\n  name: B\n", "has the key 'name' twice in one mapping (lines 2 and 3)"),
    "alias": ("a: &who Doe\nsubmission:\n  name: *who\n",
              "defines the YAML anchor &who (line 1); anchors and aliases are not accepted, write the value out"),
    "not a scalar": ("submission:\n  name: [" + ", ".join(["x"] * 1000) + "]\n",
                     "submission.name: expected a single value, got ['x', 'x', 'x', 'x', 'x', 'x', ...]"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(META_PARAMS_REFUSED))
def test_submit_refuses_hostile_meta_params_in_one_line(case, tmp_path, eval_root, scores):
    text, problem = META_PARAMS_REFUSED[case]
    meta = tmp_path / "meta.yaml"
    meta.write_text(text)
    before = meta.read_bytes()
    out = tmp_path / "submission" / LABEL
    r = _submit("--scores", scores[0], "--data-root", eval_root, "--out", out, "--meta-params", meta)
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert _refused(r, out) == f"error: {meta}: {problem}"
    assert meta.read_bytes() == before


DEV_REFUSED = {  # case: (text of --dev-metrics, the one error's problem)
    "deep": ('{"official_score": 0.5, "machines": ' + "[" * 50_000, "nests arrays and objects deeper than 64 levels"),
    "duplicate key": ('{"official_score": 0.5, "official_score": 0.9, "machines": {}}',
                      "has the key 'official_score' twice in one object"),
    "not JSON": ('{"official_score": 0.5,', "is not valid JSON (Expecting property name enclosed in double quotes: "
                                            "line 1 column 24 (char 23))"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DEV_REFUSED))
def test_submit_refuses_hostile_dev_metrics_in_one_line(case, tmp_path, eval_root, scores):
    text, problem = DEV_REFUSED[case]
    dev = tmp_path / "dev.json"
    dev.write_text(text)
    before = dev.read_bytes()
    out = tmp_path / "submission" / LABEL
    r = _submit("--scores", scores[0], "--data-root", eval_root, "--out", out, "--dev-metrics", dev)
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert _refused(r, out) == f"error: {dev}: {problem}"
    assert dev.read_bytes() == before


def test_a_value_given_twice_is_written_out_twice_not_as_an_alias(tmp_path, eval_root, scores, monkeypatch):
    """The check refuses YAML aliases, so the meta file submit writes must hold none, even of one object used twice."""
    from asdtool.evaluate import submit

    affiliation = {"abbreviation": "LAB", "institute": "Example Lab"}
    plain = submit.meta_document

    def sharing(label, values, dev=None, source=None):
        doc = plain(label, values, dev, source)
        doc["system"]["external_datasets"] = [affiliation, affiliation]  # safe_dump would write &id001 and *id001
        return doc

    monkeypatch.setattr(submit, "meta_document", sharing)
    done = write_submission(scores[0], eval_root, tmp_path / LABEL)
    text = (tmp_path / LABEL / META).read_text()
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text)["system"]["external_datasets"] == [affiliation, affiliation] == done.meta["system"]["external_datasets"]
