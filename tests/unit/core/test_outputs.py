"""The output rule (asdtool.core.outputs): every command replaces only what it wrote itself, never a user's file or an input.

The table test runs every command that writes files, in this process, against five kinds of
existing output: a user's file with the output's extension, a user's file of another kind, one of
the command's own inputs, the command's own earlier output, and a folder of the user's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asdtool.core import outputs
from asdtool.core.atomic import atomic_dir, atomic_path, clean_leftovers
from asdtool.cli import main
from asdtool.core.errors import AsdError
from asdtool.detect.settings import DetectorSettings

MACHINES = ["fan", "valve"]
USER_BYTES = b"the user's own content, nothing asdtool wrote\n"


# ----------------------------------------------------------------------------- recognisers and the checks


def _png(path: Path, ours: bool) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=20)
    FigureCanvasAgg(fig)
    fig.add_subplot(1, 1, 1).plot([0, 1])
    fig.savefig(path, format="png", metadata=outputs.PNG_METADATA if ours else None)
    return path


def test_a_png_is_ours_by_its_software_chunk_not_its_extension(tmp_path):
    assert outputs.PNG(_png(tmp_path / "a.png", ours=True))
    assert not outputs.PNG(_png(tmp_path / "holiday_2023.png", ours=False))  # matplotlib's own Software value
    (tmp_path / "fake.png").write_bytes(USER_BYTES)
    assert not outputs.PNG(tmp_path / "fake.png")


def test_text_kinds_are_recognised_by_their_first_line_and_keys(tmp_path):
    (tmp_path / "r.csv").write_text("file,machine,section,score,threshold,decision\nx.wav,fan,00,0.1,0.2,0\n")
    (tmp_path / "u.csv").write_text("name,value\n")
    assert outputs.SCORE_RESULTS_CSV(tmp_path / "r.csv") and not outputs.SCORE_RESULTS_CSV(tmp_path / "u.csv")
    (tmp_path / "m.json").write_text(json.dumps({"official_score": 0.5, "arithmetic_mean": 0.5}))
    (tmp_path / "deep.json").write_text("[" * 100_000)
    assert outputs.METRICS_JSON(tmp_path / "m.json")
    assert not outputs.METRICS_JSON(tmp_path / "deep.json") and not outputs.METRICS_JSON(tmp_path / "u.csv")
    (tmp_path / "s.csv").write_text("section_00_0001.wav,0.25\nsection_00_0002.wav,nan\n")
    assert outputs.SCORE_LINES(tmp_path / "s.csv") and not outputs.DECISION_LINES(tmp_path / "s.csv")
    assert not outputs.SCORE_LINES(tmp_path / "u.csv")


def test_check_file_refuses_a_user_file_and_an_input_and_accepts_its_own_kind(tmp_path):
    user = tmp_path / "notes.json"
    user.write_bytes(USER_BYTES)
    with pytest.raises(AsdError, match=r"notes.json: exists and is not a metrics file written by asdtool; refusing to "
                                       r"replace it \(give --force to replace it, or choose another output\)$"):  # fmt: skip
        outputs.check_file(user, outputs.METRICS_JSON)
    assert outputs.check_file(user, outputs.METRICS_JSON, force=True) == user  # --force: the user asked for it
    with pytest.raises(AsdError, match="is one of this command's own inputs"):
        outputs.check_file(user, outputs.METRICS_JSON, inputs=[user], force=True)
    link = tmp_path / "sub" / ".." / "notes.json"  # the same file by another spelling
    (tmp_path / "sub").mkdir()
    with pytest.raises(AsdError, match="is one of this command's own inputs"):
        outputs.check_file(link, outputs.METRICS_JSON, inputs=[user], force=True)
    hard = tmp_path / "hard.json"
    os.link(user, hard)  # another name, the same inode
    with pytest.raises(AsdError, match="is one of this command's own inputs"):
        outputs.check_file(hard, outputs.METRICS_JSON, inputs=[user], force=True)
    ours = tmp_path / "m.json"
    ours.write_text(json.dumps({"official_score": 0.5, "arithmetic_mean": 0.5}))
    assert outputs.check_file(ours, outputs.METRICS_JSON) == ours
    assert user.read_bytes() == USER_BYTES


def test_check_folder_refuses_user_files_and_a_folder_holding_an_input(tmp_path):
    plots = tmp_path / "photos"
    plots.mkdir()
    _png(plots / "0000_a.png", ours=True)
    kind = outputs.named(lambda n: n.endswith(".png"), outputs.PNG)
    assert outputs.check_folder(plots, kind) == plots
    _png(plots / "holiday_2023.png", ours=False)
    with pytest.raises(AsdError, match=r"photos: holds holiday_2023.png, which this command did not write \(a plot written by asdtool goes there\)"):
        outputs.check_folder(plots, kind)
    with pytest.raises(AsdError, match=r"holds .*input.wav, one of this command's inputs"):
        outputs.check_folder(tmp_path, kind, inputs=[tmp_path / "input.wav"])


def test_a_killed_writers_temporary_file_goes_at_the_next_run_and_a_live_ones_stays(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    left = tmp_path / f"{outputs.TMP_PREFIX}{pid}-b.asd.abc123.tmp"
    left.write_bytes(b"x" * 1000)
    mine = tmp_path / f"{outputs.TMP_PREFIX}{os.getpid()}-b.asd.zzz.tmp"  # a live writer's (this process)
    mine.write_bytes(b"y")
    other = tmp_path / f"{outputs.TMP_PREFIX}{pid}-c.asd.abc123.tmp"  # another target's
    other.write_bytes(b"z")
    with atomic_path(tmp_path / "b.asd") as tmp:
        tmp.write_bytes(b"bundle")
    assert not left.exists() and mine.exists() and other.exists()
    assert (tmp_path / "b.asd").read_bytes() == b"bundle"
    assert clean_leftovers(tmp_path / "c.asd") == [other]


def test_an_interrupted_atomic_write_leaves_nothing(tmp_path):
    for writer in (atomic_path, atomic_dir):
        with pytest.raises(KeyboardInterrupt):
            with writer(tmp_path / "out") as tmp:
                (tmp / "x").write_bytes(b"1") if tmp.is_dir() else tmp.write_bytes(b"1")
                raise KeyboardInterrupt
        assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- every command x five existing outputs


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Tiny inputs of every command: a dev set, a 2-step model, its store, scores, metrics, a bundle and a score log."""
    from asdtool.deploy.export import export_bundle
    from asdtool.data.synth.dev import SynthSizes
    from asdtool.detect.knn import detect_to_folder
    from asdtool.evaluate.evaluation import evaluate_folder

    from tests.toydata import tiny_model

    base = tmp_path_factory.mktemp("outputs")
    data, model, _ = tiny_model(base, 4, SynthSizes(0.5, 6, 2, 2), steps=2, warmup=1, machines=MACHINES)
    detect_to_folder(base / "emb.h5", base / "scores")
    detect_to_folder(base / "emb.h5", base / "scores2", DetectorSettings(k=2))
    (base / "metrics").mkdir()
    evaluate_folder(base / "scores", data_root=data, out=base / "metrics" / "m.json")
    export_bundle([model], [base / "emb.h5"], base / "b.asd")
    clip = sorted((data / "fan" / "test").glob("*.wav"))[0]
    long = base / "recordings" / "fan" / "section_00_long.wav"  # three windows: one plot
    long.parent.mkdir(parents=True)
    long.write_bytes(b"")
    import soundfile as sf

    sf.write(long, np.concatenate([sf.read(clip)[0]] * 3), 16000, subtype="PCM_16")
    assert main(["score", str(base / "b.asd"), str(clip), "--log", str(base / "log")]) == 0
    return {"base": base, "data": data, "model": model, "emb": base / "emb.h5", "scores": base / "scores",
            "scores2": base / "scores2", "metrics": base / "metrics", "bundle": base / "b.asd", "clip": clip, "long": long,
            "log": base / "log"}  # fmt: skip


