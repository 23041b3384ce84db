"""The fine-tuning loop: schedules, every recipe learns, LoRA freezes the backbone, resume, DDP, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from asdtool.models import checkpoint
from asdtool.train import trainset
from asdtool.cli import app
from asdtool.data import dcase
from asdtool.data.audio import read_clips
from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.core.errors import AsdError
from asdtool.config.options import read_section
from asdtool.config.stages import FinetuneConfig
from asdtool.train.finetune import finetune
from tests import paths

from tests.conftest import HANG_SECONDS

FIXTURES = paths.FIXTURES
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "dev"
    synthesize(root, seed=1, sizes=SynthSizes(0.5, 8, 2, 1), machines=["fan", "gearbox", "slider"])
    return root


def tiny(**kw) -> FinetuneConfig:
    base = dict(size="tiny", steps=4, batch_size=4, warmup=1, max_lr=1e-3, seconds=0.5, specaug_mask=0,
                data_root=Path("unset"), out=Path("unset"))  # fmt: skip
    return FinetuneConfig(**{**base, **kw})


def fit(cfg: FinetuneConfig, data: Path, out: Path, resume: bool = False, on_step=None):
    """Run `finetune` on `data` into `out`."""
    return finetune(dataclasses.replace(cfg, data_root=data, out=out, resume=resume), on_step=on_step)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------- every recipe learns


def training_loss(model: torch.nn.Module, root: Path, cfg: FinetuneConfig, class_map: dict) -> float:
    """Mean ArcFace loss of the model over all training clips, in eval mode."""
    ds = dcase.scan(root)
    tset = trainset.training_set(ds, cfg.pseudo_labels if cfg.labels == "pseudo" else None)
    assert tset.class_map == class_map
    wave = torch.from_numpy(read_clips([c.path for c in tset.clips], cfg.seconds))
    model.eval()
    with torch.no_grad():
        loss, _ = model(wave, torch.from_numpy(tset.targets))
    return float(loss)


def pseudo_file(root: Path, path: Path) -> Path:
    ds = dcase.scan(root)
    rows = ["file_name,machine,pseudo_label"]
    for m in ("gearbox", "slider"):
        for i, c in enumerate(ds.select(m, "train")):
            rows.append(f"{c.file_name},{m},{i % 3}")
    path.write_text("\n".join(rows) + "\n")
    return path


RECIPES = {
    "beats-full": dict(backbone="beats"),
    "beats-lora": dict(backbone="beats", lora_rank=8, max_lr=1e-2, optimizer="adamw", scheduler="cosine-restarts", lr=1e-4, min_lr=1e-5, warmup=2),
    "eat-full": dict(backbone="eat", optimizer="adam", max_lr=5e-4),
    "eat-lora": dict(backbone="eat", lora_rank=8, optimizer="adam", max_lr=1e-2, scheduler="cosine-restarts", lr=1e-4, min_lr=1e-5, warmup=2),
    "dual": dict(backbone="dual", lora_rank=8, max_lr=5e-3),
    "beats-pse": dict(backbone="beats", labels="pseudo"),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_each_recipe_trains_and_its_loss_falls(data, tmp_path, recipe):
    kw = dict(RECIPES[recipe])
    if kw.get("labels") == "pseudo":
        kw["pseudo_labels"] = str(pseudo_file(data, tmp_path / "pseudo.csv"))
    steps = 24 if kw.get("lora_rank") else 12  # adapters start at zero: LoRA needs a few more steps
    cfg = tiny(steps=steps, batch_size=8, **kw)
    before = checkpoint.build_model(cfg, len(trainset.training_set(dcase.scan(data), kw.get("pseudo_labels")).class_map))
    result = fit(cfg, data, tmp_path / "m")
    trained = checkpoint.load_finetuned(tmp_path / "m")
    start = training_loss(before, data, cfg, trained.class_map)
    end = training_loss(trained.model, data, cfg, trained.class_map)
    assert end < 0.9 * start, (recipe, start, end)
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["steps"] == steps and summary["total_params"] == result.total_params
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    if cfg.lora_rank:
        assert summary["trainable_params"] < 0.5 * summary["total_params"]
    else:
        assert summary["trainable_params"] == summary["total_params"]
    log = (tmp_path / "m" / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,accuracy,lr" and len(log) == steps + 1
    if recipe == "beats-pse":
        fan_classes = {c.class_key for c in dcase.scan(data).select("fan", "train")}
        assert summary["classes"] == len(fan_classes) + 3 + 3  # fan's attribute sets + 3 pseudo classes each


def test_the_same_run_writes_the_same_checkpoint_bytes_whatever_the_global_rngs_held(data, tmp_path):
    import random

    import numpy as np

    import shutil

    cfg = tiny(steps=3, batch_size=8, backbone="beats")
    written = []
    for draws in (1, 7):  # the global RNGs as whatever ran before left them
        random.seed(draws)
        np.random.seed(draws)
        fit(cfg, data, tmp_path / "m")  # the same --out: it is part of the recorded config
        written.append((tmp_path / "m" / "checkpoint.pt").read_bytes())
        shutil.rmtree(tmp_path / "m")
    assert written[0] == written[1]


def test_lora_changes_only_adapters_and_head(data, tmp_path):
    cfg = tiny(backbone="beats", lora_rank=4, steps=3)
    before = {k: v.clone() for k, v in checkpoint.build_model(cfg, 4).state_dict().items()}
    fit(cfg, data, tmp_path / "m")
    after = checkpoint.load_finetuned(tmp_path / "m").model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all("lora_" in k or k.startswith(("branch.head.", "arcface.")) for k in changed), sorted(changed)[:5]
    assert any("lora_" in k for k in changed) and any(k.startswith("branch.head.") for k in changed)


# ----------------------------------------------------------------------------- resume and atomic writes


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def hook(row):
        if row["step"] == step:
            raise _Stop

    return hook


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(data, tmp_path):
    cfg = tiny(backbone="beats", steps=4, checkpoint_every=2, specaug_mask=20, lora_rank=4, batch_size=2)
    fit(cfg, data, tmp_path / "whole")
    with pytest.raises(_Stop):
        fit(cfg, data, tmp_path / "cut", on_step=_stop_at(3))
    # the interrupted run left a resumable checkpoint that does not look complete
    assert not (tmp_path / "cut" / "summary.json").exists()
    with pytest.raises(AsdError, match="did not finish \\(step 2 of 4\\)"):
        checkpoint.load_finetuned(tmp_path / "cut")
    fit(cfg, data, tmp_path / "cut", resume=True)
    a = checkpoint.load_finetuned(tmp_path / "whole").model.state_dict()
    b = checkpoint.load_finetuned(tmp_path / "cut").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "train_log.csv").read_text() == (tmp_path / "cut" / "train_log.csv").read_text()
    with pytest.raises(AsdError, match="already finished"):
        fit(cfg, data, tmp_path / "cut", resume=True)


def test_a_run_stopped_between_its_two_writes_resumes_with_every_log_row(data, tmp_path, monkeypatch):
    import asdtool.train.finetune as train_module

    cfg = tiny(backbone="beats", steps=4, checkpoint_every=1, lora_rank=4, batch_size=2, log_every=1)
    fit(cfg, data, tmp_path / "whole")
    writes = []

    def stopping(real):
        def write(*a, **k):
            real(*a, **k)
            writes.append(real.__name__)
            if len(writes) == 3:  # step 1's two files, then the first of step 2's: stopped in between
                raise _Stop

        return write

    for name in ("write_train_log", "save_checkpoint"):
        monkeypatch.setattr(train_module, name, stopping(getattr(train_module, name)))
    with pytest.raises(_Stop):
        fit(cfg, data, tmp_path / "cut")
    monkeypatch.undo()
    fit(cfg, data, tmp_path / "cut", resume=True)
    assert (tmp_path / "whole" / "train_log.csv").read_text() == (tmp_path / "cut" / "train_log.csv").read_text()
    assert (tmp_path / "cut" / "train_log.csv").read_text().count("\n") == 1 + 4


def test_resume_refuses_changed_options(data, tmp_path):
    with pytest.raises(_Stop):
        fit(tiny(steps=4, checkpoint_every=1), data, tmp_path / "m", on_step=_stop_at(2))
    with pytest.raises(AsdError, match="cannot resume: max_lr was 0.001, now 0.002"):
        fit(tiny(steps=4, max_lr=2e-3), data, tmp_path / "m", resume=True)


def test_crash_while_saving_leaves_no_checkpoint(data, tmp_path, monkeypatch):
    def broken_save(obj, path, *a, **k):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError):
        fit(tiny(steps=2), data, tmp_path / "m")
    # the log goes first (so a resume never loses rows) and is whole; no checkpoint, half or whole, and no temp file
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["train_log.csv"]
    assert (tmp_path / "m" / "train_log.csv").read_text().splitlines()[0] == "step,loss,accuracy,lr"
    monkeypatch.undo()
    fit(tiny(steps=2), data, tmp_path / "m")  # the folder is still the run's own: a fresh start takes it
    assert (tmp_path / "m" / "checkpoint.pt").is_file()


# ----------------------------------------------------------------------------- command line


def test_cli_finetune_with_params_file(data, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "models:\n  beats-lora:\n    backbone: beats\n    size: tiny\n    lora_rank: 4\n    steps: 2\n"
        "    batch_size: 4\n    warmup: 1\n    seconds: 0.5\n"
    )
    out = tmp_path / "m"
    r = runner.invoke(app, ["finetune", "--data-root", str(data), "--out", str(out), "--params", str(params),
                            "--name", "beats-lora", "--steps", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["lora_rank"] == 4  # the option given wins over the file
    assert "LoRA r=4" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--params", "P", "--name", "nope"], "has no section 'models.nope'"),
        (["--params", "P", "--name", "bad"], "has unknown option 'colour'"),
        (["--params", "P", "--name", "text"], "models.text.steps: expected an integer, got 'abc'"),
        (["--params", "P", "--name", "fraction"], "models.fraction.steps: expected an integer, got 2.5"),
        (["--params", "P"], "--params needs --name"),
        (["--seed", "-1"], "--seed must lie in 0..4294967295, got -1"),
        (["--lora-rank", "100000"], "--lora-rank 100000 exceeds"),
        (["--checkpoint", str(FIXTURES / "eat_tiny.pt")], "eat_tiny.pt"),
        (["--checkpoint", "MISSING"], "does not exist"),
        (["--labels", "pseudo", "--pseudo-labels", "PSEUDO"], "not training clips"),
        (["--labels", "pseudo"], "--labels pseudo needs --pseudo-labels"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(data, tmp_path, args, message):
    params = tmp_path / "p.yaml"
    params.write_text("models:\n  bad:\n    colour: red\n  text:\n    steps: abc\n  fraction:\n    steps: 2.5\n")
    pseudo = tmp_path / "pseudo.csv"
    pseudo.write_text("file_name,machine,pseudo_label\nsection_00_source_train_normal_9999_noAttribute.wav,gearbox,0\n")
    args = [{"P": str(params), "PSEUDO": str(pseudo), "MISSING": str(tmp_path / "none.pt")}.get(a, a) for a in args]
    out = tmp_path / "m"
    r = runner.invoke(app, ["finetune", "--data-root", str(data), "--out", str(out), "--steps", "1", "--seconds", "0.5", *args])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.output
    assert not out.exists()


def test_unknown_backbone_is_refused(data, tmp_path):
    r = runner.invoke(app, ["finetune", "--data-root", str(data), "--out", str(tmp_path / "m"), "--backbone", "wav2vec"])
    assert r.exit_code != 0 and "wav2vec" in r.output
    assert not (tmp_path / "m").exists()


def test_a_model_folder_is_not_a_pretrained_checkpoint(data, tmp_path):
    fit(tiny(steps=1), data, tmp_path / "m")
    with pytest.raises(AsdError, match="checkpoint.pt"):
        fit(tiny(steps=1, checkpoint=str(tmp_path / "m" / "checkpoint.pt")), data, tmp_path / "m2")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AsdError, match="junk.pt"):
        checkpoint.load_finetuned(tmp_path / "junk.pt")


# ----------------------------------------------------------------------------- DistributedDataParallel


def test_two_process_gloo_ddp(data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "asdtool", "finetune", "--data-root", str(data), "--out", str(out), "--steps", "3",
           "--batch-size", "4", "--warmup", "1", "--seconds", "0.5", "--max-lr", "1e-3"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_SECONDS)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    assert np.isfinite(summary["final_loss"])
    model = checkpoint.load_finetuned(out)
    assert model.config.steps == 3


# ----------------------------------------------------------------------------- the paper's recipes


@pytest.mark.parametrize("year", ["2024", "2025", "2026"])
def test_paper_recipes_are_written_down_in_params_dcase2024(year):
    path = paths.ROOT / f"params-dcase{year}.yaml"
    cfgs = {m: FinetuneConfig(data_root=Path("d"), out=Path("o"), **read_section(path, FinetuneConfig.SECTION, m, FinetuneConfig))
            for m in ("beats-full", "beats-lora", "beats-pse", "eat-full", "eat-lora", "eat-pse", "dual")}  # fmt: skip
    for c in cfgs.values():
        c.validate()
    full = cfgs["beats-full"]
    assert (full.optimizer, full.max_lr, full.grad_accum, full.warmup, full.batch_size, full.steps, full.lora_rank) == (
        "adamw", 1e-4, 8, 120, 32, 10000, 0)
    lora = cfgs["beats-lora"]
    assert (lora.lora_rank, lora.steps, lora.optimizer, lora.scheduler, lora.lr, lora.max_lr, lora.min_lr, lora.warmup) == (
        64, 50000, "adamw", "cosine-restarts", 1e-4, 5e-3, 1e-5, 10)
    assert (cfgs["eat-full"].optimizer, cfgs["eat-full"].max_lr, cfgs["eat-full"].steps) == ("adam", 5e-5, 10000)
    assert (cfgs["eat-lora"].optimizer, cfgs["eat-lora"].max_lr, cfgs["eat-lora"].lora_rank) == ("adam", 1e-4, 64)
    assert cfgs["dual"].backbone == "dual" and cfgs["dual"].lora_rank == 64
    assert cfgs["dual"].checkpoints() == {"beats": "checkpoints/BEATs_iter3.pt", "eat": "checkpoints/EAT-base_epoch30_pt.pt"}
    for m in ("beats-pse", "eat-pse"):
        assert cfgs[m].labels == "pseudo" and cfgs[m].lora_rank == 0 and cfgs[m].steps == 10000
    assert all(c.seconds == 10.0 and c.specaug_mask == 80 for c in cfgs.values())
    assert all(c.channel == "left" for c in cfgs.values())  # 2026 stereo: the near microphone, as the organisers
