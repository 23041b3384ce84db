import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from asdtool.data import store
from asdtool.detect import ensemble
from asdtool.evaluate import metrics
from asdtool.cli import app
from asdtool.core.errors import AsdError
from asdtool.evaluate.scorefolder import write_score_folder

from tests.toydata import synth_dataset, write_toy_store


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth_dataset(tmp_path_factory.mktemp("synth") / "dev")


runner = CliRunner()


def write_folder(out: Path, ds, score, train: bool = True) -> Path:
    """Write official CSVs with score(clip) for every clip of the dataset."""
    for m in ds.machines:
        for split in ("test", "train") if train else ("test",):
            metrics.write_score_csv(out / metrics.score_file_name(m, "00", split), {c.file_name: score(c) for c in ds.select(m, split)})
    return out


def random_scorer(seed: int, signal: float = 1.0, scale=None):
    rng = np.random.default_rng(seed)
    scale = scale or {}
    return lambda c: float(scale.get(c.machine, 1.0) * (rng.normal() + signal * (c.label == 1)) + 10 * (c.machine == "valve"))


def test_z_normalisation_gives_zero_mean_unit_std_per_machine(tmp_path, dataset):
    folder = ensemble.read_score_folder(write_folder(tmp_path / "a", dataset, random_scorer(0, scale={"fan": 5.0, "valve": 0.1})))
    z = ensemble.z_normalise(folder)
    stats = ensemble.machine_stats(folder)
    for m in dataset.machines:
        test = np.array(list(z.files[(m, "00", "test")].values()))
        assert abs(test.mean()) < 1e-12 and abs(test.std() - 1.0) < 1e-12
        raw_train = np.array(list(folder.files[(m, "00", "train")].values()))
        mean, std = stats[m]  # the test-clip statistics normalise the training clips too
        np.testing.assert_allclose(list(z.files[(m, "00", "train")].values()), (raw_train - mean) / std, atol=1e-12)
        assert z.files[(m, "00", "train")].keys() == folder.files[(m, "00", "train")].keys()


def test_weights_one_zero_reproduce_model_a(tmp_path, dataset):
    a = write_folder(tmp_path / "a", dataset, random_scorer(1))
    b = write_folder(tmp_path / "b", dataset, random_scorer(2, signal=-1.0))
    folders, with_train = ensemble.read_score_folders([a, b])
    assert with_train
    fused = ensemble.fuse(folders, [1.0, 0.0])
    write_score_folder(tmp_path / "ab", fused)
    truths = metrics.truth_from_dataset(dataset)
    assert metrics.summarize(metrics.evaluate_sections(truths, tmp_path / "ab")) == metrics.summarize(metrics.evaluate_sections(truths, a))
    for key, rows in folders[0].files.items():  # same clips, same order, same ranking
        assert list(fused[key]) == list(rows)
        assert np.argsort(list(fused[key].values())).tolist() == np.argsort(list(rows.values())).tolist()


def test_fusion_is_the_weighted_sum_of_z_scores(tmp_path, dataset):
    paths = [write_folder(tmp_path / n, dataset, random_scorer(i)) for i, n in enumerate("abc")]
    folders, _ = ensemble.read_score_folders(paths)
    fused = ensemble.fuse(folders, [0.2, 0.5, 0.3])
    z = [ensemble.z_normalise(f) for f in folders]
    for key, rows in fused.items():
        for name, value in rows.items():
            assert value == pytest.approx(sum(w * zf.files[key][name] for w, zf in zip((0.2, 0.5, 0.3), z)), abs=1e-12)


def test_differing_clip_lists_are_refused(tmp_path, dataset):
    a = write_folder(tmp_path / "a", dataset, random_scorer(1))
    b = write_folder(tmp_path / "b", dataset, random_scorer(2))
    f = b / "anomaly_score_valve_section_00_test.csv"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[1:]) + "\n")
    dropped = lines[0].split(",")[0]
    with pytest.raises(AsdError) as err:
        ensemble.read_score_folders([a, b])
    assert str(err.value) == f"{b}: anomaly_score_valve_section_00_test.csv lists other clips than in {a}: lacks {dropped}"
    (b / "anomaly_score_valve_section_00_test.csv").unlink()
    with pytest.raises(AsdError, match=rf"{b}: holds other score files than {a}: lacks anomaly_score_valve_section_00_test.csv"):
        ensemble.read_score_folders([a, b])


