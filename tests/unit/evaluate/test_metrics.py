import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from asdtool.evaluate import metrics
from asdtool.core.errors import AsdError

# One section, hand-computed: source normals 0.1, 0.4; target normals 0.35, 0.8; anomalies 0.3 (source), 0.9 (target)
NAMES = ["sn1", "sn2", "tn1", "tn2", "sa", "ta"]
Y = np.array([0, 0, 0, 0, 1, 1])
D = np.array([0, 0, 1, 1, 0, 1])
S = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])


def test_section_metrics_by_hand():
    auc_s, auc_t, pauc = metrics.section_metrics(Y, S, D)
    # AUC source: normals {0.1, 0.4} vs all anomalies {0.3, 0.9}: 3 of 4 pairs ordered
    assert auc_s == pytest.approx(0.75, abs=1e-12)
    # AUC target: normals {0.35, 0.8} vs {0.3, 0.9}: 2 of 4
    assert auc_t == pytest.approx(0.5, abs=1e-12)
    # pAUC: raw area up to FPR 0.1 is 0.1 * 0.5 = 0.05; McClish: 0.5 * (1 + (0.05 - 0.005) / (0.1 - 0.005)) = 14/19
    assert pauc == pytest.approx(14 / 19, abs=1e-12)


def test_hmean_floors_at_epsilon():
    assert metrics.hmean([0.75, 0.5, 14 / 19]) == pytest.approx(126 / 197, abs=1e-12)
    assert metrics.hmean([0.0, 1.0]) == pytest.approx(2 * metrics.EPS, rel=1e-6)


def _truth(machine, names, y, d):
    return metrics.SectionTruth(machine, "00", dict(zip(names, map(int, y))), dict(zip(names, map(int, d))))


def test_summary_shape_and_values(tmp_path):
    metrics.write_score_csv(tmp_path / "anomaly_score_fan_section_00_test.csv", dict(zip(NAMES, S)))
    rng = np.random.default_rng(1)
    s2 = rng.random(6)
    metrics.write_score_csv(tmp_path / "anomaly_score_valve_section_00_test.csv", dict(zip(NAMES, s2)))
    truths = [_truth("fan", NAMES, Y, D), _truth("valve", NAMES, Y, D)]
    summary = metrics.summarize(metrics.evaluate_sections(truths, tmp_path))
    assert set(summary) == {"official_score", "arithmetic_mean", "hmean_auc_source", "hmean_auc_target", "hmean_pauc", "machines"}
    assert set(summary["machines"]["fan"]) == {"auc_source", "auc_target", "pauc", "hmean"}
    assert summary["machines"]["fan"]["hmean"] == pytest.approx(126 / 197, abs=1e-12)
    v = metrics.section_metrics(Y, s2, D)
    all_values = [0.75, v[0], 0.5, v[1], 14 / 19, v[2]]
    assert summary["official_score"] == pytest.approx(scipy.stats.hmean(all_values), abs=1e-12)
    assert summary["arithmetic_mean"] == pytest.approx(np.mean(all_values), abs=1e-12)
    assert summary["hmean_auc_source"] == pytest.approx(scipy.stats.hmean([0.75, v[0]]), abs=1e-12)
    assert summary["hmean_pauc"] == pytest.approx(scipy.stats.hmean([14 / 19, v[2]]), abs=1e-12)


