"""`asdtool.deploy.inputs`: the recordings score and serve read (files, folders, globs, stdin, uploads), their machine types and sections."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asdtool.core.errors import AsdError
from asdtool.deploy.bundle import Bundle
from asdtool.deploy.export import export_bundle
from asdtool.deploy.inputs import FILES, UPLOADS, NoDetector, expand_paths, recording_of
from asdtool.deploy.load import load_bundle

from tests.unit.deploy.conftest import _asdtool, _detect_scores


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


def test_files_and_uploads_tell_machine_types_and_sections_by_their_own_rules(tmp_path):
    """One function serves both callers: a file's folders on disk and --machine, an upload's own name and ?machine=."""
    bundle = Bundle(Path("b.asd"), {}, [], None, {("fan", "00"): 0.5, ("fan", "01"): 0.5, ("valve", "00"): 0.5})
    clip = tmp_path / "valve" / "clip.wav"
    clip.parent.mkdir()
    clip.write_bytes(b"")
    assert recording_of(bundle, clip, "clip.wav", None, None) == recording_of(bundle, clip, "clip.wav", None, None, FILES)
    rec = recording_of(bundle, clip, "clip.wav", None, None)
    assert (rec.machine, rec.section) == ("valve", "00")  # the folder on disk, the type's only section
    rec = recording_of(bundle, Path("fan/test/x.wav"), "fan\\test\\section_01_a.wav", None, None, UPLOADS)
    assert (rec.name, rec.machine, rec.section) == ("fan\\test\\section_01_a.wav", "fan", "01")  # the name's folders
    cases = [  # (origin, path, name, machine, section) -> the one line refusing it
        (FILES, tmp_path / "pump" / "c.wav", "c.wav", None, None,
         "c.wav: cannot tell its machine type: no folder above it is one of the bundle's (fan, valve); give --machine"),
        (UPLOADS, clip, "clip.wav", None, None,  # nothing on the server's disk is looked at
         "clip.wav: cannot tell its machine type: no folder in its name is one of the bundle's (fan, valve); give ?machine="),
        (FILES, clip, "fan/c.wav", "fan", None, "fan/c.wav: cannot tell its section from its name; give --section (one of 00, 01)"),
        (UPLOADS, clip, "fan/c.wav", None, None, "fan/c.wav: cannot tell its section from its name; give ?section= (one of 00, 01)"),
    ]  # fmt: skip
    for origin, path, name, machine, section, message in cases:
        with pytest.raises(AsdError) as exc:
            recording_of(bundle, path, name, machine, section, origin)
        assert str(exc.value) == message and not isinstance(exc.value, NoDetector)  # the service answers 400
    for origin in (FILES, UPLOADS):  # what the bundle has no detector for: the service answers 404
        with pytest.raises(NoDetector) as exc:
            recording_of(bundle, clip, "a.wav", "pump", None, origin)
        assert str(exc.value) == "a.wav: the bundle has no machine type 'pump' (it has fan, valve)"
        with pytest.raises(NoDetector) as exc:
            recording_of(bundle, clip, "a.wav", "fan", "07", origin)
        assert str(exc.value) == "a.wav: the bundle has no section 07 of fan (it has 00, 01)"
