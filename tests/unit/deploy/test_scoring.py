"""`asdtool.deploy.scoring`: a bundle scores new recordings exactly as detect (and ensemble) scored them, window by window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asdtool.data.audio import read_channels
from asdtool.deploy.export import export_bundle
from asdtool.deploy.inputs import recording_of
from asdtool.deploy.load import load_bundle
from asdtool.deploy.scoring import score_recordings, window_starts
from asdtool.detect.ensemble import ensemble_to_folder
from asdtool.detect.knn import detect_to_folder
from asdtool.evaluate import metrics
from asdtool.detect.settings import DetectorSettings

from tests.unit.deploy.conftest import MACHINES, _detect_scores, _test_recordings


@pytest.mark.parametrize("model,normalise", [("full", "domain-z"), ("full", "local-density"), ("lora", "none")])
def test_a_bundle_scores_every_test_clip_as_detect_did(fitted, tmp_path, model, normalise):
    base = fitted["base"]
    path = tmp_path / "b.asd"
    export_bundle([fitted[model]], [base / f"{model}.h5"], path, settings=DetectorSettings(normalise=normalise))
    bundle = load_bundle(path)
    assert bundle.machines == {"fan": ["00"], "valve": ["00"]} and bundle.weights is None
    scores_dir = tmp_path / "scores"
    detect_to_folder(base / f"{model}.h5", scores_dir, settings=DetectorSettings(normalise=normalise))
    for machine in MACHINES:
        results = score_recordings(bundle, _test_recordings(bundle, fitted["data"], machine))
        expected = _detect_scores(scores_dir, machine)
        got = {Path(r.name).name: r.score for r in results}
        assert got.keys() == expected.keys()
        assert max(abs(got[n] - expected[n]) for n in got) < 1e-5  # LoRA: merged into the weights, ~1e-9 here
        # the threshold is the gamma fit of the training clips' own scores, as submit fits it
        train = metrics.read_score_csv(scores_dir / metrics.score_file_name(machine, "00", "train"))
        assert bundle.thresholds[(machine, "00")] == pytest.approx(metrics.decision_threshold(list(train.values())), rel=1e-9)
        assert all(r.decision == int(r.score > r.threshold) for r in results)


def test_a_system_bundle_fuses_its_members_as_ensemble_did(fitted, tmp_path):
    base = fitted["base"]
    weights = [0.3, 0.7]
    path = tmp_path / "system.asd"
    export_bundle([fitted["full"], fitted["full2"]], [base / "full.h5", base / "full2.h5"], path, weights=weights,
                  settings=DetectorSettings(normalise="domain-z"))  # fmt: skip
    ensemble_to_folder([base / "scores-full-z", base / "scores-full2-z"], tmp_path / "fused", weights=weights)
    bundle = load_bundle(path)
    assert bundle.meta["kind"] == "system" and bundle.weights == weights
    for machine in MACHINES:
        got = {Path(r.name).name: r.score for r in score_recordings(bundle, _test_recordings(bundle, fitted["data"], machine))}
        expected = _detect_scores(tmp_path / "fused", machine)
        assert max(abs(got[n] - expected[n]) for n in expected) < 1e-5
        train = metrics.read_score_csv(tmp_path / "fused" / metrics.score_file_name(machine, "00", "train"))
        assert bundle.thresholds[(machine, "00")] == pytest.approx(metrics.decision_threshold(list(train.values())), rel=1e-9)


def test_a_long_recording_is_scored_window_by_window_and_flags_its_anomalous_part(fitted, tmp_path):
    base = fitted["base"]
    path = tmp_path / "b.asd"
    export_bundle([fitted["full"]], [base / "full.h5"], path, settings=DetectorSettings(normalise="domain-z"))
    bundle = load_bundle(path)
    scores = _detect_scores(base / "scores-full-z", "fan")
    threshold = bundle.thresholds[("fan", "00")]
    normal = min((n for n in scores if "_normal_" in n), key=scores.get)
    test = fitted["data"] / "fan" / "test"
    wave = read_channels(test / normal, None)[0]
    # the same machine with an impact fault: a click every 25 ms (the fixture's 6-step model misses the subtle
    # synthetic faults, so the anomaly is a gross one)
    faulty = wave + 0.8 * (np.arange(len(wave)) % 400 < 16)
    long = tmp_path / "fan" / "recording.wav"
    long.parent.mkdir()
    sf.write(long, np.concatenate([wave, faulty]), 16000, subtype="FLOAT")
    rec = recording_of(bundle, long, str(long), None, "00")
    assert rec.machine == "fan"  # from its folder
    (result,) = score_recordings(bundle, [(rec, read_channels(long, None))])
    assert result.window_starts == [0.0, 0.5]
    # the normal half scores as detect scored its clip (embedded in a batch of 2, not of 16: float noise, amplified by domain-z)
    assert result.window_scores[0] == pytest.approx(scores[normal], abs=1e-4)
    assert result.window_scores[0] <= threshold < result.window_scores[1]  # only the faulty half is flagged
    assert result.score == result.window_scores[1] and result.decision == 1
    (mean,) = score_recordings(bundle, [(rec, read_channels(long, None))], aggregate="mean")
    assert mean.score == pytest.approx(np.mean(result.window_scores))
    # overlapping windows: every 0.25 s, the last one ending at the end
    (fine,) = score_recordings(bundle, [(rec, read_channels(long, None))], hop=0.25)
    assert fine.window_starts == [0.0, 0.25, 0.5]
    assert window_starts(10, 4, 3) == [0, 3, 6] and window_starts(11, 4, 3) == [0, 3, 6, 7] and window_starts(3, 4, 1) == [0]