# name: (argv given the world and the output path, folder output?, extension, an input to name as the output)
COMMANDS = {
    "synth": (lambda w, o: ["synth", "--out", o, "--seconds", "0.25", "--source-train", "2", "--target-train", "1",
                            "--test-per-domain", "1", "--machine", "fan"], True, "", None),  # fmt: skip
    "corpus": (lambda w, o: ["corpus", "--out", o, "--clips", "2", "--seconds", "0.25"], True, "", None),
    "pretrain": (lambda w, o: ["pretrain", "--audio", w["data"] / "fan" / "train", "--out", o, "--steps", "1",
                               "--batch-size", "2", "--warmup", "0", "--seconds", "0.5", "--threads", "1"], True, "",
                 lambda w: w["data"] / "fan"),  # fmt: skip
    "finetune": (lambda w, o: ["finetune", "--data-root", w["data"], "--out", o, "--steps", "1", "--batch-size", "4",
                               "--seconds", "0.5", "--warmup", "0", "--threads", "1"], True, "", lambda w: w["data"]),
    "embed": (lambda w, o: ["embed", "--model", w["model"], "--data-root", w["data"], "--out", o], False, ".h5",
              lambda w: w["model"] / "checkpoint.pt"),
    "baseline": (lambda w, o: ["baseline", "--data-root", w["data"], "--out", o], True, "", lambda w: w["data"]),
    "detect": (lambda w, o: ["detect", "--embeddings", w["emb"], "--out", o], True, "", lambda w: w["base"]),
    "ensemble": (lambda w, o: ["ensemble", "--scores", w["scores"], "--scores", w["scores2"], "--weights", "1",
                               "--weights", "1", "--out", o], True, "", lambda w: w["scores2"]),  # fmt: skip
    "evaluate": (lambda w, o: ["evaluate", "--scores", w["scores"], "--data-root", w["data"], "--out", o], False, ".json",
                 lambda w: w["scores"] / "anomaly_score_fan_section_00_test.csv"),
    "report": (lambda w, o: ["report", "--metrics-dir", w["metrics"], "--out", o, "--model", "m"], True, "",
               lambda w: w["metrics"]),
    "export": (lambda w, o: ["export", "--model", w["model"], "--embeddings", w["emb"], "--out", o], False, ".asd",
               lambda w: w["model"] / "checkpoint.pt"),
    "score": (lambda w, o: ["score", w["bundle"], w["clip"], "--out", o, "--log", w["log"]], False, ".csv",
              lambda w: w["log"] / "scores.csv"),
    "score-plot": (lambda w, o: ["score", w["bundle"], w["long"], "--plot", o], True, "", lambda w: w["long"].parent),
    "drift-plot": (lambda w, o: ["drift", w["log"], "--plot", o], False, ".png", lambda w: w["log"] / "scores.csv"),
    "drift-out": (lambda w, o: ["drift", w["log"], "--plot", w["base"] / "drift-out.png", "--out", o], False, ".json",
                  lambda w: w["log"] / "bundle.json"),
}
PROTECTED = {"finetune": "pass --resume", "pretrain": "pass --resume", "synth": "without --overwrite",
             "corpus": "without --overwrite"}  # fmt: skip
