"""Detector bundles: export, then score new recordings exactly as detect scored them."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asdtool.evaluate import metrics
from asdtool.deploy.bundle import (
    Recording,
    expand_paths,
    export_bundle,
    load_bundle,
    read_bundle_meta,
    recording_of,
    score_recordings,
    window_starts,
)
from asdtool.config.stages import FinetuneConfig
from asdtool.data.audio import read_channels
from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.detect.knn import detect_to_folder
from asdtool.detect.embed import embed_to_store
from asdtool.detect.ensemble import ensemble_to_folder
from asdtool.core.errors import AsdError
from asdtool.data.store import read_store
from asdtool.train.finetune import finetune

from tests.conftest import run_asdtool

MACHINES = ["fan", "valve"]


_asdtool = partial(run_asdtool, text=False)  # bytes: one test pipes a WAV file to stdin


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """A small dev set, a full and a LoRA model on it, their stores and detect's domain-z and raw scores."""
    base = tmp_path_factory.mktemp("bundle")
    data = base / "dev"
    synthesize(data, seed=5, sizes=SynthSizes(0.5, 10, 3, 4), machines=MACHINES)
    out = {"base": base, "data": data}
    for name, rank, seed in (("full", 0, 0), ("full2", 0, 1), ("lora", 4, 0)):
        model = base / name
        finetune(FinetuneConfig(data_root=data, out=model, steps=6, batch_size=8, seconds=0.5, warmup=2, lora_rank=rank,
                                seed=seed, threads=1, max_lr=1e-3))  # fmt: skip
        embed_to_store(model, data, base / f"{name}.h5", batch_size=16)
        out[name] = model
    frozen = {"backbone": "eat", "pretrained": None, "size": "tiny", "layer": 1, "pooling": "meanstd", "seed": 0}
    embed_to_store(None, data, base / "frozen.h5", batch_size=16, frozen=frozen)
    for name in ("full", "full2", "lora", "frozen"):
        detect_to_folder(base / f"{name}.h5", base / f"scores-{name}-z", normalise="domain-z")
        detect_to_folder(base / f"{name}.h5", base / f"scores-{name}", normalise="none")
    return out


def _test_recordings(bundle, data: Path, machine: str) -> list[tuple[Recording, np.ndarray]]:
    paths = sorted((data / machine / "test").glob("*.wav"))
    return [(recording_of(bundle, p, str(p), None, None), read_channels(p, seconds=None)) for p in paths]


def _detect_scores(folder: Path, machine: str) -> dict[str, float]:
    return metrics.read_score_csv(folder / metrics.score_file_name(machine, "00"))


@pytest.mark.parametrize("model,normalise", [("full", "domain-z"), ("full", "local-density"), ("lora", "none")])
def test_a_bundle_scores_every_test_clip_as_detect_did(fitted, tmp_path, model, normalise):
    base = fitted["base"]
    path = tmp_path / "b.asd"
    export_bundle([fitted[model]], [base / f"{model}.h5"], path, normalise=normalise)
    bundle = load_bundle(path)
    assert bundle.machines == {"fan": ["00"], "valve": ["00"]} and bundle.weights is None
    scores_dir = tmp_path / "scores"
    detect_to_folder(base / f"{model}.h5", scores_dir, normalise=normalise)
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
                  normalise="domain-z")  # fmt: skip
    ensemble_to_folder([base / "scores-full-z", base / "scores-full2-z"], tmp_path / "fused", weights=weights)
    bundle = load_bundle(path)
    assert bundle.meta["kind"] == "system" and bundle.weights == weights
    for machine in MACHINES:
        got = {Path(r.name).name: r.score for r in score_recordings(bundle, _test_recordings(bundle, fitted["data"], machine))}
        expected = _detect_scores(tmp_path / "fused", machine)
        assert max(abs(got[n] - expected[n]) for n in expected) < 1e-5
        train = metrics.read_score_csv(tmp_path / "fused" / metrics.score_file_name(machine, "00", "train"))
        assert bundle.thresholds[(machine, "00")] == pytest.approx(metrics.decision_threshold(list(train.values())), rel=1e-9)


def test_a_frozen_model_is_a_member_too(fitted, tmp_path):
    """`--model frozen` takes the frozen model its store records (backbone, pre-trained file, layer, pooling)."""
    base = fitted["base"]
    alone, system = tmp_path / "frozen.asd", tmp_path / "system.asd"
    export_bundle(["frozen"], [base / "frozen.h5"], alone, normalise="domain-z")
    export_bundle([fitted["full"], "frozen"], [base / "full.h5", base / "frozen.h5"], system, weights=[0.5, 0.5],
                  normalise="domain-z")  # fmt: skip
    ensemble_to_folder([base / "scores-full-z", base / "scores-frozen-z"], tmp_path / "fused", weights=[0.5, 0.5])
    for path, folder in ((alone, base / "scores-frozen-z"), (system, tmp_path / "fused")):
        bundle = load_bundle(path)
        assert bundle.meta["members"][-1]["name"] == "frozen-eat" and bundle.meta["members"][-1]["build_args"]["frozen"]["layer"] == 1
        for machine in MACHINES:
            got = {Path(r.name).name: r.score for r in score_recordings(bundle, _test_recordings(bundle, fitted["data"], machine))}
            expected = _detect_scores(folder, machine)
            assert max(abs(got[n] - expected[n]) for n in expected) < 1e-5
    with pytest.raises(AsdError, match="records no frozen model"):
        export_bundle(["frozen"], [base / "full.h5"], tmp_path / "x.asd")