@pytest.mark.parametrize(
    "weights, message",
    [([0.0, 0.0], "must sum to a positive number"), ([1.0, -0.5], "must not be negative"),
     ([1.0], "1 weights for 2 score folders"), ([float("nan"), 1.0], "must be finite")],
)
def test_bad_weights_are_refused(tmp_path, dataset, weights, message):
    folders, _ = ensemble.read_score_folders([write_folder(tmp_path / n, dataset, random_scorer(i)) for i, n in enumerate("ab")])
    with pytest.raises(AsdError, match=message):
        ensemble.fuse(folders, weights)


@pytest.mark.parametrize("n_models, step", [(1, 0.1), (2, 0.1), (3, 0.25), (4, 0.05), (7, 0.1), (3, 1.0)])
def test_simplex_grid_has_every_point_once(n_models, step):
    grid = ensemble.simplex_grid(n_models, step)
    m = round(1 / step)
    assert len(grid) == math.comb(m + n_models - 1, n_models - 1) == ensemble.grid_size(n_models, step)
    assert grid.shape[1] == n_models and np.all(grid >= 0)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(grid * m, np.round(grid * m), atol=1e-9)
    assert len(np.unique(np.round(grid * m).astype(int), axis=0)) == len(grid)


@pytest.mark.parametrize("step", [0.0, 0.3, 1.5, -0.1])
def test_bad_grid_step_is_refused(step):
    with pytest.raises(AsdError, match="grid step"):
        ensemble.simplex_grid(3, step)


def test_roc_area_rows_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(4, 40))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        s = rng.integers(0, 4, size=(6, n)).astype(float) if trial % 2 else rng.normal(size=(6, n))
        for max_fpr in (None, 0.1):
            expected = [roc_auc_score(y, row, max_fpr=max_fpr) for row in s]
            np.testing.assert_allclose(ensemble.roc_area_rows(y, s, max_fpr), expected, atol=1e-14)


def test_grid_search_finds_the_known_best_weights(tmp_path, dataset):
    # A is perfect on fan and reversed on valve, B = -A: only equal weights avoid a zero AUC somewhere
    a = write_folder(tmp_path / "a", dataset, lambda c: (1.0 if c.label == 1 else 0.0) * (1 if c.machine == "fan" else -1) + 0.01 * c.domain_id)
    b = write_folder(tmp_path / "b", dataset, lambda c: -((1.0 if c.label == 1 else 0.0) * (1 if c.machine == "fan" else -1) + 0.01 * c.domain_id))
    folders, _ = ensemble.read_score_folders([a, b])
    ranked = ensemble.grid_search(folders, metrics.truth_from_dataset(dataset), step=0.1)
    assert len(ranked) == 11
    assert ranked[0].weights == (0.5, 0.5) and ranked[0].official_score == pytest.approx(0.5, abs=1e-12)
    assert all(p.official_score < 1e-6 for p in ranked[1:])


def test_grid_search_scores_equal_the_official_metrics(tmp_path, dataset):
    paths = [write_folder(tmp_path / n, dataset, random_scorer(i, signal=0.5 * i)) for i, n in enumerate("abc")]
    folders, _ = ensemble.read_score_folders(paths)
    truths = metrics.truth_from_dataset(dataset)
    ranked = ensemble.grid_search(folders, truths, step=0.1)
    assert len(ranked) == 66 and [p.official_score for p in ranked] == sorted((p.official_score for p in ranked), reverse=True)
    for point in ranked[:3] + ranked[30:33] + ranked[-2:]:
        fused = ensemble.fuse(folders, point.weights, with_train=False)
        by_machine = {m: rows for (m, _, _), rows in fused.items()}
        summary = metrics.summarize(metrics.evaluate_scores(truths, by_machine))
        assert point.official_score == pytest.approx(summary["official_score"], abs=1e-12)
        assert point.arithmetic_mean == pytest.approx(summary["arithmetic_mean"], abs=1e-12)


def test_grid_search_breaks_ties_by_arithmetic_mean(tmp_path, dataset):
    # A separates perfectly: every weight vector with enough A ties at official score 1
    a = write_folder(tmp_path / "a", dataset, lambda c: float(c.label == 1) * 10 + 0.001 * c.domain_id)
    b = write_folder(tmp_path / "b", dataset, random_scorer(5, signal=0.5))
    folders, _ = ensemble.read_score_folders([b, a])
    ranked = ensemble.grid_search(folders, metrics.truth_from_dataset(dataset), step=0.1)
    assert ranked[0].weights == (0.0, 1.0) and ranked[0].official_score == 1.0
    keys = [(-p.official_score, -p.arithmetic_mean) for p in ranked]
    assert keys == sorted(keys)
    assert ranked[-1].weights == (1.0, 0.0)


