"""The pre-training loop: what it reads, resume, --max-minutes, output files and refusals.

The objectives themselves are tested in test_pretrain_beats.py and test_pretrain_eat.py; here a
small stand-in objective keeps the loop tests fast, and the real ones run end to end through the CLI.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from asdtool.cli import app
from asdtool.config.stages import PretrainConfig
from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.core.errors import AsdError
from asdtool.pretrain import OBJECTIVES
from asdtool.pretrain import loop
from asdtool.pretrain.audio import find_audio, held_out

from tests.conftest import write_wave

runner = CliRunner()


# ----------------------------------------------------------------------------- a stand-in objective


class _Objective(nn.Module):
    """Regress each clip's mean fbank level plus a generator-drawn offset from the pooled tokens."""

    def __init__(self, student, cfg):
        super().__init__()
        self.student = student
        self.head = nn.Linear(student.embed_dim, 1)
        self.steps_seen = 0

    def forward(self, fbank, generator):
        offset = torch.rand(fbank.shape[0], generator=generator)
        pred = self.head(self.student.encode(fbank)).squeeze(-1).mean(1)
        loss = ((pred - fbank.mean((1, 2)) - offset) ** 2).mean()
        return loss, {"offset": offset.mean()}

    def after_step(self, step, total):
        self.steps_seen = step


def build_objective(student, cfg):
    return _Objective(student, cfg)


def export(objective):
    from asdtool.models.backbones.beats import to_official

    return to_official(objective.student)


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "beats", __name__)


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pt") / "dev"
    synthesize(root, seed=2, sizes=SynthSizes(0.5, 3, 1, 1), machines=["fan", "valve"])
    return root


def tiny(audio, out, **kw) -> PretrainConfig:
    base = dict(audio=list(audio), out=out, backbone="beats", size="tiny", steps=4, batch_size=2, warmup=1,
                seconds=0.5, checkpoint_every=2)  # fmt: skip
    return PretrainConfig(**{**base, **kw})


def test_a_dcase_root_gives_only_its_training_clips(dev, tmp_path):
    corpus = find_audio([dev])
    assert len(corpus.files) == 2 * (3 + 1)  # fan and valve: 3 source + 1 target training clips
    assert all(f.parent.name == "train" and "_train_normal_" in f.name for f in corpus.files)
    assert corpus.skipped == 2 * 4  # the test clips: normal and anomalous, per domain
    # anywhere in a tree: test folders and test/anomalous names are left out, other audio is read
    other = tmp_path / "corpus"
    write_wave(other / "a" / "pump.wav")
    write_wave(other / "a" / "test" / "x.wav")
    write_wave(other / "b" / "section_00_source_test_anomaly_0001_.wav")
    write_wave(other / "b" / "machine.flac".replace(".flac", ".wav"))
    (other / "notes.txt").write_text("not audio")
    corpus = find_audio([other])
    assert [f.relative_to(other).as_posix() for f in corpus.files] == ["a/pump.wav", "b/machine.wav"]
    assert corpus.skipped == 2


def test_held_out_names():
    assert held_out(Path("bearing/test/section_00_source_test_normal_0000_vel_6.wav"))
    assert held_out(Path("section_00_target_test_anomaly_0003_.wav"))
    assert held_out(Path("x/section_00_source_train_anomaly_0001.wav"))
    assert not held_out(Path("bearing/train/section_00_source_train_normal_0000_vel_6.wav"))
    assert not held_out(Path("contest/latest_recording.wav"))
    # 2021's domain test folders hold eval clips whose names say nothing of the split
    assert held_out(Path("fan/source_test/section_03_0000.wav"))
    assert held_out(Path("fan/target_test/section_04_0001.wav"))
    assert not held_out(Path("fan/train/section_03_source_train_normal_0000.wav"))


