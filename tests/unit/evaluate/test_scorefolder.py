"""Tests for asdtool/evaluate/scorefolder.py: writing a score folder whole, and checking an --out folder before any work."""

from __future__ import annotations

import numpy as np
import pytest

from asdtool.core.errors import AsdError
from asdtool.core.outputs import TMP_PREFIX
from asdtool.data import store
from asdtool.evaluate import metrics
from asdtool.evaluate.scorefolder import SCORE_STORE, check_score_folder, write_score_folder

ROWS = {
    ("fan", "00", "test"): {"section_00_source_test_normal_0000_a_1.wav": 0.25, "section_00_source_test_anomaly_0000_a_1.wav": 1 / 3},
    ("fan", "00", "train"): {"section_00_source_train_normal_0000_a_1.wav": 1e-300, "section_00_source_train_normal_0001_a_1.wav": 2.0},
    ("ToyCar", "01", "test"): {"section_01_0000.wav": -0.5},
}  # fmt: skip
NAMES = ["anomaly_score_ToyCar_section_01_test.csv", "anomaly_score_fan_section_00_test.csv",
         "anomaly_score_fan_section_00_train.csv"]  # fmt: skip


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _score_store():
    meta = store.StoreMeta(model="toy", checkpoint_sha256="c" * 64)
    names = list(ROWS[("fan", "00", "test")])
    group = store.Group(names, [0, 0], [0, 1], ["a_1", "a_1"], np.array([0.25, 1 / 3]))
    return meta, {("fan", "test"): group}


# ----------------------------------------------------------------------------- writing


def test_one_official_csv_per_machine_section_and_split(tmp_path):
    out = tmp_path / "scores"
    write_score_folder(out, ROWS)
    assert _names(out) == NAMES
    assert (out / "anomaly_score_fan_section_00_test.csv").read_text() == (
        "section_00_source_test_normal_0000_a_1.wav,0.25\n"
        f"section_00_source_test_anomaly_0000_a_1.wav,{1 / 3!r}\n"
    )  # rows in the given order, floats as their repr: they read back exactly
    for (machine, section, split), rows in ROWS.items():
        assert metrics.read_score_csv(out / metrics.score_file_name(machine, section, split)) == rows


def test_the_score_store_goes_beside_the_csv_files(tmp_path):
    out = tmp_path / "scores"
    write_score_folder(out, ROWS, store=_score_store())
    assert _names(out) == sorted(NAMES + [SCORE_STORE]) and SCORE_STORE == "scores.h5"
    s = store.read_store(out / SCORE_STORE, store.SCORES)
    assert s.meta.model == "toy" and s.machines == ["fan"]
    got = s.get("fan", "test")
    assert got.file_names == list(ROWS[("fan", "00", "test")])
    np.testing.assert_array_equal(got.values, [0.25, 1 / 3])


def test_writing_again_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "scores"
    write_score_folder(out, ROWS, store=_score_store())
    write_score_folder(out, {("valve", "00", "test"): {"section_00_0001.wav": 0.5}})
    assert _names(out) == ["anomaly_score_valve_section_00_test.csv"]  # no file of the earlier run survives
    assert _names(tmp_path) == ["scores"]


def test_a_failed_write_leaves_the_earlier_folder_whole(tmp_path):
    out = tmp_path / "scores"
    write_score_folder(out, ROWS)
    before = {n: (out / n).read_bytes() for n in _names(out)}
    broken = {("fan", "00", "test"): {"a.wav": 0.5}, ("fan", "00", "train"): {"b.wav": "not a number"}}
    with pytest.raises(ValueError):
        write_score_folder(out, broken)
    assert {n: (out / n).read_bytes() for n in _names(out)} == before
    assert _names(tmp_path) == ["scores"]  # no temporary folder left
    with pytest.raises(AsdError, match="refusing to write /fan/test"):  # a store that cannot be written: nothing either
        meta, groups = _score_store()
        groups[("fan", "test")].values[0] = np.nan
        write_score_folder(tmp_path / "fresh", ROWS, store=(meta, groups))
    assert _names(tmp_path) == ["scores"]


# ----------------------------------------------------------------------------- checking --out


def test_a_new_place_and_a_folder_of_our_own_are_accepted(tmp_path):
    assert check_score_folder(tmp_path / "new" / "scores") == tmp_path / "new" / "scores"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    out = tmp_path / "scores"
    write_score_folder(out, ROWS, store=_score_store())
    metrics.write_score_csv(out / metrics.decision_file_name("fan"), {"a.wav": 1, "b.wav": 0})
    (out / ".gitignore").write_text("/scores.h5\n")  # DVC's
    (out / f"{TMP_PREFIX}1234-x.csv.abc.tmp").write_text("leftover")  # an atomic write's leftover
    assert check_score_folder(out) == out


@pytest.mark.parametrize("name, content", [
    ("notes.txt", b"my notes\n"),
    ("anomaly_score_fan_section_00_test.csv", b"file_name,score\nsection_00_0000.wav,high\n"),  # our name, not our content
    ("anomaly_score_fan_section_0_test.csv", b"a.wav,0.5\n"),  # our content, not one of our names
    ("decision_result_fan_section_00_test.csv", b"a.wav,0.5\n"),  # a decision is 0 or 1
    (SCORE_STORE, b"\x89HDF\r\n\x1a\n not really"),
    ("sub", None),  # a folder
])  # fmt: skip
def test_a_folder_holding_a_foreign_entry_is_refused_and_kept(tmp_path, name, content):
    out = tmp_path / "scores"
    write_score_folder(out, ROWS)
    target = out / name
    target.mkdir() if content is None else target.write_bytes(content)
    with pytest.raises(AsdError) as error:
        check_score_folder(out)
    assert str(error.value) == (f"{out}: holds {name}, which this command did not write (a score store or an anomaly "
                                "score file or a decision file written by asdtool goes there); refusing to replace the "
                                "folder (choose another output)")  # fmt: skip
    assert _names(out) == sorted(set(NAMES + [name]))
    assert target.is_dir() if content is None else target.read_bytes() == content


def test_a_file_or_a_folder_holding_an_input_is_refused(tmp_path):
    (tmp_path / "scores").write_text("x")
    with pytest.raises(AsdError, match=r"scores: exists and is not a folder; refusing to replace it"):
        check_score_folder(tmp_path / "scores")
    emb = tmp_path / "run" / "emb.h5"
    emb.parent.mkdir()
    emb.write_bytes(b"")
    with pytest.raises(AsdError) as error:
        check_score_folder(tmp_path / "run", inputs=[emb, None])
    assert str(error.value) == f"{tmp_path / 'run'}: holds {emb}, one of this command's inputs; choose another output folder"
    with pytest.raises(AsdError, match="is one of this command's own inputs"):
        check_score_folder(emb.parent, inputs=[emb.parent])


def test_a_large_score_file_with_non_ascii_names_is_still_ours(tmp_path):
    out = tmp_path / "scores"
    # with these names a two-byte "ü" straddles byte 65536 (checked below)
    rows = {("fan", "00", "train"): {f"xsection_00_source_train_normal_{i:04d}_m_üüüü{i}.wav": 0.1 for i in range(1200)}}
    write_score_folder(out, rows)
    data = (out / "anomaly_score_fan_section_00_train.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data[:65536].decode("utf-8")  # the case: the prefix ends inside a character
    assert check_score_folder(out) == out
