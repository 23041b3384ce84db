"""Tests for asdtool/evaluate/evaluation.py: evaluate_folder's metrics against brute force, its decision and ROC files, its refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score, roc_curve

from asdtool.core.errors import AsdError
from asdtool.data import dcase
from asdtool.evaluate import metrics
from asdtool.evaluate.evaluation import evaluate_folder
from tests.conftest import make_machine

MACHINES = ("fan", "gearbox")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """fan (two attribute sets) and gearbox: 2 normal + 2 anomalous test clips per domain each."""
    root = tmp_path_factory.mktemp("eval") / "dev"
    make_machine(root, "fan", [{"m-n": "W"}, {"m-n": "X"}])
    make_machine(root, "gearbox")
    return root


def _write_scores(folder: Path, data: Path, seed: int = 0, gap: float = 0.5) -> dict[str, dict[str, float]]:
    """Write noisy scores (anomalies `gap` higher on average) for every test and train clip; return the test ones."""
    rng = np.random.default_rng(seed)
    ds = dcase.scan(data)
    out = {}
    for m in MACHINES:
        test = {c.file_name: float(rng.normal() + gap * c.label) for c in ds.select(m, "test")}
        train = {c.file_name: float(abs(rng.normal()) + 0.1) for c in ds.select(m, "train")}
        metrics.write_score_csv(folder / metrics.score_file_name(m), test)
        metrics.write_score_csv(folder / metrics.score_file_name(m, split="train"), train)
        out[m] = test
    return out


def _pair_auc(normal: list[float], anomalous: list[float]) -> float:
    """AUC as the share of (normal, anomalous) pairs ranked right, ties counting half."""
    wins = [1.0 if a > n else 0.5 if a == n else 0.0 for n in normal for a in anomalous]
    return float(np.mean(wins))


def _expected(data: Path, scores: dict[str, dict[str, float]]) -> dict:
    """The official figures, from the clip names and the scores, the long way."""
    ds = dcase.scan(data)
    machines, all_values = {}, []
    for m in MACHINES:
        clips = ds.select(m, "test")
        s = {c.file_name: scores[m][c.file_name] for c in clips}
        anomalous = [s[c.file_name] for c in clips if c.label == 1]
        auc = {d: _pair_auc([s[c.file_name] for c in clips if c.label == 0 and c.domain == d], anomalous)
               for d in ("source", "target")}  # fmt: skip
        y = [c.label for c in clips]
        pauc = float(roc_auc_score(y, [s[c.file_name] for c in clips], max_fpr=0.1))
        values = [auc["source"], auc["target"], pauc]
        all_values += values
        machines[m] = {"auc_source": auc["source"], "auc_target": auc["target"], "pauc": pauc,
                       "hmean": len(values) / sum(1 / max(v, np.finfo(float).eps) for v in values)}  # fmt: skip
    hmean = len(all_values) / sum(1 / max(v, np.finfo(float).eps) for v in all_values)
    return {"official_score": hmean, "arithmetic_mean": float(np.mean(all_values)), "machines": machines}


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_a_brute_force_computation(data, tmp_path, seed):
    scores = _write_scores(tmp_path / "scores", data, seed=seed)
    summary = evaluate_folder(tmp_path / "scores", data_root=data)
    expected = _expected(data, scores)
    assert summary["official_score"] == pytest.approx(expected["official_score"], abs=1e-12)
    assert summary["arithmetic_mean"] == pytest.approx(expected["arithmetic_mean"], abs=1e-12)
    assert list(summary["machines"]) == list(MACHINES)
    for m in MACHINES:
        for key, value in expected["machines"][m].items():
            assert summary["machines"][m][key] == pytest.approx(value, abs=1e-12), (m, key)
    aucs = [summary["machines"][m][k] for m in MACHINES for k in ("auc_source",)]
    assert summary["hmean_auc_source"] == pytest.approx(scipy.stats.hmean(aucs), abs=1e-12)
    assert _names(tmp_path / "scores") == sorted(metrics.score_file_name(m, split=s) for m in MACHINES for s in ("test", "train"))


def test_perfect_scores_give_one_and_inverted_scores_the_floor(data, tmp_path):
    ds = dcase.scan(data)
    for m in MACHINES:
        metrics.write_score_csv(tmp_path / "good" / metrics.score_file_name(m), {c.file_name: float(c.label) for c in ds.select(m, "test")})
        metrics.write_score_csv(tmp_path / "bad" / metrics.score_file_name(m), {c.file_name: -float(c.label) for c in ds.select(m, "test")})
    good = evaluate_folder(tmp_path / "good", data_root=data)
    assert good["official_score"] == 1.0 and good["arithmetic_mean"] == 1.0
    assert all(v == 1.0 for m in MACHINES for v in good["machines"][m].values())
    bad = evaluate_folder(tmp_path / "bad", data_root=data)
    assert all(bad["machines"][m]["auc_source"] == bad["machines"][m]["auc_target"] == 0.0 for m in MACHINES)
    worst_pauc = 0.5 * (1 - 0.1**2 / 2 / (0.1 - 0.1**2 / 2))  # McClish: the least a ranking can score
    assert all(bad["machines"][m]["pauc"] == pytest.approx(worst_pauc) for m in MACHINES)
    eps = np.finfo(float).eps  # an AUC of 0 counts as machine epsilon in the harmonic mean, not as a division by zero
    assert bad["official_score"] == pytest.approx(6 / (4 / eps + 2 / worst_pauc), rel=1e-12) and bad["official_score"] > 0


def test_the_metrics_file_is_the_returned_summary(data, tmp_path):
    _write_scores(tmp_path / "scores", data)
    out = tmp_path / "metrics" / "m.json"
    summary = evaluate_folder(tmp_path / "scores", data_root=data, out=out)
    assert json.loads(out.read_text()) == summary
    assert out.read_text() == json.dumps(summary, indent=2) + "\n"
    assert evaluate_folder(tmp_path / "scores", data_root=data, out=out) == summary  # its own earlier output: replaced


def test_the_organisers_ground_truth_folder_gives_the_same_figures(data, tmp_path):
    _write_scores(tmp_path / "scores", data, seed=4)
    gt = tmp_path / "gt"
    for sub in ("ground_truth_data", "ground_truth_domain"):
        (gt / sub).mkdir(parents=True)
    for m in MACHINES:
        clips = dcase.scan(data).select(m, "test")
        name = f"ground_truth_{m}_section_00_test.csv"
        (gt / "ground_truth_data" / name).write_text("".join(f"{c.file_name},{c.label}\n" for c in clips))
        (gt / "ground_truth_domain" / name).write_text("".join(f"{c.file_name},{c.domain_id}\n" for c in clips))
    assert evaluate_folder(tmp_path / "scores", ground_truth=gt) == evaluate_folder(tmp_path / "scores", data_root=data)


# ----------------------------------------------------------------------------- decisions and ROC curves


def _expected_decisions(folder: Path, machine: str, quantile: float) -> dict[str, int]:
    train = list(metrics.read_score_csv(folder / metrics.score_file_name(machine, split="train")).values())
    shape, loc, scale = scipy.stats.gamma.fit(train)
    threshold = scipy.stats.gamma.ppf(quantile, shape, loc=loc, scale=scale)
    test = metrics.read_score_csv(folder / metrics.score_file_name(machine))
    return {n: int(v > threshold) for n, v in test.items()}


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_decisions_go_beside_the_scores_by_the_gamma_rule(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data, seed=1)
    evaluate_folder(scores, data_root=data, decisions=True)
    for m in MACHINES:
        path = scores / metrics.decision_file_name(m)
        rows = _read_rows(path)
        expected = _expected_decisions(scores, m, metrics.DECISION_QUANTILE)
        assert [r[0] for r in rows] == list(metrics.read_score_csv(scores / metrics.score_file_name(m)))  # the score file's order
        assert {r[0]: int(r[1]) for r in rows} == expected and all(r[1] in ("0", "1") for r in rows)
    evaluate_folder(scores, data_root=data, decisions=True)  # its own decision files are replaced


def test_decisions_in_their_own_folder_at_another_quantile(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data, seed=2, gap=1.0)
    before = _names(scores)
    low, high = tmp_path / "low", tmp_path / "high"
    evaluate_folder(scores, data_root=data, decisions=True, decisions_dir=low, decision_quantile=0.2)
    evaluate_folder(scores, data_root=data, decisions=True, decisions_dir=high, decision_quantile=0.99)
    assert _names(scores) == before  # nothing added beside the scores
    assert _names(low) == _names(high) == sorted(metrics.decision_file_name(m) for m in MACHINES)
    n_low = n_high = 0
    for m in MACHINES:
        got_low = {r[0]: int(r[1]) for r in _read_rows(low / metrics.decision_file_name(m))}
        got_high = {r[0]: int(r[1]) for r in _read_rows(high / metrics.decision_file_name(m))}
        assert got_low == _expected_decisions(scores, m, 0.2) and got_high == _expected_decisions(scores, m, 0.99)
        assert all(got_low[n] >= got_high[n] for n in got_low)  # a lower threshold flags at least as many
        n_low, n_high = n_low + sum(got_low.values()), n_high + sum(got_high.values())
    assert n_low > n_high


def test_roc_curves_are_written_per_machine_type(data, tmp_path):
    scores = tmp_path / "scores"
    test_scores = _write_scores(scores, data, seed=3)
    roc = tmp_path / "roc"
    evaluate_folder(scores, data_root=data, roc=roc)
    assert _names(roc) == ["roc_fan.csv", "roc_gearbox.csv"]
    ds = dcase.scan(data)
    for m in MACHINES:
        rows = _read_rows(roc / f"roc_{m}.csv")
        assert rows[0] == ["fpr", "tpr"]
        got = np.array(rows[1:], dtype=float)
        clips = ds.select(m, "test")
        fpr, tpr, _ = roc_curve([c.label for c in clips], [test_scores[m][c.file_name] for c in clips])
        np.testing.assert_array_equal(got, np.stack([fpr, tpr], axis=1))
        assert got[0].tolist() == [0.0, 0.0] and got[-1].tolist() == [1.0, 1.0]


# ----------------------------------------------------------------------------- refusals, before any work


def test_a_score_folder_missing_a_file_is_refused(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data)
    (scores / metrics.score_file_name("gearbox")).unlink()
    with pytest.raises(AsdError) as error:
        evaluate_folder(scores, data_root=data, out=tmp_path / "m.json")
    assert str(error.value) == f"{scores / metrics.score_file_name('gearbox')}: score file does not exist"
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(AsdError, match=r"missing: score folder does not exist$"):
        evaluate_folder(tmp_path / "missing", data_root=data)


def test_a_score_file_with_a_missing_or_a_foreign_clip_is_refused(data, tmp_path):
    scores = tmp_path / "scores"
    test = _write_scores(scores, data)
    path = scores / metrics.score_file_name("fan")
    names = list(test["fan"])
    metrics.write_score_csv(path, {**test["fan"], "section_00_source_test_normal_0099_m-n_W.wav": 0.1})
    with pytest.raises(AsdError, match=r"scores clips not in the ground truth: section_00_source_test_normal_0099_m-n_W\.wav$"):
        evaluate_folder(scores, data_root=data)
    metrics.write_score_csv(path, {n: test["fan"][n] for n in names[1:]})
    with pytest.raises(AsdError, match=rf"misses 1 clip\(s\) of the ground truth: {names[0]}$"):
        evaluate_folder(scores, data_root=data)


def test_scores_of_a_machine_type_without_ground_truth_are_refused(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data)
    metrics.write_score_csv(scores / metrics.score_file_name("valve"), {"section_00_0000.wav": 0.5})
    with pytest.raises(AsdError, match=r"machine type 'valve' section 00 is not in the ground truth \(known: fan, gearbox\)"):
        evaluate_folder(scores, data_root=data)


def test_a_users_file_at_out_is_refused_before_anything_is_written(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data)
    before = _names(scores)
    out = tmp_path / "notes.json"
    out.write_text('{"mine": true}')
    with pytest.raises(AsdError, match=r"notes\.json: exists and is not a metrics file written by asdtool"):
        evaluate_folder(scores, data_root=data, out=out, decisions=True, roc=tmp_path / "roc")
    assert out.read_text() == '{"mine": true}'
    assert _names(scores) == before and not (tmp_path / "roc").exists()  # no decision files, no curves
    assert evaluate_folder(scores, data_root=data, out=out, force=True)["official_score"] > 0  # --force: replaced
    assert "official_score" in json.loads(out.read_text())


def test_an_input_is_never_the_metrics_file(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data)
    victim = scores / metrics.score_file_name("fan")
    kept = victim.read_bytes()
    with pytest.raises(AsdError, match="is one of this command's own inputs"):
        evaluate_folder(scores, data_root=data, out=victim, force=True)
    assert victim.read_bytes() == kept


def test_a_foreign_file_in_the_roc_or_decisions_folder_is_refused_before_any_work(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data)
    roc = tmp_path / "roc"
    roc.mkdir()
    (roc / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(AsdError, match=r"roc: holds holiday\.jpg, which this command did not write \(a ROC curve"):
        evaluate_folder(scores, data_root=data, roc=roc, out=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists() and _names(roc) == ["holiday.jpg"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "todo.txt").write_text("x")
    with pytest.raises(AsdError, match=r"mine: holds todo\.txt, which this command did not write \(a decision file"):
        evaluate_folder(scores, data_root=data, decisions=True, decisions_dir=mine)
    assert _names(mine) == ["todo.txt"]


def test_a_users_file_named_like_a_decision_file_is_kept(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data)
    user = scores / metrics.decision_file_name("fan")
    user.write_text("my,notes\n")
    with pytest.raises(AsdError, match=r"decision_result_fan_section_00_test\.csv: exists and is not a decision file"):
        evaluate_folder(scores, data_root=data, decisions=True)
    assert user.read_text() == "my,notes\n" and not (scores / metrics.decision_file_name("gearbox")).exists()


def test_decisions_need_the_training_clip_scores(data, tmp_path):
    scores = tmp_path / "scores"
    _write_scores(scores, data)
    (scores / metrics.score_file_name("gearbox", split="train")).unlink()
    with pytest.raises(AsdError, match=r"anomaly_score_gearbox_section_00_train\.csv: score file does not exist$"):
        evaluate_folder(scores, data_root=data, decisions=True, out=tmp_path / "m.json")
    assert not (scores / metrics.decision_file_name("fan")).exists()  # all computed before any is written
    assert not (tmp_path / "m.json").exists()