def test_refusals(dev, tmp_path):
    with pytest.raises(AsdError, match="does not exist"):
        find_audio([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsdError, match="holds no audio files"):
        find_audio([tmp_path / "empty"])
    with pytest.raises(AsdError, match="is a test folder"):
        find_audio([dev / "fan" / "test"])
    test_clip = next((dev / "fan" / "test").iterdir())
    with pytest.raises(AsdError, match="test or anomalous clip"):
        find_audio([test_clip])
    with pytest.raises(AsdError, match="name at least one --audio"):
        PretrainConfig(out=tmp_path / "x").validate()
    with pytest.raises(AsdError, match="--mask-ratio"):
        tiny([dev], tmp_path / "x", mask_ratio=1.0).validate()


# ----------------------------------------------------------------------------- the loop


def test_resume_and_max_minutes_repeat_the_uninterrupted_run(dev, tmp_path, stand_in):
    whole = loop.pretrain(tiny([dev], tmp_path / "whole"))
    assert whole.complete and whole.steps == 4 and whole.clips == 8
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == ["backbone.pt", "summary.json", "train_log.csv"]

    # a budget that runs out after every step: each call does one step and leaves a resume state
    cfg = tiny([dev], tmp_path / "parts", max_minutes=1e-9)
    done = [loop.pretrain(cfg).steps]
    assert (tmp_path / "parts" / "resume.pt").is_file() and not (tmp_path / "parts" / "backbone.pt").exists()
    with pytest.raises(AsdError, match="pass --resume"):
        loop.pretrain(cfg)
    while done[-1] < 4:
        done.append(loop.pretrain(dataclasses.replace(cfg, resume=True)).steps)
    assert done == [1, 2, 3, 4]
    assert not (tmp_path / "parts" / "resume.pt").exists()

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert digest(tmp_path / "parts" / "backbone.pt") == digest(tmp_path / "whole" / "backbone.pt")
    assert (tmp_path / "parts" / "train_log.csv").read_text() == (tmp_path / "whole" / "train_log.csv").read_text()
    with open(tmp_path / "whole" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and set(rows[0]) == {"step", "loss", "offset", "lr"}
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["clips"] == 8 and summary["steps"] == 4 and summary["skipped_test_or_anomalous"] == 8


def test_resume_refuses_a_changed_recipe_or_corpus(dev, tmp_path, stand_in):
    cfg = tiny([dev], tmp_path / "run", max_minutes=1e-9)
    loop.pretrain(cfg)
    with pytest.raises(AsdError, match="cannot resume: max_lr"):
        loop.pretrain(dataclasses.replace(cfg, resume=True, max_lr=1e-3))
    extra = tmp_path / "extra"
    write_wave(extra / "one.wav")
    with pytest.raises(AsdError, match="audio files differ"):
        loop.pretrain(dataclasses.replace(cfg, resume=True, audio=[dev, extra]))
    with pytest.raises(AsdError, match="no unfinished pre-training run"):
        loop.pretrain(dataclasses.replace(cfg, out=tmp_path / "none", resume=True))
    (tmp_path / "run" / "resume.pt").write_bytes(b"garbage")
    with pytest.raises(AsdError, match="not a resume state"):
        loop.pretrain(dataclasses.replace(cfg, resume=True))


def test_the_checkpoint_loads_as_official_weights(dev, tmp_path, stand_in):
    from asdtool.models.backbones.registry import load_backbone

    loop.pretrain(tiny([dev], tmp_path / "run", steps=2))
    saved = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    assert set(saved) == {"cfg", "model"} and "encoder.layers.0.self_attn.q_proj.weight" in saved["model"]
    model = load_backbone("beats", tmp_path / "run" / "backbone.pt")
    fresh = load_backbone("beats", size="tiny")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_cli_runs_and_reports_an_unfinished_run(dev, tmp_path, stand_in):
    out = tmp_path / "cli"
    args = ["pretrain", "--audio", str(dev), "--out", str(out), "--backbone", "beats", "--steps", "2",
            "--batch-size", "2", "--seconds", "0.5", "--warmup", "1"]  # fmt: skip
    result = runner.invoke(app, args + ["--max-minutes", "1e-9"])
    assert result.exit_code == 3, result.output
    assert "--resume" in result.output
    result = runner.invoke(app, args + ["--max-minutes", "1e-9", "--resume"])
    assert result.exit_code == 0, result.output
    assert (out / "backbone.pt").is_file()
    result = runner.invoke(app, ["pretrain", "--audio", str(tmp_path / "nope"), "--out", str(out)])
    assert result.exit_code == 1 and "does not exist" in result.output