def test_a_long_recording_is_scored_window_by_window_and_flags_its_anomalous_part(fitted, tmp_path):
    base = fitted["base"]
    path = tmp_path / "b.asd"
    export_bundle([fitted["full"]], [base / "full.h5"], path, normalise="domain-z")
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


def test_tampered_wrong_version_and_foreign_files_are_refused(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "b.asd"
    export_bundle([fitted["full"]], [fitted["base"] / "full.h5"], path)
    meta = read_bundle_meta(path)
    assert meta["format_version"] == 1 and meta["members"][0]["name"] == "full"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # a flipped bit in the tensor data
    tampered = tmp_path / "tampered.asd"
    tampered.write_bytes(bytes(raw))
    with pytest.raises(AsdError, match="modified since it was exported"):
        load_bundle(tampered)
    tensors = load_file(str(path))
    newer = tmp_path / "newer.asd"
    save_file(tensors, str(newer), metadata={"asdtool_bundle": json.dumps({**meta, "format_version": 99})})
    with pytest.raises(AsdError, match="is bundle format 99 .* reads format 1: export it again"):
        load_bundle(newer)
    plain = tmp_path / "plain.asd"
    save_file(tensors, str(plain))
    with pytest.raises(AsdError, match="not an asdtool detector bundle"):
        load_bundle(plain)
    junk = tmp_path / "junk.asd"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(AsdError, match="not an asdtool detector bundle"):
        load_bundle(junk)


def test_export_refuses_mismatched_inputs(fitted, tmp_path):
    base = fitted["base"]
    with pytest.raises(AsdError, match="embedded with another checkpoint"):
        export_bundle([fitted["full"]], [base / "lora.h5"], tmp_path / "x.asd")
    with pytest.raises(AsdError, match="needs one --weights per --model"):
        export_bundle([fitted["full"], fitted["full2"]], [base / "full.h5", base / "full2.h5"], tmp_path / "x.asd")
    with pytest.raises(AsdError, match="2 weights for 1 --model members"):
        export_bundle([fitted["full"]], [base / "full.h5"], tmp_path / "x.asd", weights=[1, 2])
    assert not (tmp_path / "x.asd").exists()


def test_inputs_machine_types_and_sections(fitted, tmp_path):
    path = tmp_path / "b.asd"
    export_bundle([fitted["full"]], [fitted["base"] / "full.h5"], path)
    bundle = load_bundle(path)
    test = fitted["data"] / "fan" / "test"
    clips = sorted(test.glob("*.wav"))
    assert expand_paths([str(test)]) == clips
    normal = next(c for c in clips if "_normal_" in c.name)
    anomalies = sorted(test.glob("*anomaly*.wav"))
    # a glob, then a file: in order, each once
    assert expand_paths([str(test / "*anomaly*.wav"), str(normal), str(anomalies[0])]) == anomalies + [normal]
    with pytest.raises(AsdError, match="matches no file"):
        expand_paths([str(test / "*.flac")])
    with pytest.raises(AsdError, match="no such file or folder"):
        expand_paths([str(test / "missing.wav")])
    elsewhere = tmp_path / "pump" / "clip.wav"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(clips[0].read_bytes())
    with pytest.raises(AsdError, match="cannot tell its machine type.*give --machine"):
        recording_of(bundle, elsewhere, str(elsewhere), None, None)
    assert recording_of(bundle, elsewhere, str(elsewhere), "valve", None).section == "00"  # the type's only section
    with pytest.raises(AsdError, match="has no machine type 'pump'"):
        recording_of(bundle, elsewhere, str(elsewhere), "pump", None)
    with pytest.raises(AsdError, match="has no section 01 of fan"):
        recording_of(bundle, clips[0], str(clips[0]), None, "01")


def test_the_score_command(fitted, tmp_path):
    base = fitted["base"]
    bundle = tmp_path / "b.asd"
    r = _asdtool("export", "--model", fitted["full"], "--embeddings", base / "full.h5", "--out", bundle, "--normalise", "domain-z")
    assert r.returncode == 0, r.stderr.decode()
    assert b"fan" in r.stdout and b"threshold" in r.stdout
    test = fitted["data"] / "fan" / "test"
    r = _asdtool("score", bundle, test, "--out", tmp_path / "r.csv")
    assert r.returncode == 0, r.stderr.decode()
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0] == ["file", "machine", "section", "score", "threshold", "decision"]
    expected = _detect_scores(base / "scores-full-z", "fan")
    assert {Path(row[0]).name: float(row[3]) for row in rows[1:]} == pytest.approx(expected, abs=1e-5)
    anomalous = sum(int(row[5]) for row in rows[1:])
    assert 0 < anomalous < len(rows) - 1
    r = _asdtool("score", bundle, test, "--fail-on-anomaly", "--out", tmp_path / "r.json")
    assert r.returncode == 2
    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc) == len(rows) - 1 and all(len(d["windows"]) == 1 for d in doc)
    # one recording's bytes on stdin, its machine type given
    clip = sorted(test.glob("*normal*.wav"))[0]
    r = _asdtool("score", bundle, "-", "--machine", "fan", "--out", tmp_path / "one.csv", stdin=clip.read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    (row,) = list(csv.reader((tmp_path / "one.csv").open()))[1:]
    assert row[0] == "-" and float(row[3]) == pytest.approx(expected[clip.name], abs=1e-4)  # a batch of 1, not of 16
    # bad audio: one line naming the file, exit 1, nothing written
    bad = tmp_path / "fan" / "test" / "section_00_8k.wav"
    bad.parent.mkdir(parents=True)
    sf.write(bad, np.zeros(4000, np.float32), 8000)
    r = _asdtool("score", bundle, test, bad, "--out", tmp_path / "bad.csv")
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1
    assert str(bad) in err and "sample rate is 8000 Hz" in err
    assert not (tmp_path / "bad.csv").exists()
    r = _asdtool("score", tmp_path / "r.csv", test)
    assert r.returncode == 1 and "not an asdtool detector bundle" in r.stderr.decode()


def test_score_logs_every_window_and_plots_long_recordings(fitted, tmp_path):
    base = fitted["base"]
    bundle, other = tmp_path / "b.asd", tmp_path / "other.asd"
    export_bundle([fitted["full"]], [base / "full.h5"], bundle, normalise="domain-z")
    export_bundle([fitted["full2"]], [base / "full2.h5"], other, normalise="domain-z")
    test = fitted["data"] / "fan" / "test"
    clips = sorted(test.glob("*.wav"))
    long = tmp_path / "fan" / "long.wav"
    long.parent.mkdir()
    sf.write(long, np.concatenate([read_channels(c, None)[0] for c in clips[:3]]), 16000, subtype="FLOAT")
    log, plots = tmp_path / "log", tmp_path / "plots"
    r = _asdtool("score", bundle, long, clips[0], "--log", log, "--plot", plots, "--hop", "0.25")
    assert r.returncode == 0, r.stderr.decode()
    r = _asdtool("score", bundle, clips[1], "--log", log)
    assert r.returncode == 0, r.stderr.decode()
    rows = list(csv.reader((log / "scores.csv").open()))
    assert rows[0] == ["time", "file", "machine", "section", "window", "start", "score", "threshold", "decision"]
    # 1.5 s every 0.25 s: 5 windows, then one window of each clip
    assert [row[1] for row in rows[1:]] == [str(long)] * 5 + [str(clips[0]), str(clips[1])]
    assert [float(row[5]) for row in rows[1:6]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(int(row[8]) == int(float(row[6]) > float(row[7])) for row in rows[1:])
    ref = json.loads((log / "bundle.json").read_text())
    assert ref["content_sha256"] == read_bundle_meta(bundle)["content_sha256"]
    assert len(ref["train_scores"]["fan"]["00"]) == len(read_store(base / "full.h5").get("fan", "train"))
    assert sorted(p.name for p in plots.iterdir()) == ["0000_long.png"]  # only the recording of several windows
    assert (plots / "0000_long.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = _asdtool("score", other, clips[0], "--log", log)
    assert r.returncode == 1 and "logs the scores of another bundle" in r.stderr.decode()
    assert len(list(csv.reader((log / "scores.csv").open()))) == len(rows)


def test_an_int8_bundle_scores_with_quantised_linear_layers_on_cpu(fitted, tmp_path):
    base = fitted["base"]
    plain, small = tmp_path / "f.asd", tmp_path / "q.asd"
    export_bundle([fitted["full"]], [base / "full.h5"], plain)
    export_bundle([fitted["full"]], [base / "full.h5"], small, quantize="int8")
    assert read_bundle_meta(small)["quantize"] == "int8" and read_bundle_meta(plain)["quantize"] == "none"
    q, f = load_bundle(small), load_bundle(plain)
    def dynamic_int8(model) -> int:
        return sum(type(m).__module__ == "torch.ao.nn.quantized.dynamic.modules.linear" for m in model.modules())

    assert dynamic_int8(q.members[0].model) > 10 and dynamic_int8(f.members[0].model) == 0
    recs = _test_recordings(f, fitted["data"], "fan")
    got = np.array([r.score for r in score_recordings(q, recs)])
    ref = np.array([r.score for r in score_recordings(f, recs)])
    assert np.all(np.isfinite(got)) and not np.array_equal(got, ref)
    assert np.corrcoef(got, ref)[0, 1] > 0.9  # raw cosine distances move little under int8 weights
    with pytest.raises(AsdError, match="--quantize must be one of none, int8"):
        export_bundle([fitted["full"]], [base / "full.h5"], tmp_path / "x.asd", quantize="int4")
