"""`asdtool.deploy.scorelog`: `score --log` logs every window and records its bundle; `--plot` draws the long recordings."""

from __future__ import annotations

import csv
import json

import numpy as np
import soundfile as sf

from asdtool.data.audio import read_channels
from asdtool.data.store import read_store
from asdtool.deploy.export import export_bundle
from asdtool.deploy.load import read_bundle_meta
from asdtool.detect.settings import DetectorSettings

from tests.unit.deploy.conftest import _asdtool


def test_score_logs_every_window_and_plots_long_recordings(fitted, tmp_path):
    base = fitted["base"]
    bundle, other = tmp_path / "b.asd", tmp_path / "other.asd"
    export_bundle([fitted["full"]], [base / "full.h5"], bundle, settings=DetectorSettings(normalise="domain-z"))
    export_bundle([fitted["full2"]], [base / "full2.h5"], other, settings=DetectorSettings(normalise="domain-z"))
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
