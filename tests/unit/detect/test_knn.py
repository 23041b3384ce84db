import itertools

import numpy as np
import pytest

from asdtool.data import store
from asdtool.detect import knn as detect
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


# --- SMOTE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 0.5, 2.0])
def test_smote_makes_target_count_ratio_times_source(ratio):
    src, tgt = _domains()
    r = detect.smote_target_domain(src, tgt, ratio=ratio, k=5, seed=0)
    assert r.skipped == "" and r.k == 5
    assert r.target_count == round(ratio * len(src))
    assert r.synthetic.shape == (round(ratio * len(src)) - len(tgt), src.shape[1])


def test_smote_points_are_convex_combinations_of_two_target_points():
    src, tgt = _domains()
    r = detect.smote_target_domain(src, tgt, ratio=1.0, k=3, seed=1)
    # independent check: each synthetic point lies on the segment of some pair of target points
    for z in r.synthetic:
        best = np.inf
        for a, b in itertools.combinations(tgt, 2):
            t = np.clip(np.dot(z - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
            best = min(best, np.linalg.norm(a + t * (b - a) - z))
        assert best < 1e-12
    # and the recovered parents are such a pair
    assert np.all(r.parents >= 0) and np.all(r.parents[:, 0] != r.parents[:, 1])
    a, b = tgt[r.parents[:, 0]], tgt[r.parents[:, 1]]
    t = np.einsum("sd,sd->s", r.synthetic - a, b - a) / np.einsum("sd,sd->s", b - a, b - a)
    assert np.all((t >= -1e-9) & (t <= 1 + 1e-9))
    np.testing.assert_allclose(a + t[:, None] * (b - a), r.synthetic, atol=1e-12)


def test_smote_ratio_zero_disables_and_few_targets_skip():
    src, tgt = _domains()
    off = detect.smote_target_domain(src, tgt, ratio=0.0)
    assert off.synthetic.shape == (0, src.shape[1]) and off.target_count == len(tgt) and "ratio 0" in off.skipped
    one = detect.smote_target_domain(src, tgt[:1], ratio=1.0)
    assert len(one.synthetic) == 0 and "needs at least 2" in one.skipped
    enough = detect.smote_target_domain(src[:4], tgt, ratio=1.0)
    assert len(enough.synthetic) == 0 and "already has 6" in enough.skipped


def test_smote_clips_k_and_is_deterministic():
    src, tgt = _domains(n_target=3)
    r = detect.smote_target_domain(src, tgt, ratio=1.0, k=5, seed=7)
    assert r.k == 2 and r.target_count == len(src)
    again = detect.smote_target_domain(src, tgt, ratio=1.0, k=5, seed=7)
    np.testing.assert_array_equal(r.synthetic, again.synthetic)
    other = detect.smote_target_domain(src, tgt, ratio=1.0, k=5, seed=8)
    assert not np.array_equal(r.synthetic, other.synthetic)
    with pytest.raises(AsdError, match="ratio must be 0 or more"):
        detect.smote_target_domain(src, tgt, ratio=-1.0)


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
    train_scores, test_scores, info = detect.detect_machine(train, test, k=k, smote_ratio=ratio, smote_k=3, seed=0)

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
    result = detect.detect_store(s, k=1, smote_ratio=1.0, smote_k=5, seed=0)
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
    a = detect.detect_store(s, seed=3)
    b = detect.detect_store(s, seed=3)
    for key in a.scores:
        np.testing.assert_array_equal(a.scores[key].values, b.scores[key].values)
    with pytest.raises(AsdError, match="k must be 1 or more"):
        detect.detect_store(s, k=0)
    with pytest.raises(AsdError, match="SMOTE ratio must be 0 or more"):
        detect.detect_store(s, smote_ratio=-0.5)


def test_too_few_training_clips_for_leave_one_out():
    train = store.Group(["a.wav"], [0], [0], [""], np.ones((1, 3)))
    with pytest.raises(AsdError, match="too few to score them leave-one-out"):
        detect.detect_machine(train, None, k=1)


# --- domain-wise normalisation -----------------------------------------------------------------

C = 1e-3  # unit of the hand-made cosine distances


def _arc(start, gaps, dim=3):
    """Unit vectors on the xy great circle from angle `start`, consecutive cosine distances `gaps`."""
    angles = start + np.concatenate([[0.0], np.cumsum(np.arccos(1.0 - np.asarray(gaps, dtype=np.float64)))])
    v = np.zeros((len(angles), dim))
    v[:, 0], v[:, 1] = np.cos(angles), np.sin(angles)
    return v


def _tilted(points, distance):
    """Unit vectors at cosine distance `distance` from (the directions of) `points`, tilted along z."""
    phi = np.arccos(1.0 - np.asarray(distance, dtype=np.float64))
    out = _unit(points) * np.cos(phi)[:, None]
    out[:, 2] = np.sin(phi)
    return out


def _group(values, domain):
    n = len(values)
    return store.Group([f"c{i:03d}.wav" for i in range(n)], domain, [0] * n, [""] * n, values)


def _cos(a, b):
    return 1.0 - np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)


def _two_domains(scale=3.0):
    """Source arc of 6 clips, target arc far from it with `scale` x the gaps; test clips tilted off each."""
    gaps = C * np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # leave-one-out 1-NN distances: [1, 1, 2, 3, 4, 5] C
    src, tgt = _arc(0.0, gaps), _arc(np.pi / 2, scale * gaps)
    u = C * np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    train = _group(np.concatenate([src, tgt]), [0] * 6 + [1] * 6)
    test = _group(np.concatenate([_tilted(src, u), _tilted(tgt, scale * u)]), [0] * 6 + [1] * 6)
    return train, test, u


def test_domain_z_puts_a_sparser_target_domain_on_the_source_scale():
    train, test, u = _two_domains(scale=3.0)
    raw_train, raw_test, _ = detect.detect_machine(train, test, smote_ratio=0.0)
    loo = C * np.array([1.0, 1, 2, 3, 4, 5])
    np.testing.assert_allclose(raw_train, np.concatenate([loo, 3 * loo]), rtol=1e-9)
    np.testing.assert_allclose(raw_test, np.concatenate([u, 3 * u]), rtol=1e-9)
    assert raw_test[6:].mean() == pytest.approx(3 * raw_test[:6].mean())  # before: target 3x farther

    z_train, z_test, info = detect.detect_machine(train, test, smote_ratio=0.0, normalise="domain-z")
    mean, std = loo.mean(), loo.std(ddof=1)  # 16/6 C, sqrt(2.6667) C
    assert info.normalisation.stats[0] == pytest.approx((mean, std))
    assert info.normalisation.stats[1] == pytest.approx((3 * mean, 3 * std))
    assert info.normalisation.test_nn_target == 6 and info.normalisation.fallback == ""
    np.testing.assert_allclose(z_test[:6], (u - mean) / std, rtol=1e-7)
    np.testing.assert_allclose(z_test[6:], z_test[:6], rtol=1e-7)  # after: the same distribution
    assert z_test[6:].mean() == pytest.approx(z_test[:6].mean())
    # training clips leave-one-out: the last source clip (5 C) against the other five [1, 1, 2, 3, 4] C
    assert z_train[5] == pytest.approx(2.8 / np.sqrt(1.7))
    for i in range(6):
        others = np.delete(loo, i)
        assert z_train[i] == pytest.approx((loo[i] - others.mean()) / others.std(ddof=1))
    np.testing.assert_allclose(z_train[6:], z_train[:6], rtol=1e-7)


def test_domain_z_counts_smote_points_as_target():
    train, _, _ = _two_domains()
    train = _group(train.values[:9], [0] * 6 + [1] * 3)  # 3 target clips, SMOTE makes 9 more
    raw_train, _, info = detect.detect_machine(train, None, smote_ratio=4.0, smote_k=2)
    x = _unit(train.values)
    sm = detect.smote_target_domain(x[:6], x[6:], 4.0, 2, 0)
    assert len(sm.synthetic) == 21 and info.smote.target_count == 24
    query = _group(np.concatenate([sm.synthetic[:1], x[:1]]), [-1, -1])  # on a SMOTE point; on a source clip
    _, z, got = detect.detect_machine(train, query, smote_ratio=4.0, smote_k=2, normalise="domain-z")
    t, s = raw_train[6:], raw_train[:6]
    np.testing.assert_allclose(z, [-t.mean() / t.std(ddof=1), -s.mean() / s.std(ddof=1)], atol=1e-6)
    assert got.normalisation.test_nn_target == 1


def test_local_density_divides_by_the_neighbours_knn_distance_in_its_domain():
    src = _arc(0.0, C * np.array([1.0, 2.0, 4.0]))  # s0 -1C- s1 -2C- s2 -4C- s3
    tgt = _arc(np.pi / 2, C * np.array([3.0, 5.0]))
    train = _group(np.concatenate([src, tgt]), [0] * 4 + [1] * 3)
    test = _group(_tilted(src[2:3], [C]), [-1])  # 1 C from s2
    d02, d03 = _cos(src[0], src[2]), _cos(src[0], src[3])
    assert d02 > 4 * C  # so s2's two nearest are s1 (2 C) and s3 (4 C)

    raw_train, raw_test, _ = detect.detect_machine(train, test, smote_ratio=0.0)
    for k, r_s2, r_s0_without_s1 in ((1, 2 * C, d02), (2, 3 * C, (d02 + d03) / 2)):
        tr, te, info = detect.detect_machine(train, test, smote_ratio=0.0, normalise="local-density", density_k=k)
        assert te[0] == pytest.approx(C / r_s2)  # 1/2 with k=1, 1/3 with k=2
        # s1 (1 C from s0) leave-one-out: s0's density radius without s1, not the 1 C that is s1 itself
        assert raw_train[1] == pytest.approx(C) and tr[1] == pytest.approx(C / r_s0_without_s1)
        # target clips t0 -3C- t1 -5C- t2: t1 is the neighbour of both ends, its radius without the clip
        # scored is the distance to the other end (k clipped to the one clip left)
        assert raw_train[4] == pytest.approx(3 * C) and tr[4] == pytest.approx(3 / 5)
        assert raw_train[6] == pytest.approx(5 * C) and tr[6] == pytest.approx(5 / 3)
        assert info.normalisation.density_k == {0: k, 1: k}


def test_local_density_leaves_smote_points_out_of_the_density_bank():
    src = _arc(0.0, C * np.ones(8))
    tgt = _arc(np.pi / 2, C * np.array([3.0, 5.0]))  # r(t0) = r(t1) = 3 C, r(t2) = 5 C with k=1
    train = _group(np.concatenate([src, tgt]), [0] * 9 + [1] * 3)
    x = _unit(train.values)
    sm = detect.smote_target_domain(x[:9], x[9:], 2.0, 1, 0)
    z = sm.synthetic[0]
    a, b = sorted(sm.parents[0])
    t = np.dot(z - tgt[a], tgt[b] - tgt[a]) / np.dot(tgt[b] - tgt[a], tgt[b] - tgt[a])
    assert 0 < t < 1 and (a, b) in ((0, 1), (1, 2))
    radius = {0: 3 * C, 1: 3 * C, 2: 5 * C}
    test = _group(_tilted(z[None], [0.5 * C]), [-1])
    _, te, info = detect.detect_machine(train, test, smote_ratio=2.0, smote_k=1, normalise="local-density", density_k=1)
    assert te[0] == pytest.approx(0.5 * C / ((1 - t) * radius[a] + t * radius[b]), rel=1e-6)
    assert info.normalisation.test_nn_target == 1


def test_none_is_the_raw_distance(tmp_path, dataset):
    s = store.read_store(write_toy_store(tmp_path / "e.h5", dataset))
    default, none = detect.detect_store(s), detect.detect_store(s, normalise="none", density_k=5)
    for key, g in default.scores.items():
        np.testing.assert_array_equal(none.scores[key].values, g.values)
    assert all(m.normalisation is None for m in none.machines.values())
    for mode in ("domain-z", "local-density"):  # the toy data's 2 target clips: LOO statistics fall back
        other = detect.detect_store(s, normalise=mode)
        assert all(np.all(np.isfinite(g.values)) for g in other.scores.values())
        assert not np.array_equal(other.scores[("fan", "test")].values, default.scores[("fan", "test")].values)


def test_bad_normalisation_values_are_refused(tmp_path, dataset):
    s = store.read_store(write_toy_store(tmp_path / "e.h5", dataset))
    with pytest.raises(AsdError, match="normalise must be one of none, domain-z, local-density, got 'z'"):
        detect.detect_store(s, normalise="z")
    with pytest.raises(AsdError, match="density k must be an integer of 1 or more, got 0"):
        detect.detect_store(s, normalise="local-density", density_k=0)


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
    expected = detect.detect_store(store.read_store(emb_path), normalise=mode, density_k=3)
    sc = store.read_store(runs[mode] / "scores.h5", store.SCORES)
    for (m, split), g in sc.groups.items():
        np.testing.assert_array_equal(g.values, expected.scores[(m, split)].values)
        rows = [line.split(",") for line in (runs[mode] / f"anomaly_score_{m}_section_00_{split}.csv").read_text().splitlines()]
        np.testing.assert_array_equal([float(v) for _, v in rows], g.values)
