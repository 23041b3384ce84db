import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from asdtool.evaluate import metrics
from asdtool.cli import app
from asdtool.data import dcase

runner = CliRunner()


def _write_scores(root: Path, out: Path, seed: int = 0) -> None:
    """A scorer that knows a bit of the truth: anomalies score higher on average."""
    rng = np.random.default_rng(seed)
    ds = dcase.scan(root)
    for m in ds.machines:
        for split in ("train", "test"):
            clips = ds.select(m, split)
            metrics.write_score_csv(
                out / metrics.score_file_name(m, "00", split),
                {c.file_name: float(rng.gamma(2.0, 0.1) + 0.3 * (c.label == 1)) for c in clips},
            )


def test_evaluate_writes_metrics_and_decisions(tiny_root, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(tiny_root, scores)
    out = tmp_path / "m" / "metrics.json"
    r = runner.invoke(app, ["evaluate", "--scores", str(scores), "--data-root", str(tiny_root), "--out", str(out), "--decisions"])
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert set(m["machines"]) == {"fan", "gearbox"}
    expected = metrics.summarize(metrics.evaluate_sections(metrics.truth_from_dataset(dcase.scan(tiny_root)), scores))
    assert m["official_score"] == pytest.approx(expected["official_score"], abs=1e-12)
    assert m["machines"]["fan"] == pytest.approx(expected["machines"]["fan"], abs=1e-12)
    assert "official score" in r.output and "gearbox" in r.output
    dec = (scores / "decision_result_fan_section_00_test.csv").read_text().splitlines()
    assert len(dec) == 8 and all(line.rsplit(",", 1)[1] in ("0", "1") for line in dec)


def test_evaluate_refuses_incomplete_submission(tiny_root, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(tiny_root, scores)
    f = scores / "anomaly_score_fan_section_00_test.csv"
    f.write_text("\n".join(f.read_text().splitlines()[1:]) + "\n")
    out = tmp_path / "metrics.json"
    r = runner.invoke(app, ["evaluate", "--scores", str(scores), "--data-root", str(tiny_root), "--out", str(out), "--decisions"])
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "anomaly_score_fan_section_00_test.csv" in lines[0] and "misses 1 clip" in lines[0]
    assert not out.exists()
    assert not list(scores.glob("decision_result_*"))


def test_evaluate_needs_exactly_one_truth(tmp_path):
    r = runner.invoke(app, ["evaluate", "--scores", str(tmp_path)])
    assert r.exit_code == 1 and "exactly one of --data-root" in r.output


def test_evaluate_eval_names_need_ground_truth(tmp_path):
    from tests.conftest import make_machine, write_wave

    root = tmp_path / "eval"
    make_machine(root, "Scanner", n_test=0, csv=False)
    write_wave(root / "Scanner" / "test" / "section_00_0000.wav")
    r = runner.invoke(app, ["evaluate", "--scores", str(tmp_path), "--data-root", str(root)])
    assert r.exit_code == 1 and "use --ground-truth" in r.output


def test_help_explains_every_option():
    import click
    import typer.main

    group = typer.main.get_command(app)
    assert {"synth", "finetune", "pseudolabel", "embed", "detect", "ensemble", "evaluate", "report", "baseline"} <= set(group.commands)
    for name, cmd in group.commands.items():
        assert cmd.help, f"{name} has no help text"
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help and len(param.help) > 10, f"{name} {param.name} has no help"
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0 and "--" in r.output


def test_evaluate_writes_roc_curves(tiny_root, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(tiny_root, scores)
    r = runner.invoke(app, ["evaluate", "--scores", str(scores), "--data-root", str(tiny_root), "--roc", str(tmp_path / "roc")])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "roc" / "roc_fan.csv").read_text().splitlines()
    assert lines[0] == "fpr,tpr" and lines[1] == "0.0,0.0" and lines[-1] == "1.0,1.0"
    fpr = [float(x.split(",")[0]) for x in lines[1:]]
    assert fpr == sorted(fpr)
    assert sorted(p.name for p in (tmp_path / "roc").iterdir()) == ["roc_fan.csv", "roc_gearbox.csv"]


def test_evaluate_refuses_score_file_of_machine_not_in_truth(tiny_root, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(tiny_root, scores)
    stray = scores / "anomaly_score_pump_section_00_test.csv"
    stray.write_text((scores / "anomaly_score_fan_section_00_test.csv").read_text())
    out = tmp_path / "metrics.json"
    r = runner.invoke(app, ["evaluate", "--scores", str(scores), "--data-root", str(tiny_root), "--out", str(out), "--decisions"])
    assert r.exit_code == 1
    text = " ".join(r.output.split())  # rich may wrap a long line
    assert f"{stray}: machine type 'pump' section 00 is not in the ground truth (known: fan, gearbox)" in text
    assert not out.exists() and not list(scores.glob("decision_result_*"))


def test_evaluate_refuses_empty_machine_folder(tiny_root, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(tiny_root, scores)
    (tiny_root / "pump" / "train").mkdir(parents=True)
    (tiny_root / "pump" / "test").mkdir()
    r = runner.invoke(app, ["evaluate", "--scores", str(scores), "--data-root", str(tiny_root)])
    assert r.exit_code == 1
    assert "pump: machine folder holds no clips (train/ and test/ are empty)" in " ".join(r.output.split())
