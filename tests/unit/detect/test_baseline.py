"""The reference detectors of `asdtool baseline`: log-mel mean / mean+std 1-NN and the organisers' autoencoder."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from asdtool.models import autoencoder as ae
from asdtool.config import options, stages
from asdtool.detect import baseline
from asdtool.cli import main
from asdtool.data import dcase
from asdtool.data.audio import SAMPLE_RATE, read_clip
from asdtool.core.errors import AsdError
from asdtool.models.features import kaldi_fbank
from asdtool.evaluate.metrics import read_score_csv
from asdtool.core.vectors import nearest_cosine_distance
from asdtool.config.choices import BaselineMethod

from tests.conftest import HANG_SECONDS, make_machine

FAST = ae.TrainSettings(epochs=60, batch_size=16, lr=1e-3, validation_split=0.1, seed=0)


def _wave(seconds: float, seed: int, tone_hz: float | None = None, tone_amp: float = 0.0) -> np.ndarray:
    """A 'machine': white noise plus a 1 kHz hum; optionally a second, loud tone (the anomaly)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = 0.05 * rng.standard_normal(t.size) + 0.1 * np.sin(2 * np.pi * 1000 * t + rng.uniform(0, 2 * np.pi))
    if tone_hz:
        x = x + tone_amp * np.sin(2 * np.pi * tone_hz * t)
    return x.astype(np.float32)


@pytest.fixture
def tone_root(tmp_path: Path) -> Path:
    """One machine type: 12 normal training clips; test: 3 fresh normal clips per domain and 2 anomalies
    (training clips plus a loud 5 kHz tone)."""
    rows, folder = [], tmp_path / "dev" / "pump"
    for i in range(12):
        name = dcase.format_name("source" if i < 10 else "target", "train", 0, i, {})
        (folder / "train").mkdir(parents=True, exist_ok=True)
        sf.write(folder / "train" / name, _wave(0.5, i), SAMPLE_RATE, subtype="PCM_16")
        rows.append((f"pump/train/{name}", {}))
    (folder / "test").mkdir()
    for domain in ("source", "target"):
        for i in range(3):
            name = dcase.format_name(domain, "test", 0, i, {})
            sf.write(folder / "test" / name, _wave(0.5, 100 + i + (10 if domain == "target" else 0)), SAMPLE_RATE, subtype="PCM_16")
            rows.append((f"pump/test/{name}", {}))
        name = dcase.format_name(domain, "test", 1, 0, {})
        sf.write(folder / "test" / name, _wave(0.5, 0 if domain == "source" else 11, 5000, 0.5), SAMPLE_RATE, subtype="PCM_16")
        rows.append((f"pump/test/{name}", {}))
    dcase.write_attribute_csv(folder / "attributes_00.csv", rows)
    return tmp_path / "dev"


# ----------------------------------------------------------------------------- log-mel 1-NN methods


def test_meanstd_features_are_the_frames_mean_and_population_std():
    wave = _wave(1.0, 3)
    frames = baseline.logmel_frames(wave).numpy().astype(np.float64)  # (98, 128)
    got = baseline.logmel_meanstd(wave)
    assert got.shape == (256,) and got.dtype == np.float32
    np.testing.assert_allclose(got[:128], frames.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[128:], frames.std(0, ddof=0), rtol=1e-4, atol=1e-4)
    assert np.array_equal(got[:128], baseline.logmel_mean(wave))  # the mean half is the logmel-mean feature
    assert got[128:].max() > 0.5  # (mel bands narrower than an FFT bin stay at the floor: std 0)


def test_logmel_mean_scores_are_unchanged(tiny_root, tmp_path):
    """The default method is logmel-mean, and it is the same computation as before the other methods came."""
    baseline.baseline_to_folder(tiny_root, tmp_path / "default")
    baseline.baseline_to_folder(tiny_root, tmp_path / "explicit", method="logmel-mean")
    for machine in ("fan", "gearbox"):
        clips = {s: dcase.scan(tiny_root).select(machine, s) for s in ("train", "test")}
        feats = {}
        for split, cs in clips.items():  # the formula written out: kaldi fbank (x 32768), time mean, float32 cosine
            rows = []
            for c in cs:
                x = torch.from_numpy(read_clip(c.path, None) * 32768.0)[None]
                rows.append(kaldi_fbank(x, num_mel_bins=128, sample_frequency=16000, frame_length=25,
                                        frame_shift=10, dither=0.0).mean(0).numpy())  # fmt: skip
            feats[split] = np.stack(rows)
        expected = {
            "train": nearest_cosine_distance(feats["train"], feats["train"], excluded=[[i] for i in range(len(feats["train"]))], dtype=np.float32),
            "test": nearest_cosine_distance(feats["train"], feats["test"], dtype=np.float32),
        }
        for split in ("train", "test"):
            name = f"anomaly_score_{machine}_section_00_{split}.csv"
            text = "".join(f"{c.file_name},{float(v)!r}\n" for c, v in zip(clips[split], expected[split]))
            assert (tmp_path / "default" / name).read_text() == text
            assert (tmp_path / "explicit" / name).read_bytes() == (tmp_path / "default" / name).read_bytes()
    # values the code wrote before --method existed (same machine; float32 rounding may move the last digits elsewhere)
    got = read_score_csv(tmp_path / "default" / "anomaly_score_gearbox_section_00_test.csv")
    assert list(got.values()) == pytest.approx([1.1795759e-4, 8.9049339e-5, 1.1360645e-4, 9.5129013e-5,
                                                7.9333782e-5, 8.5711479e-5, 7.8380108e-5, 1.0019541e-4], abs=2e-7)  # fmt: skip


