"""synth -> baseline scores -> evaluate, through the command line, agrees with the in-memory path."""

import json

import pytest
from typer.testing import CliRunner

from asdtool.detect import baseline
from asdtool.evaluate import metrics
from asdtool.cli import app
from asdtool.data import dcase


def test_synth_scores_evaluate_round_trip(tmp_path):
    runner = CliRunner()
    data, scores, out = tmp_path / "dev", tmp_path / "scores", tmp_path / "metrics.json"
    r = runner.invoke(app, ["synth", "--out", str(data), "--seconds", "0.5", "--source-train", "8",
                            "--target-train", "3", "--test-per-domain", "6", "--seed", "5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["baseline", "--data-root", str(data), "--out", str(scores)])
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in scores.iterdir())
    assert len(files) == 14 and "anomaly_score_ToyCar_section_00_test.csv" in files
    assert len(metrics.read_score_csv(scores / "anomaly_score_fan_section_00_test.csv")) == 24
    r = runner.invoke(app, ["evaluate", "--scores", str(scores), "--data-root", str(data), "--out", str(out)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    expected = baseline.evaluate_baseline(data)
    assert got["official_score"] == pytest.approx(expected["official_score"], abs=1e-12)
    assert list(got["machines"]) == dcase.scan(data).machines
    for m, values in expected["machines"].items():
        assert got["machines"][m] == pytest.approx(values, abs=1e-12)
    assert 0.5 < got["official_score"] < 1.0
