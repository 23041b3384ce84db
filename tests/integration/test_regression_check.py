"""The CI regression check: tolerance, floors and the best-system rule pass on good scores, and the
check goes red on a broken model (its scores shuffled: chance level), end to end."""

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest

from asdtool.evaluate import metrics
from asdtool.detect.baseline import baseline_to_folder
from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.evaluate.evaluation import evaluate_folder
from tests import paths

CHECK = paths.TESTS / "regression" / "check_hmean.py"


@pytest.fixture
def check():
    return runpy.run_path(str(CHECK))["main"]


def _write(folder: Path, scores: dict) -> None:
    folder.mkdir(exist_ok=True)
    for name, v in scores.items():
        (folder / f"{name}.json").write_text(json.dumps({"official_score": v}))


def _committed() -> dict:
    return json.loads((CHECK.parent / "hmean.json").read_text())


def _all_names(ref: dict) -> list[str]:
    best = ref.get("best_system") or {"systems": [], "reference": None}
    return [n for n in dict.fromkeys([*ref["official_score"], *ref.get("floors", {}), *best["systems"], best["reference"]]) if n]


def test_the_committed_reference_holds_on_its_own_scores(tmp_path, check):
    ref = _committed()
    ranges = [v["range"] for v in ref["spread"]["per_name"].values()]  # the tolerance comes from a measurement
    assert len(ref["spread"]["runs"]) >= 3 and ref["tolerance"] == math.ceil((max(ranges) + 0.005) * 100) / 100 <= 0.1
    assert all(ref["official_score"][n] >= f for n, f in ref["floors"].items() if n in ref["official_score"])
    _write(tmp_path, {n: ref["official_score"][n] for n in _all_names(ref)})
    assert check(["--metrics", str(tmp_path)]) == 0


def test_tolerance_floor_and_best_system_failures(tmp_path, check, capsys):
    ref = {"tolerance": 0.02, "official_score": {"logmel": 0.68, "good": 0.70, "sys": 0.72},
           "floors": {"good": 0.60}, "best_system": {"systems": ["sys"], "reference": "logmel", "margin": 0.02}}
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    run = lambda scores: (_write(tmp_path / "m", scores), check(["--metrics", str(tmp_path / "m"), "--reference", str(path)]))[1]  # noqa: E731
    assert run({"logmel": 0.68, "good": 0.685, "sys": 0.705}) == 0  # within 0.02 of each, floor held, 0.705 >= 0.70
    capsys.readouterr()
    assert run({"logmel": 0.68, "good": 0.67, "sys": 0.72}) == 1
    assert "good: official score fell more than 0.02 below the reference" in capsys.readouterr().err
    assert run({"logmel": 0.665, "good": 0.70, "sys": 0.71}) == 0  # the rule compares against this run's log-mel
    capsys.readouterr()
    assert run({"logmel": 0.70, "good": 0.70, "sys": 0.715}) == 1
    assert "best system sys (0.7150) is below logmel (0.7000) + 0.02" in capsys.readouterr().err
    ref["tolerance"] = 0.5  # a floor bites even when the tolerance would let it pass
    path.write_text(json.dumps(ref))
    assert run({"logmel": 0.68, "good": 0.55, "sys": 0.72}) == 1
    assert "good: official score 0.5500 is below its floor 0.6" in capsys.readouterr().err


def test_missing_metrics_fail(tmp_path, check):
    assert check(["--metrics", str(tmp_path)]) == 1


def test_a_broken_model_turns_the_check_red(tmp_path, check, capsys):
    """Real scores of a working detector pass; the same scores shuffled among the clips (what shuffled
    embeddings or an untrained head amount to: no information) fall to chance and fail."""
    data = tmp_path / "data"
    synthesize(data, seed=6, sizes=SynthSizes(seconds=1.0, source_train=30, target_train=4, test_per_domain=24),
               machines=["bearing", "fan", "valve"])
    good, broken = tmp_path / "good", tmp_path / "broken"
    baseline_to_folder(data, good, method="logmel-meanstd")  # 0.73 here
    broken.mkdir()
    rng = np.random.default_rng(0)
    for csv in sorted(good.glob("anomaly_score_*_test.csv")):
        rows = metrics.read_score_csv(csv)
        values = rng.permutation(list(rows.values()))
        metrics.write_score_csv(broken / csv.name, dict(zip(rows, values.tolist())))
    (tmp_path / "m").mkdir()
    score_good = evaluate_folder(good, data, out=tmp_path / "m" / "model.json")["official_score"]
    score_broken = evaluate_folder(broken, data)["official_score"]
    assert score_good > 0.7 and abs(score_broken - 0.5) < 0.05  # 0.735 and 0.520 when written
    ref = {"tolerance": 0.03, "official_score": {"model": round(score_good, 6)}, "floors": {"model": 0.6},
           "spread": {}}  # fmt: skip
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    args = ["--metrics", str(tmp_path / "m"), "--reference", str(tmp_path / "ref.json")]
    assert check(args) == 0
    evaluate_folder(broken, data, out=tmp_path / "m" / "model.json.new")
    (tmp_path / "m" / "model.json.new").replace(tmp_path / "m" / "model.json")
    capsys.readouterr()
    assert check(args) == 1
    err = capsys.readouterr().err
    assert "model: official score fell more than 0.03 below the reference" in err and "below its floor 0.6" in err