def test_meanstd_method_writes_leave_one_out_scores(tiny_root, tmp_path):
    scores = baseline.baseline_to_folder(tiny_root, tmp_path / "s", method="logmel-meanstd")
    train = scores["gearbox"]["train"]
    assert len(train) == 4 and all(v > 0 for v in train.values())  # no clip is its own neighbour
    assert read_score_csv(tmp_path / "s" / "anomaly_score_gearbox_section_00_train.csv") == pytest.approx(train)
    mean = baseline.score_dataset(dcase.scan(tiny_root), method="logmel-mean")
    assert scores["gearbox"]["test"] != mean["gearbox"]["test"]


# ----------------------------------------------------------------------------- autoencoder: features


def test_organisers_log_mel_matches_a_torchaudio_reference():
    """librosa's settings: Slaney mel scale and area norm, periodic Hann, centred frames padded with zeros, 10 log10."""
    fb = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 128, 16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(ae.mel_filterbank(16000), fb.numpy().T, atol=1e-6)
    wave = _wave(2.0, 1)
    spec = torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, hop_length=512, n_mels=128, power=2.0, center=True,
                                                pad_mode="constant", norm="slaney", mel_scale="slaney").double()  # fmt: skip
    ref = 10 * torch.log10(spec(torch.from_numpy(wave).double()).clamp(min=sys.float_info.epsilon))
    got = ae.log_mel_spectrogram(wave, 16000)
    assert got.shape == (63, 128)  # 1 + 32000 // 512 frames
    np.testing.assert_allclose(got, ref.numpy().T, atol=1e-3)  # torchaudio's filters are float32


def test_vectors_stack_five_consecutive_frames():
    wave = _wave(2.0, 2)
    log_mel = ae.log_mel_spectrogram(wave, 16000)
    vectors = ae.clip_vectors(wave, 16000)
    assert vectors.shape == (59, 640) and vectors.dtype == np.float32
    for t in range(5):
        np.testing.assert_array_equal(vectors[:, 128 * t : 128 * (t + 1)], log_mel[t : t + 59].astype(np.float32))
    assert ae.clip_vectors(np.zeros(160000, np.float32), 16000).shape == (309, 640)  # 10 s: the organisers' 309
    with pytest.raises(AsdError, match="too short for the autoencoder: 1000 samples, it needs at least 2048"):
        ae.clip_vectors(np.zeros(1000, np.float32), 16000, "x.wav")


# ----------------------------------------------------------------------------- autoencoder: network and training


def test_autoencoder_has_the_organisers_layers():
    model = ae.DenseAutoencoder()
    assert model.dense_shapes() == [(640, 128), (128, 128), (128, 128), (128, 128), (128, 8),
                                    (8, 128), (128, 128), (128, 128), (128, 128), (128, 640)]  # fmt: skip
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert [n.num_features for n in norms] == [128] * 4 + [8] + [128] * 4
    assert all(n.momentum == 0.01 and n.eps == 1e-3 for n in norms)
    assert [type(m).__name__ for m in model.encoder][-3:] == ["Linear", "BatchNorm1d", "ReLU"]  # the bottleneck too
    assert isinstance(model.decoder[-1], torch.nn.Linear)  # linear output
    dense = (640 * 128 + 128) + 6 * (128 * 128 + 128) + (128 * 8 + 8) + (8 * 128 + 128) + (128 * 640 + 640)
    assert sum(p.numel() for p in model.parameters()) == dense + 2 * (8 * 128 + 8) == 267_928
    assert model(torch.zeros(3, 640)).shape == (3, 640)
    assert dataclasses.asdict(ae.TrainSettings()) == {"epochs": 100, "batch_size": 256, "lr": 1e-3, "validation_split": 0.1, "seed": 0}