# --- asdtool ensemble --------------------------------------------------------------------------


def _detect(tmp_path, dataset, name, seed):
    emb = write_toy_store(tmp_path / f"{name}.h5", dataset, seed=seed, gap=0.8)
    r = runner.invoke(app, ["detect", "--embeddings", str(emb), "--out", str(tmp_path / name)])
    assert r.exit_code == 0, r.output
    return tmp_path / name


def test_cli_ensemble_with_weights(tmp_path, dataset):
    a, b = _detect(tmp_path, dataset, "a", 0), _detect(tmp_path, dataset, "b", 1)
    out = tmp_path / "system1"
    r = runner.invoke(app, ["ensemble", "--scores", str(a), "--scores", str(b), "--weights", "0.25", "--weights", "0.75",
                            "--out", str(out), "--data-root", str(dataset.root)])
    assert r.exit_code == 0, r.output
    assert "official score" in r.output and "0.25 a, 0.75 b" in r.output
    expected = ensemble.fuse(ensemble.read_score_folders([a, b])[0], [0.25, 0.75])
    assert len(expected) == 4  # test and train of both machines
    for (m, section, split), rows in expected.items():
        got = metrics.read_score_csv(out / metrics.score_file_name(m, section, split))
        assert list(got) == list(rows) and np.allclose(list(got.values()), list(rows.values()), rtol=0, atol=1e-12)
    fused_store = store.read_store(out / "scores.h5", store.SCORES)
    src = store.read_store(a / "scores.h5")
    assert fused_store.meta.clips_sha256 == src.meta.clips_sha256 and fused_store.meta.model == "ensemble(0.25*toy, 0.75*toy)"
    for key, g in fused_store.groups.items():
        assert g.file_names == src.groups[key].file_names
        np.testing.assert_allclose(g.values, [expected[(key[0], "00", key[1])][n] for n in g.file_names], atol=1e-12)


def test_cli_ensemble_search(tmp_path, dataset):
    folders = [write_folder(tmp_path / n, dataset, random_scorer(i, signal=0.5 + 0.3 * i)) for i, n in enumerate("abc")]
    out, js = tmp_path / "best", tmp_path / "search" / "weights.json"
    args = ["ensemble", *[x for f in folders for x in ("--scores", str(f))], "--out", str(out), "--search",
            "--data-root", str(dataset.root), "--step", "0.25", "--top", "4", "--search-out", str(js)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    result = json.loads(js.read_text())
    assert result["models"] == ["a", "b", "c"] and len(result["top"]) == 4
    ranked = ensemble.grid_search(ensemble.read_score_folders(folders)[0], metrics.truth_from_dataset(dataset), 0.25)
    assert result["best"] == {"weights": list(ranked[0].weights), "official_score": ranked[0].official_score}
    assert result["top"][0]["weights"] == result["best"]["weights"]
    assert [t["weights"] for t in result["top"]] == [list(p.weights) for p in ranked[:4]]
    assert "grid search: 15 weight vectors" in r.output
    summary = metrics.summarize(metrics.evaluate_sections(metrics.truth_from_dataset(dataset), out))
    assert summary["official_score"] == pytest.approx(result["best"]["official_score"], abs=1e-12)
    assert not (out / "scores.h5").exists()  # the inputs had none


@pytest.mark.parametrize("case", ["mismatch", "zero_sum", "negative", "search_without_truth"])
def test_cli_ensemble_bad_input_writes_nothing(tmp_path, dataset, case):
    a = write_folder(tmp_path / "a", dataset, random_scorer(1))
    b = write_folder(tmp_path / "b", dataset, random_scorer(2))
    weights = {"zero_sum": ["0", "0"], "negative": ["1", "-1"]}.get(case, ["0.5", "0.5"])
    args = ["ensemble", "--scores", str(a), "--scores", str(b), "--out", str(tmp_path / "out")]
    if case == "search_without_truth":
        args += ["--search"]
        expected = "--search needs --data-root"
    else:
        args += ["--weights", weights[0], "--weights", weights[1]]
        expected = {"mismatch": "lists other clips than in", "zero_sum": "must sum to a positive number", "negative": "must not be negative"}[case]
    if case == "mismatch":
        f = b / "anomaly_score_fan_section_00_train.csv"
        f.write_text("\n".join(f.read_text().splitlines()[:-1]) + "\n")
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
