"""Tests for asdtool/data/hidden.py: hidden_attributes.csv and the organisers' attribute correspondence files, read and refused directly."""

from __future__ import annotations

from pathlib import Path

import pytest

from asdtool.core.errors import AsdError
from asdtool.data.hidden import (
    CORRESPONDENCE_HEADER,
    HIDDEN_ATTRIBUTES_FILE,
    read_correspondence_folder,
    read_hidden_attributes,
    read_hidden_rows,
    write_hidden_rows,
)

ROWS = [
    ("gearbox", "gearbox/train/section_00_source_train_normal_0000_noAttribute.wav", "volt_1.0_wt_150"),
    ("gearbox", "gearbox/test/section_00_target_test_anomaly_0001_noAttribute.wav", "volt_2.0_wt_200"),
    ("slider", "slider/train/section_00_source_train_normal_0000_noAttribute.wav", "vel, \"odd\"_ü"),  # quoted by csv
]


# ----------------------------------------------------------------------------- hidden_attributes.csv


def test_rows_round_trip_under_the_header(tmp_path):
    path = tmp_path / HIDDEN_ATTRIBUTES_FILE
    write_hidden_rows(path, ROWS)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "machine,file_name,hidden_attributes" and text.endswith("\n") and "\r" not in text
    assert text.splitlines()[1] == "gearbox,gearbox/train/section_00_source_train_normal_0000_noAttribute.wav,volt_1.0_wt_150"
    assert read_hidden_rows(path) == ROWS


def test_hidden_attributes_are_keyed_by_machine_and_clip_name(tmp_path):
    path = tmp_path / HIDDEN_ATTRIBUTES_FILE
    write_hidden_rows(path, ROWS)
    assert read_hidden_attributes(path) == {
        ("gearbox", "section_00_source_train_normal_0000_noAttribute.wav"): "volt_1.0_wt_150",
        ("gearbox", "section_00_target_test_anomaly_0001_noAttribute.wav"): "volt_2.0_wt_200",
        ("slider", "section_00_source_train_normal_0000_noAttribute.wav"): "vel, \"odd\"_ü",
    }
    # the same name under two machine types stays two entries
    assert len({n for _, n in read_hidden_attributes(path)}) == 2


def test_an_empty_file_of_rows_is_no_rows_and_a_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "h.csv"
    write_hidden_rows(path, [])
    assert path.read_text() == "machine,file_name,hidden_attributes\n" and read_hidden_rows(path) == []
    path.write_bytes("\ufeffmachine,file_name,hidden_attributes\nfan,fan/train/a.wav,x_1\n".encode("utf-8"))
    assert read_hidden_rows(path) == [("fan", "fan/train/a.wav", "x_1")]


@pytest.mark.parametrize("text", ["", "machine,file_name\n", "file_name,machine,hidden_attributes\nfan,a.wav,x\n",
                                  "machine, file_name, hidden_attributes\n"])  # fmt: skip
def test_a_file_without_the_header_is_refused(tmp_path, text):
    path = tmp_path / "h.csv"
    path.write_text(text)
    with pytest.raises(AsdError) as error:
        read_hidden_rows(path)
    assert str(error.value) == f"{path}: hidden attribute file has no 'machine,file_name,hidden_attributes' header"