def _reference_official(truth_rows, score_rows):
    """The organisers' evaluator, transcribed as plain definitions: arrays in sorted file-name order."""
    perf_s, perf_t, perf_p = [], [], []
    for machine in truth_rows:
        gt = sorted(truth_rows[machine])  # (name, label, domain)
        sc = sorted(score_rows[machine])  # (name, score)
        y = np.array([r[1] for r in gt])
        d = np.array([r[2] for r in gt])
        s = np.array([r[1] for r in sc])
        perf_p.append(roc_auc_score(y, s, max_fpr=0.1))
        for dom, acc in ((0, perf_s), (1, perf_t)):
            keep = (d == dom) | (y != 0)
            acc.append(roc_auc_score(y[keep], s[keep]))
    eps = np.finfo(float).eps
    return {
        "official_score": scipy.stats.hmean(np.maximum(perf_s + perf_t + perf_p, eps)),
        "hmean_auc_source": scipy.stats.hmean(np.maximum(perf_s, eps)),
        "hmean_auc_target": scipy.stats.hmean(np.maximum(perf_t, eps)),
        "hmean_pauc": scipy.stats.hmean(np.maximum(perf_p, eps)),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_official_definitions_on_random_submissions(tmp_path, seed):
    rng = np.random.default_rng(seed)
    truth_rows, score_rows, truths = {}, {}, []
    for machine in ["bearing", "fan", "ToyCar"]:
        names = [f"section_00_{i:04d}.wav" for i in rng.permutation(200)]
        y = rng.integers(0, 2, 200)
        d = rng.integers(0, 2, 200)
        y[:4], d[:4] = [0, 1, 0, 1], [0, 0, 1, 1]
        # scores with ties and a real signal, written in a shuffled order
        s = np.round(rng.normal(size=200) + 0.8 * y, 1)
        truth_rows[machine] = list(zip(names, y, d))
        score_rows[machine] = list(zip(names, s))
        order = rng.permutation(200)
        metrics.write_score_csv(tmp_path / f"anomaly_score_{machine}_section_00_test.csv", [(names[i], s[i]) for i in order])
        truths.append(_truth(machine, names, y, d))
    ours = metrics.summarize(metrics.evaluate_sections(truths, tmp_path))
    ref = _reference_official(truth_rows, score_rows)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-9)


def test_score_csv_round_trip_is_exact(tmp_path):
    p = tmp_path / "s.csv"
    vals = {"a.wav": 0.1 + 0.2, "b.wav": -1e-300, "c.wav": 12345.678901234567}
    metrics.write_score_csv(p, vals)
    assert metrics.read_score_csv(p) == vals
    assert "\r" not in p.read_text() and not p.read_text().startswith("file_name")


@pytest.mark.parametrize(
    "text, message",
    [
        ("a.wav,0.1\na.wav,0.2\n", "duplicated clips: a.wav"),
        ("a.wav,nan\nb.wav,inf\n", "non-finite scores for a.wav, b.wav"),
        ("a.wav,0.1,3\n", "line 1 has 3 fields"),
        ("a.wav,high\n", "is not a number"),
        ("", "score file is empty"),
    ],
)
def test_bad_score_files(tmp_path, text, message):
    p = tmp_path / "anomaly_score_fan_section_00_test.csv"
    p.write_text(text)
    with pytest.raises(AsdError, match=message) as e:
        metrics.read_score_csv(p)
    assert str(e.value).startswith(str(p))


def test_missing_and_extra_clips_are_named(tmp_path):
    truth = _truth("fan", NAMES, Y, D)
    with pytest.raises(AsdError, match="misses 1 clip.*ta"):
        metrics.align_scores(truth, dict(zip(NAMES[:-1], S)), "f.csv")
    with pytest.raises(AsdError, match="not in the ground truth: zz.wav"):
        metrics.align_scores(truth, {**dict(zip(NAMES, S)), "zz.wav": 1.0}, "f.csv")
    with pytest.raises(AsdError, match="score file does not exist"):
        metrics.evaluate_sections([truth], tmp_path)


def test_truth_from_organisers_folder_with_renamed_clips(tmp_path):
    gt = tmp_path / "gt"
    for sub in ("ground_truth_data", "ground_truth_domain", "ground_truth_attributes"):
        (gt / sub).mkdir(parents=True)
    eval_names = [f"section_00_{i:04d}.wav" for i in range(6)]
    f = "ground_truth_Scanner_section_00_test.csv"
    (gt / "ground_truth_data" / f).write_text("".join(f"{n},{y}\n" for n, y in zip(eval_names, Y)))
    (gt / "ground_truth_domain" / f).write_text("".join(f"{n},{d}\n" for n, d in zip(eval_names, D)))
    renamed = [f"section_00_{'st'[d]}_test_{'na'[y]}_{i:04d}_noAttribute" for i, (y, d) in enumerate(zip(Y, D))]
    (gt / "ground_truth_attributes" / f).write_text(
        "".join(f"{e},{r},{r.replace('noAttribute', 'x_1')}.wav\n" for e, r in zip(eval_names, renamed))
    )
    truths = metrics.truth_from_folder(gt)
    assert [(t.machine, t.section) for t in truths] == [("Scanner", "00")]
    # a submission may name clips by their eval names or by the renamed ones
    by_eval = metrics.align_scores(truths[0], dict(zip(eval_names, S)), "x")
    by_renamed = metrics.align_scores(truths[0], {f"{r}.wav": s for r, s in zip(renamed, S)}, "x")
    np.testing.assert_array_equal(by_eval, by_renamed)
    np.testing.assert_array_equal(by_eval, S)


