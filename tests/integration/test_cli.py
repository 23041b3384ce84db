"""The command line as a user meets it: fast start, one-line errors, outputs checked first, interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asdtool.cli import main
from asdtool.data.synth.dev import SynthSizes, synthesize

from tests.conftest import HANG_SECONDS

HEAVY = ("torch", "torchaudio", "peft", "umap", "imblearn")
_PROBE = """
import json, sys
from asdtool.cli import main
code = main({args!r})
print("MODULES " + json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))))
sys.exit(code)
"""


def asdtool(args: list[str], cwd: Path | None = None, timeout: float = HANG_SECONDS) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", _PROBE.format(args=[str(a) for a in args], heavy=HEAVY)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def heavy_modules(r: subprocess.CompletedProcess) -> list[str]:
    line = [x for x in r.stdout.splitlines() if x.startswith("MODULES ")][-1]
    return json.loads(line[len("MODULES ") :])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "dev"
    synthesize(root, seed=2, sizes=SynthSizes(0.5, 4, 2, 3), machines=["fan", "valve"])
    return root


def _score_folder(folder: Path, data: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for machine in ("fan", "valve"):
        names = sorted(p.name for p in (data / machine / "test").iterdir())
        rows = [f"{n},{rng.random() + (0.5 if '_anomaly_' in n else 0.0)!r}" for n in names]
        (folder / f"anomaly_score_{machine}_section_00_test.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_light_commands_import_no_torch(data, tmp_path):
    for args in (["--help"], ["--version"], ["finetune", "--help"], ["embed", "--help"]):
        r = asdtool(args)
        assert r.returncode == 0, r.stderr
        assert heavy_modules(r) == [], (args, heavy_modules(r))
    assert "asdtool 0.1.0" in asdtool(["--version"]).stdout

    r = asdtool(["synth", "--out", tmp_path / "s", "--seconds", "0.5", "--source-train", "2", "--target-train", "1",
                 "--test-per-domain", "1", "--machine", "fan"])  # fmt: skip
    assert r.returncode == 0 and heavy_modules(r) == [], r.stderr
    assert len(list((tmp_path / "s" / "fan" / "test").iterdir())) == 4

    a, b = _score_folder(tmp_path / "a", data, 0), _score_folder(tmp_path / "b", data, 1)
    r = asdtool(["evaluate", "--scores", a, "--data-root", data, "--out", tmp_path / "m" / "a.json"])
    assert r.returncode == 0 and heavy_modules(r) == [], r.stderr
    assert 0 <= json.loads((tmp_path / "m" / "a.json").read_text())["official_score"] <= 1
    r = asdtool(["ensemble", "--scores", a, "--scores", b, "--weights", "1", "--weights", "1", "--out", tmp_path / "ab"])
    assert r.returncode == 0 and heavy_modules(r) == [], r.stderr
    assert (tmp_path / "ab" / "anomaly_score_fan_section_00_test.csv").is_file()
    r = asdtool(["report", "--metrics-dir", tmp_path / "m", "--out", tmp_path / "r", "--model", "a"])
    assert r.returncode == 0 and heavy_modules(r) == [], r.stderr
    assert (tmp_path / "r" / "single_models.md").read_text().startswith("# Single models")


@pytest.mark.parametrize(
    "args, message",
    [
        (["finetune", "--backbone", "foo", "--data-root", "d", "--out", "o"], "Invalid value for '--backbone': 'foo' is not one of 'beats', 'eat', 'dual'"),
        (["finetune", "--stepz", "3"], "No such option: --stepz"),
        (["detect", "--k", "abc", "--embeddings", "e", "--out", "o"], "Invalid value for '--k'"),
        (["bogus"], "No such command 'bogus'"),
        (["detect", "--out", "o"], "missing option --embeddings"),
        (["detect", "--name", "x", "--out", "o"], "No such option: --name"),
    ],
)
def test_usage_errors_are_one_line_and_exit_1(tmp_path, args, message):
    r = asdtool(args, cwd=tmp_path)
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_checked_before_any_work(data, tmp_path, capsys):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    a = _score_folder(tmp_path / "a", data, 0)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    cases = [
        (["detect", "--embeddings", tmp_path / "missing.h5", "--out", precious], "exists and is not a folder"),
        (["baseline", "--data-root", data, "--out", precious], "exists and is not a folder"),
        (["ensemble", "--scores", a, "--weights", "1", "--out", precious], "exists and is not a folder"),
        (["ensemble", "--scores", a, "--weights", "1", "--out", foreign], "holds holiday.jpg, which this command did not write"),
        (["detect", "--embeddings", tmp_path / "missing.h5", "--out", foreign], "holds holiday.jpg"),
        (["evaluate", "--scores", a, "--data-root", data, "--out", tmp_path], "is a folder"),
        (["evaluate", "--scores", a, "--data-root", data, "--out", "/proc/asdtool/m.json"], "cannot be written"),
        (["finetune", "--data-root", data, "--out", precious, "--steps", "1"], "exists and is not a folder"),
        (["finetune", "--data-root", data, "--out", "/proc/asdtool/m", "--steps", "1"], "cannot be written"),
        (["embed", "--model", tmp_path / "m", "--data-root", data, "--out", tmp_path], "is a folder"),
        (["pseudolabel", "--model", tmp_path / "m", "--data-root", data, "--out", tmp_path], "is a folder"),
        (["report", "--metrics-dir", tmp_path, "--out", precious, "--model", "x"], "exists and is not a folder"),
        (["synth", "--out", precious], "exists and is not a folder"),
    ]
    for args, message in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        code = main([str(a) for a in args])  # in this process: the refusals come before any import of torch
        lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert code == 1 and len(lines) == 1 and message in lines[0], (args, lines)
        assert precious.read_text() == "keep me"
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args


def test_interrupted_finetune_says_what_was_kept(data, tmp_path):
    out = tmp_path / "m"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "asdtool", "finetune", "--data-root", str(data), "--out", str(out), "--steps", "100000",
           "--batch-size", "2", "--seconds", "0.5", "--checkpoint-every", "1", "--warmup", "1"]  # fmt: skip
    # a shell's background job inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored:
    # give the child the default disposition, as a terminal's Ctrl-C would find it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + HANG_SECONDS
    while not (out / "train_log.csv").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_SECONDS)
    assert proc.returncode == 130, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert "interrupted; " in lines[-1] and "checkpoint.pt holds step" in lines[-1] and "--resume" in lines[-1], err
    from asdtool.models.checkpoint import read_checkpoint

    step = int(lines[-1].split("holds step ")[1].split()[0])
    saved = read_checkpoint(out)
    assert saved["step"] >= step >= 1 and not saved["complete"]
    assert not (out / "summary.json").exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_interrupt_notes_read_what_each_command_kept(tmp_path):
    import torch

    from asdtool import cli
    from asdtool.commands import evaluate, finetune, pretrain
    from asdtool.config.stages import FinetuneConfig, PretrainConfig
    from asdtool.pretrain.loop import RESUME, RESUME_FORMAT, RESUME_VERSION

    pre = PretrainConfig(audio=[str(tmp_path)], out=tmp_path / "p", steps=50, checkpoint_every=10)
    fine = FinetuneConfig(data_root=tmp_path, out=tmp_path / "f", steps=40, checkpoint_every=5)
    for module, cfg in ((pretrain, pre), (finetune, fine)):
        note = cli._interrupted(module, cfg)
        assert note == (f"interrupted before the first checkpoint (every {cfg.checkpoint_every} steps); "
                        f"nothing usable was kept in {cfg.out}")  # fmt: skip
    pre.out.mkdir()
    torch.save({"format": RESUME_FORMAT, "version": RESUME_VERSION, "step": 20}, pre.out / RESUME)
    assert cli._interrupted(pretrain, pre) == (
        f"interrupted; {pre.out}/{RESUME} holds step 20 of 50: run the same command with --resume to continue")
    assert cli._interrupted(evaluate, None) == "interrupted; nothing was written (outputs appear only when complete)"