def test_an_unreadable_hidden_attribute_file_is_refused(tmp_path):
    with pytest.raises(AsdError, match=r"absent\.csv: cannot read hidden attribute file \(FileNotFoundError\)$"):
        read_hidden_rows(tmp_path / "absent.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(AsdError, match=r"bin\.csv: cannot read hidden attribute file \(UnicodeDecodeError\)$"):
        read_hidden_rows(tmp_path / "bin.csv")


# ----------------------------------------------------------------------------- correspondence files


def _correspondence(folder: Path, machine: str, split: str, rows: list[str], header: str = "source_file_name,target_file_name",
                    section: str = "00") -> Path:  # fmt: skip
    path = folder / machine / f"attributes_{section}_{split}_correspondence.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_correspondence_files_map_the_distributed_name_to_the_true_attributes(tmp_path):
    gt = tmp_path / "attributes"
    _correspondence(gt, "gearbox", "train", [
        "section_00_source_train_normal_0000_volt_1.0_wt_150.wav,section_00_source_train_normal_0000_noAttribute.wav",
        "",  # blank lines are skipped
        "dev_data/raw/gearbox/train/section_00_target_train_normal_0001_volt_2.0_wt_30.wav, "
        "dev_data/raw/gearbox/train/section_00_target_train_normal_0001_noAttribute.wav",  # paths: the names count
    ])  # fmt: skip
    _correspondence(gt, "gearbox", "test", ["section_00_source_test_anomaly_0002_volt_1.5_wt_100.wav,section_00_0002.wav"])
    _correspondence(gt, "slider", "train", ["section_00_source_train_normal_0000_vel_300.wav,section_00_source_train_normal_0000_noAttribute.wav"],
                    header=" source_file_name , target_file_name ")  # fmt: skip
    (gt / "README.md").write_text("not a correspondence file")
    (gt / "gearbox" / "notes.csv").write_text("ignored")
    assert read_correspondence_folder(gt) == {
        ("gearbox", "section_00_source_train_normal_0000_noAttribute.wav"): "volt_1.0_wt_150",
        ("gearbox", "section_00_target_train_normal_0001_noAttribute.wav"): "volt_2.0_wt_30",
        ("gearbox", "section_00_0002.wav"): "volt_1.5_wt_100",  # an eval test clip's distributed name
        ("slider", "section_00_source_train_normal_0000_noAttribute.wav"): "vel_300",
    }
    assert CORRESPONDENCE_HEADER == ["source_file_name", "target_file_name"]


def test_the_folder_must_exist_and_hold_correspondence_files(tmp_path):
    with pytest.raises(AsdError) as error:
        read_correspondence_folder(tmp_path / "absent")
    assert str(error.value) == f"{tmp_path / 'absent'}: attribute ground-truth folder does not exist"
    (tmp_path / "gt" / "fan").mkdir(parents=True)
    (tmp_path / "gt" / "attributes_00_train_correspondence.csv").write_text("source_file_name,target_file_name\n")  # not in a machine folder
    with pytest.raises(AsdError) as error:
        read_correspondence_folder(tmp_path / "gt")
    assert str(error.value) == f"{tmp_path / 'gt'}: holds no <machine>/attributes_NN_{{train,test}}_correspondence.csv files"
    (tmp_path / "file").write_text("x")
    with pytest.raises(AsdError, match="attribute ground-truth folder does not exist"):
        read_correspondence_folder(tmp_path / "file")


@pytest.mark.parametrize("header", ["file,attrs", "target_file_name,source_file_name", ""])
def test_a_correspondence_file_without_its_header_is_refused(tmp_path, header):
    path = _correspondence(tmp_path / "gt", "gearbox", "train", ["a.wav,b.wav"], header=header)
    with pytest.raises(AsdError) as error:
        read_correspondence_folder(tmp_path / "gt")
    assert str(error.value) == f"{path}: has no 'source_file_name,target_file_name' header"


def test_bad_lines_are_refused_with_their_number(tmp_path):
    good = "section_00_source_train_normal_0000_volt_1.0.wav,section_00_source_train_normal_0000_noAttribute.wav"
    path = _correspondence(tmp_path / "a", "gearbox", "train", [good, "", "only_one_cell.wav"])
    with pytest.raises(AsdError) as error:
        read_correspondence_folder(tmp_path / "a")
    assert str(error.value) == f"{path}: line 4 is not source_file_name,target_file_name"

    path = _correspondence(tmp_path / "b", "gearbox", "test", [good, "recording_7.wav,section_00_0001.wav"])
    with pytest.raises(AsdError) as error:
        read_correspondence_folder(tmp_path / "b")
    message = str(error.value)
    assert message.startswith(f"{path}: line 3: recording_7.wav: file name does not parse as section_NN_")
    assert "\n" not in message
