"""Tests for asdtool/detect/knn.py: the k-NN cosine detector, leave-one-out training scores, `asdtool detect`."""

import numpy as np
import pytest

from asdtool.data import store
from asdtool.detect import knn as detect
from asdtool.detect.settings import DetectorSettings as S
from asdtool.evaluate import metrics
from asdtool.core.errors import AsdError

from tests.toydata import synth_dataset, write_toy_store


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth_dataset(tmp_path_factory.mktemp("synth") / "dev")


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)



def _domains(n_source=40, n_target=6, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(n_source, dim))), _unit(rng.normal(size=(n_target, dim)) + 1.0)


def _brute_cosine(bank, query, k=1, excluded=None):
    """Mean cosine distance to the k nearest bank rows, the plain numpy way."""
    d = 1.0 - _unit(query) @ _unit(bank).T
    if excluded is not None:
        for i, e in enumerate(excluded):
            d[i, e] = np.inf
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


# --- k-NN scores -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_knn_scores_equal_brute_force(k, ratio):
    rng = np.random.default_rng(3)
    train = store.Group(
        file_names=[f"c{i}.wav" for i in range(30)],
        domain=[0] * 25 + [1] * 5,
        label=[0] * 30,
        attributes=[""] * 30,
        values=rng.normal(size=(30, 6)) * rng.uniform(0.5, 3, size=(30, 1)),  # norms differ: L2 first
    )
    test = store.Group([f"t{i}.wav" for i in range(9)], [0] * 9, [0] * 9, [""] * 9, rng.normal(size=(9, 6)))
    train_scores, test_scores, info = detect.detect_machine(train, test, S(k=k, smote_ratio=ratio, smote_k=3, seed=0))

    x = _unit(train.values)
    sm = detect.smote_target_domain(x[:25], x[25:], ratio, 3, 0)
    bank = np.concatenate([x, sm.synthetic])
    assert info.bank_size == len(bank) == (30 if ratio == 0 else 50)
    np.testing.assert_allclose(test_scores, _brute_cosine(bank, test.values, k), atol=1e-12)
    # leave-one-out: a clip skips itself and, for target clips, every synthetic point made from it
    excluded = [[i] for i in range(30)]
    for j in range(5):
        excluded[25 + j] += [30 + s for s in np.flatnonzero((sm.parents == j).any(axis=1))]
    np.testing.assert_allclose(train_scores, _brute_cosine(bank, x, k, excluded), atol=1e-12)
    assert np.all(train_scores > 1e-6)  # never its own (or a synthetic copy's) distance 0


def test_detect_store_gives_auc_one_when_anomalies_are_far(tmp_path, dataset):
    s = store.read_store(write_toy_store(tmp_path / "e.h5", dataset, gap=6.0))
    result = detect.detect_store(s, S(k=1, smote_ratio=1.0, smote_k=5, seed=0))
    assert list(result.scores) == list(s.groups)
    for key, g in result.scores.items():
        assert g.file_names == s.groups[key].file_names and g.values.dtype == np.float64
    test = {m: dict(zip(g.file_names, g.values)) for (m, split), g in result.scores.items() if split == "test"}
    summary = metrics.summarize(metrics.evaluate_scores(metrics.truth_from_dataset(dataset), test))
    assert summary["official_score"] == 1.0
    for m in dataset.machines:
        info = result.machines[m]
        assert (info.n_source, info.n_target, info.smote.target_count, info.n_test) == (6, 2, 6, 8)


def test_detect_store_is_deterministic_and_checks_options(tmp_path, dataset):
    s = store.read_store(write_toy_store(tmp_path / "e.h5", dataset))
    a = detect.detect_store(s, S(seed=3))
    b = detect.detect_store(s, S(seed=3))
    for key in a.scores:
        np.testing.assert_array_equal(a.scores[key].values, b.scores[key].values)
    with pytest.raises(AsdError, match="k must be 1 or more"):
        detect.detect_store(s, S(k=0))
    with pytest.raises(AsdError, match="SMOTE ratio must be 0 or more"):
        detect.detect_store(s, S(smote_ratio=-0.5))


def test_too_few_training_clips_for_leave_one_out():
    train = store.Group(["a.wav"], [0], [0], [""], np.ones((1, 3)))
    with pytest.raises(AsdError, match="too few to score them leave-one-out"):
        detect.detect_machine(train, None, S(k=1))


def test_none_is_the_raw_distance(tmp_path, dataset):
    s = store.read_store(write_toy_store(tmp_path / "e.h5", dataset))
    default, none = detect.detect_store(s), detect.detect_store(s, S(normalise="none", density_k=5))
    for key, g in default.scores.items():
        np.testing.assert_array_equal(none.scores[key].values, g.values)
    assert all(m.normalisation is None for m in none.machines.values())
    for mode in ("domain-z", "local-density"):  # the toy data's 2 target clips: LOO statistics fall back
        other = detect.detect_store(s, S(normalise=mode))
        assert all(np.all(np.isfinite(g.values)) for g in other.scores.values())
        assert not np.array_equal(other.scores[("fan", "test")].values, default.scores[("fan", "test")].values)


def test_bad_normalisation_values_are_refused(tmp_path, dataset):
    s = store.read_store(write_toy_store(tmp_path / "e.h5", dataset))
    with pytest.raises(AsdError, match="normalise must be one of none, domain-z, local-density, got 'z'"):
        detect.detect_store(s, S(normalise="z"))
    with pytest.raises(AsdError, match="density k must be an integer of 1 or more, got 0"):
        detect.detect_store(s, S(normalise="local-density", density_k=0))