CASES = ("user-same-extension", "user-other-kind", "own-input", "own-earlier-output", "user-folder")


def _snapshot(path: Path) -> dict[str, str]:
    """Return {relative name: sha256} of a file or of every file below a folder."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


# synth and corpus read no input: they have no own-input case
TABLE = [(command, case) for command in COMMANDS for case in CASES if case != "own-input" or COMMANDS[command][3]]


@pytest.mark.parametrize("command,case", TABLE)
def test_every_command_replaces_only_what_it_wrote(world, tmp_path, capsys, command, case):
    argv, folder, ext, own_input = COMMANDS[command]
    if case == "user-same-extension":
        out = tmp_path / f"user{ext or '.wav'}"
        out.write_bytes(USER_BYTES)
    elif case == "user-other-kind":
        out = tmp_path / "notes.txt"
        out.write_bytes(USER_BYTES)
    elif case == "user-folder":
        out = tmp_path / f"mine{ext}"
        out.mkdir()
        (out / f"holiday_2023{ext or '.png'}").write_bytes(USER_BYTES)
        _png(out / "photo.png", ours=False)
    elif case == "own-input":
        out = own_input(world)
    else:
        out = tmp_path / f"earlier{ext}"
        code, err = _run(argv(world, out), capsys)
        assert code == 0, err
    before = _snapshot(out)
    code, err = _run(argv(world, out), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    if case == "own-earlier-output":
        if command in PROTECTED:  # never silently redone: the command's own flag (--resume, --overwrite) or another --out
            assert code == 1 and len(lines) == 1 and PROTECTED[command] in err, err
            assert _snapshot(out) == before
        else:
            assert code == 0, err
        return
    if command == "synth" and case == "user-folder":  # a data root: synth adds its machine folders beside the user's files
        assert code == 0, err
        assert {k: v for k, v in _snapshot(out).items() if k in before} == before
        return
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert _snapshot(out) == before  # byte for byte
    if case == "own-input":
        assert "input" in err, err
    elif folder:
        assert ("is not a folder" in err) if case != "user-folder" else ("which this command did not write" in err or "not a corpus" in err), err
    elif case == "user-folder":
        assert "is a folder; give a file name" in err, err
    elif command == "score" and case == "user-other-kind":
        assert "--out must end in .csv or .json" in err, err
    else:
        assert "written by asdtool; refusing to replace it (give --force" in err, err


def test_force_replaces_a_user_file_but_never_an_input(world, tmp_path, capsys):
    out = tmp_path / "user.csv"
    out.write_bytes(USER_BYTES)
    code, err = _run(["score", world["bundle"], world["clip"], "--out", out, "--force"], capsys)
    assert code == 0, err
    assert out.read_text().startswith("file,machine,section,score,threshold,decision\n")
    code, err = _run(["export", "--model", world["model"], "--embeddings", world["emb"], "--out", world["emb"],
                      "--force"], capsys)  # fmt: skip
    assert code == 1 and "is one of this command's own inputs" in err, err
    assert outputs.EMBEDDING_STORE(world["emb"])


def test_drift_refuses_to_plot_over_the_log_it_reads(world, capsys):
    log = world["log"] / "scores.csv"
    before = log.read_bytes()
    code, err = _run(["drift", world["log"], "--plot", log, "--force"], capsys)
    assert code == 1 and err.strip().endswith("scores.csv: is one of this command's own inputs; refusing to write over it "
                                              "(choose another output)"), err  # fmt: skip
    assert log.read_bytes() == before


def test_score_plot_keeps_a_folder_of_the_users_photos(world, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _png(photos / "holiday_2023.png", ours=False)
    before = _snapshot(photos)
    code, err = _run(["score", world["bundle"], world["long"], "--plot", photos], capsys)
    assert code == 1 and "holds holiday_2023.png, which this command did not write" in err, err
    assert _snapshot(photos) == before
    fresh = tmp_path / "plots"
    assert _run(["score", world["bundle"], world["long"], "--plot", fresh], capsys)[0] == 0
    (png,) = fresh.iterdir()
    assert outputs.PNG(png) and np.frombuffer(png.read_bytes()[:8], np.uint8).tolist()[1:4] == [80, 78, 71]


def test_export_removes_the_temporary_file_a_killed_export_left(world, tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"{outputs.TMP_PREFIX}{int(dead.stdout)}-kill.asd.k3x9q1.tmp"  # what SIGKILL mid-write leaves
    left.write_bytes(b"\0" * 4096)
    code, err = _run(["export", "--model", world["model"], "--embeddings", world["emb"], "--out", tmp_path / "kill.asd"],
                     capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kill.asd"]
    assert outputs.BUNDLE(tmp_path / "kill.asd")


def test_an_interrupt_during_the_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    import asdtool.core.atomic as atomic

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "prev.asd") as tmp:
            tmp.write_bytes(b"")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_score_results_csv_cells_are_safe_in_a_spreadsheet(tmp_path):
    import csv

    from asdtool.deploy.bundle import RecordingScore
    from asdtool.commands.score import CSV_HEADER, write_results

    out = tmp_path / "res.csv"
    write_results(out, [RecordingScore("=HYPERLINK(\"http://x\").wav", "fan", "00", [0.0], [0.3], 0.3, 0.25),
                        RecordingScore("@a.wav", "-fan", "00", [0.0], [0.1], 0.1, 0.25)])  # fmt: skip
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(CSV_HEADER)
    assert rows[1][:3] == ["'=HYPERLINK(\"http://x\").wav", "fan", "00"] and rows[2][:3] == ["'@a.wav", "'-fan", "00"]
    assert outputs.SCORE_RESULTS_CSV.recognise(out)  # still recognised as our own on the next run