def test_truth_folder_errors(tmp_path):
    with pytest.raises(AsdError, match="no ground_truth_data/"):
        metrics.truth_from_folder(tmp_path)
    (tmp_path / "ground_truth_data").mkdir()
    (tmp_path / "ground_truth_domain").mkdir()
    (tmp_path / "ground_truth_data" / "ground_truth_fan_section_00_test.csv").write_text("a.wav,0\nb.wav,2\n")
    with pytest.raises(AsdError, match="line 2 is not file_name,0|1"):
        metrics.truth_from_folder(tmp_path)


def test_section_without_both_classes(tmp_path):
    with pytest.raises(AsdError, match="both normal and anomalous"):
        metrics.section_metrics(np.zeros(4, int), np.arange(4.0), np.array([0, 0, 1, 1]))


def test_gamma_decision_threshold():
    rng = np.random.default_rng(0)
    train = scipy.stats.gamma.rvs(3.0, loc=0.0, scale=0.1, size=5000, random_state=rng)
    thr = metrics.decision_threshold(train)
    assert thr == pytest.approx(scipy.stats.gamma.ppf(0.9, 3.0, scale=0.1), rel=0.05)
    assert metrics.decide({"a": thr + 1e-9, "b": thr}, thr) == {"a": 1, "b": 0}
    with pytest.raises(AsdError):
        metrics.decision_threshold([1.0, math.nan, 2.0])


def _write_fan_scores(folder):
    metrics.write_score_csv(folder / "anomaly_score_fan_section_00_test.csv", dict(zip(NAMES, S)))
    return [_truth("fan", NAMES, Y, D)]


def test_score_file_of_unknown_machine_is_refused(tmp_path):
    truths = _write_fan_scores(tmp_path) + [_truth("bearing", NAMES, Y, D)]
    metrics.write_score_csv(tmp_path / "anomaly_score_bearing_section_00_test.csv", dict(zip(NAMES, S)))
    stray = tmp_path / "anomaly_score_pump_section_00_test.csv"
    metrics.write_score_csv(stray, dict(zip(NAMES, S)))
    with pytest.raises(AsdError) as e:
        metrics.evaluate_sections(truths, tmp_path)
    assert str(e.value) == f"{stray}: machine type 'pump' section 00 is not in the ground truth (known: bearing, fan)"


def test_score_file_of_unknown_section_is_refused(tmp_path):
    truths = _write_fan_scores(tmp_path)
    stray = tmp_path / "anomaly_score_fan_section_01_test.csv"
    metrics.write_score_csv(stray, dict(zip(NAMES, S)))
    with pytest.raises(AsdError) as e:
        metrics.evaluate_sections(truths, tmp_path)
    assert str(e.value) == f"{stray}: machine type 'fan' section 01 is not in the ground truth (known sections of fan: 00)"


def test_other_files_in_the_score_folder_are_allowed(tmp_path):
    truths = _write_fan_scores(tmp_path)
    expected = metrics.summarize(metrics.evaluate_sections(truths, tmp_path))
    for name in ("scores.h5", "anomaly_score_fan_section_00_train.csv", "anomaly_score_pump_section_00_train.csv",
                 "decision_result_pump_section_00_test.csv", "notes.txt", "anomaly_score_pump.csv"):
        (tmp_path / name).write_text("x.wav,0.5\n")
    (tmp_path / "sub").mkdir()
    assert metrics.summarize(metrics.evaluate_sections(truths, tmp_path)) == expected


def test_score_file_name_pattern():
    for machine, section, split in (("ToyCar", "00", "test"), ("fan", "01", "train"), ("my-machine_2", "00", "test")):
        m = metrics.SCORE_FILE.match(metrics.score_file_name(machine, section, split))
        assert (m["machine"], m["section"], m["split"]) == (machine, section, split)
    assert metrics.SCORE_FILE.match(metrics.decision_file_name("fan")) is None


def test_few_shortens_lists():
    from asdtool.core.errors import few

    assert few([]) == ""
    assert few(["b", "a"]) == "a, b"
    assert few(["d", "c", "b", "a"]) == "a, b, c and 1 more"
    assert few("gfedcba", 5) == "a, b, c, d, e and 2 more"
    assert few(iter(["x", "y"]), 0) == "2 more"
    assert few([3, 10, 2]) == "10, 2, 3"  # shown and sorted as strings