# --- asdtool detect ----------------------------------------------------------------------------


def test_cli_detect_writes_the_score_folder(tmp_path, dataset):
    from typer.testing import CliRunner

    from asdtool.cli import app

    emb_path = write_toy_store(tmp_path / "embeddings" / "toy.h5", dataset, gap=1.0)
    out = tmp_path / "scores" / "toy"
    r = CliRunner().invoke(app, ["detect", "--embeddings", str(emb_path), "--out", str(out), "--data-root", str(dataset.root),
                                "--k", "1", "--smote-ratio", "1.0", "--smote-k", "5", "--seed", "0"])
    assert r.exit_code == 0, r.output
    assert "fan" in r.output and "valve" in r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"anomaly_score_{m}_section_00_{s}.csv" for m in ("fan", "valve") for s in ("test", "train")] + ["scores.h5"]
    )
    emb = store.read_store(emb_path)
    sc = store.read_store(out / "scores.h5", store.SCORES)
    assert (sc.meta.model, sc.meta.checkpoint_sha256, sc.meta.clips_sha256) == (emb.meta.model, emb.meta.checkpoint_sha256, emb.meta.clips_sha256)
    expected = detect.detect_store(emb)
    for (m, split), g in sc.groups.items():
        assert g.file_names == emb.groups[(m, split)].file_names  # store order
        rows = [line.split(",") for line in (out / f"anomaly_score_{m}_section_00_{split}.csv").read_text().splitlines()]
        assert [n for n, _ in rows] == g.file_names
        np.testing.assert_array_equal([float(v) for _, v in rows], g.values)
        np.testing.assert_array_equal(g.values, expected.scores[(m, split)].values)
    summary = metrics.summarize(metrics.evaluate_sections(metrics.truth_from_dataset(dataset), out))
    assert summary["official_score"] > 0.5
    r = CliRunner().invoke(app, ["evaluate", "--scores", str(out), "--data-root", str(dataset.root), "--decisions"])
    assert r.exit_code == 0, r.output  # the _train.csv files feed the decision thresholds


@pytest.mark.parametrize("case", ["nan", "other_clips", "bad_k", "bad_density_k"])
def test_cli_detect_bad_input_writes_nothing(tmp_path, dataset, case):
    import h5py
    from typer.testing import CliRunner

    from asdtool.cli import app

    emb_path = write_toy_store(tmp_path / "toy.h5", dataset)
    args = ["detect", "--embeddings", str(emb_path), "--out", str(tmp_path / "scores")]
    if case == "nan":
        with h5py.File(emb_path, "r+") as f:
            f["valve/train/embeddings"][0, 0] = np.nan
        expected = "NaN or infinite embeddings"
    elif case == "other_clips":
        from asdtool.data.synth.dev import SynthSizes, synthesize

        other = tmp_path / "other"
        synthesize(other, sizes=SynthSizes(0.5, 5, 2, 2), machines=("fan", "valve"))
        args += ["--data-root", str(other)]
        expected = "built from another clip list than"
    elif case == "bad_density_k":
        args += ["--normalise", "local-density", "--density-k", "0"]
        expected = "--density-k must be at least 1, got 0"
    else:
        args += ["--k", "0"]
        expected = "--k must be at least 1, got 0"
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], r.output
    assert not (tmp_path / "scores").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "other") == ["toy.h5"]


def test_cli_detect_unknown_normalisation_is_one_line(tmp_path, dataset, capsys):
    from asdtool.cli import main

    emb_path = write_toy_store(tmp_path / "toy.h5", dataset)
    assert main(["detect", "--embeddings", str(emb_path), "--out", str(tmp_path / "scores"), "--normalise", "z"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'z' is not one of 'none', 'domain-z', 'local-density'" in lines[0], lines
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize("mode", ["domain-z", "local-density"])
def test_cli_detect_normalise_records_the_choice_in_scores_h5(tmp_path, dataset, mode):
    import h5py
    from typer.testing import CliRunner

    from asdtool.cli import app

    emb_path = write_toy_store(tmp_path / "toy.h5", dataset, gap=1.0)
    runs = {}
    for name, extra in (("none", []), (mode, ["--normalise", mode, "--density-k", "3"])):
        runs[name] = tmp_path / "scores" / name
        r = CliRunner().invoke(app, ["detect", "--embeddings", str(emb_path), "--out", str(runs[name]), *extra])
        assert r.exit_code == 0, r.output
        assert mode in r.output if extra else mode not in r.output
    with h5py.File(runs["none"] / "scores.h5", "r") as f:
        assert not any(key.startswith("detect_") for key in f.attrs)  # none: the scores.h5 of before
    with h5py.File(runs[mode] / "scores.h5", "r") as f:
        assert f.attrs["detect_normalise"] == mode
        assert ("detect_density_k" in f.attrs) == (mode == "local-density")
        if mode == "local-density":
            assert int(f.attrs["detect_density_k"]) == 3
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == sorted(["none", mode])  # no staging left
    expected = detect.detect_store(store.read_store(emb_path), S(normalise=mode, density_k=3))
    sc = store.read_store(runs[mode] / "scores.h5", store.SCORES)
    for (m, split), g in sc.groups.items():
        np.testing.assert_array_equal(g.values, expected.scores[(m, split)].values)
        rows = [line.split(",") for line in (runs[mode] / f"anomaly_score_{m}_section_00_{split}.csv").read_text().splitlines()]
        np.testing.assert_array_equal([float(v) for _, v in rows], g.values)