def test_training_loss_falls_and_leaves_global_state_alone():
    rng = np.random.default_rng(0)
    vectors = -40 + rng.standard_normal((300, 8)) @ rng.standard_normal((8, 640))  # dB-like, rank 8 around -40
    threads, rng_state = torch.get_num_threads(), torch.random.get_rng_state()
    seen = []
    model, history = ae.train_autoencoder(vectors, dataclasses.replace(FAST, epochs=40, batch_size=32), on_epoch=seen.append)
    assert seen == history and [h.epoch for h in history] == list(range(1, 41)) and history[0].epochs == 40
    assert history[0].loss > 1000 and history[-1].loss < 0.05 * history[0].loss  # measured: 1591 -> 32
    assert history[-1].val_loss < 0.2 * history[0].val_loss  # 1605 -> 147: BatchNorm's running averages lag
    assert not model.training
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng_state)
    assert not torch.are_deterministic_algorithms_enabled()


def test_validation_split_is_seeded_and_disjoint():
    train, val = ae.split_validation(100, 0.1, torch.Generator().manual_seed(0))
    assert len(val) == 10 and len(train) == 90 and set(train.tolist()) | set(val.tolist()) == set(range(100))
    again, _ = ae.split_validation(100, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(train, again)
    assert len(ae.split_validation(10, 0.0, torch.Generator())[1]) == 0
    _, history = ae.train_autoencoder(np.ones((4, 640)), dataclasses.replace(FAST, epochs=1, validation_split=0.0))
    assert np.isnan(history[0].val_loss)


def test_anomalous_clip_scores_higher_and_training_clips_are_scored(tone_root, tmp_path):
    scores = baseline.baseline_to_folder(tone_root, tmp_path / "ae", method="autoencoder", settings=FAST)
    test = scores["pump"]["test"]
    anomalies = [v for k, v in test.items() if "_anomaly_" in k]
    normals = [v for k, v in test.items() if "_normal_" in k]
    assert len(anomalies) == 2 and len(normals) == 6
    assert min(anomalies) > 1.5 * max(normals)  # measured with seeds 0-3: about 25 against at most 12
    train = read_score_csv(tmp_path / "ae" / "anomaly_score_pump_section_00_train.csv")
    assert len(train) == 12 and train == pytest.approx(scores["pump"]["train"])
    assert max(train.values()) < min(anomalies)


def test_same_seed_same_scores(tone_root, tmp_path):
    settings = dataclasses.replace(FAST, epochs=5)
    for out in ("a", "b"):
        baseline.baseline_to_folder(tone_root, tmp_path / out, method="autoencoder", settings=settings)
    baseline.baseline_to_folder(tone_root, tmp_path / "c", method="autoencoder", settings=dataclasses.replace(settings, seed=1))
    for name in ("anomaly_score_pump_section_00_test.csv", "anomaly_score_pump_section_00_train.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


# ----------------------------------------------------------------------------- options and command line


def test_config_choices_match_the_library():
    f = {f.name: f for f in options.fields(stages.BaselineConfig)}
    assert f["method"].metadata["choices"] is BaselineMethod and f["method"].default == "logmel-mean"
    cfg = stages.BaselineConfig(data_root=Path("d"), out=Path("o"))
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.validation_split, cfg.seed) == (100, 256, 1e-3, 0.1, 0)
    with pytest.raises(AsdError, match="unknown baseline method 'pca'"):
        baseline.score_dataset(dcase.Dataset(Path("."), []), method="pca")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "knn"], "Invalid value for '--method': 'knn' is not one of 'logmel-mean', 'logmel-meanstd', 'autoencoder'"),
        (["--batch-size", "1"], "--batch-size must be at least 2, got 1"),
        (["--validation-split", "1"], "--validation-split must lie in [0, 1), got 1.0"),
        (["--lr", "0"], "--lr must be a positive number, got 0.0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(tmp_path, capsys, extra, message):
    code = main(["baseline", "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "o"), *extra])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_cli_runs_the_autoencoder(tone_root, tmp_path, capsys):
    out = tmp_path / "scores"
    code = main(["baseline", "--data-root", str(tone_root), "--out", str(out), "--method", "autoencoder",
                 "--epochs", "3", "--batch-size", "16", "--seed", "4"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "wrote autoencoder scores of 1 machine types" in printed and "pump" in printed
    assert sorted(p.name for p in out.iterdir()) == ["anomaly_score_pump_section_00_test.csv", "anomaly_score_pump_section_00_train.csv"]
    direct = baseline.score_dataset(dcase.scan(tone_root), method="autoencoder",
                                    settings=ae.TrainSettings(epochs=3, batch_size=16, seed=4))  # fmt: skip
    assert read_score_csv(out / "anomaly_score_pump_section_00_test.csv") == direct["pump"]["test"]


def test_logmel_methods_never_import_the_autoencoder(tmp_path):
    make_machine(tmp_path / "dev", "fan", n_train=2, n_test=1)
    probe = (
        "import sys; from asdtool.data import dcase; from asdtool.detect import baseline\n"
        f"baseline.score_dataset(dcase.scan({str(tmp_path / 'dev')!r}), method='logmel-meanstd')\n"
        "print('asdtool.models.autoencoder' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
