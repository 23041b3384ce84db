"""asdtool/data/layouts.py: one reader per DCASE layout (2020-2026), one record type out.

The roots here are written by hand from the organisers' own names (their baseline's READMEs and
ground-truth files), independently of `asdtool synth --layout`, whose output tests/test_synth_layouts.py reads.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from asdtool.data import dcase, layouts
from asdtool.detect.knn import detect_store
from asdtool.detect.settings import DetectorSettings
from asdtool.core.errors import AsdError
from asdtool.evaluate.metrics import evaluate_scores, summarize, truth_from_folder
from asdtool.data.store import Group, Store, StoreMeta

from tests.conftest import write_wave


def _write(root: Path, rel: list[str], channels: int = 1) -> None:
    for i, r in enumerate(rel):
        write_wave(root / r, seconds=0.1, channels=channels, seed=i)


@pytest.mark.parametrize(
    "name, split, fields",
    [
        ("normal_id_04_00000123.wav", "train", ("04", 123, "source", "train", 0, "")),
        ("anomaly_id_02_00000007.wav", "test", ("02", 7, "source", "test", 1, "")),
        ("id_05_00000514.wav", "test", ("05", 514, "source", "test", -1, "")),
    ],
)
def test_2020_names(name, split, fields):
    n = layouts.parse_ids_name(name, split)
    assert (n.section, n.index, n.domain, n.split, n.label, n.attribute_string) == fields


def test_2021_names_keep_free_text_attributes_and_the_folder_domain():
    n = layouts.parse_folders_name("section_01_source_train_normal_0999_strength_1_ambient.wav", "train")
    assert (n.section, n.index, n.domain, n.label, n.attribute_string, n.attributes) == (
        "01", 999, "source", 0, "strength_1_ambient", {})
    n = layouts.parse_folders_name("section_00_target_test_anomaly_0042.wav", "test")
    assert (n.domain, n.label, n.attribute_string) == ("target", 1, "")
    n = layouts.parse_folders_name("section_03_source_test_0199.wav", "test")  # eval: domain, no label
    assert (n.section, n.domain, n.label) == ("03", "source", -1)
    with pytest.raises(ValueError, match="does not parse"):
        layouts.parse_folders_name("section_00_source_test_normal_0000_x_1.wav", "test")


@pytest.mark.parametrize(
    "name, attrs_string, attrs",
    [
        ("section_00_source_train_normal_0001_pro_A_wt_200.wav", "pro_A_wt_200", {"pro": "A", "wt": "200"}),
        ("section_00_source_train_normal_0001_noAttribute.wav", "noAttribute", {}),  # 2024 hidden
        ("section_00_source_train_normal_0000_.wav", "", {}),  # 2025: trailing underscore
        ("section_00_source_test_normal_0000_car_A2_spd_28V_mic_1_noise_1.wav", "car_A2_spd_28V_mic_1_noise_1",
         {"car": "A2", "spd": "28V", "mic": "1", "noise": "1"}),  # 2026
    ],
)
def test_2022_to_2026_names(name, attrs_string, attrs):
    n = layouts.parse_sections_name(name)
    assert (n.attribute_string, n.attributes) == (attrs_string, attrs)


@pytest.mark.parametrize("name", ["section_00_machine_0001_.wav", "section_00_noise_0100_.wav",
                                  "section_00_source_supplemental_machine_0000.wav"])  # fmt: skip
def test_2025_supplemental_names(name):
    n = layouts.parse_sections_name(name, layouts.SUPPLEMENTAL)
    assert n.split == "supplemental" and n.label == 0 and n.attribute_string.startswith("supplemental-")
    assert n.attribute_string.split("_")[0] in ("supplemental-machine", "supplemental-noise")


@pytest.mark.parametrize(
    "name, section",
    [("section_03_0001.wav", "03"), ("normal_id_06_00000000.wav", "06"), ("id_01_00000009.wav", "01"),
     ("section_02_target_test_0005.wav", "02"), ("section_00_source_train_normal_0000_.wav", "00")],
)  # fmt: skip
def test_every_layout_names_its_section(name, section):
    assert layouts.section_of(name) == section


def test_section_of_refuses_a_name_without_one():
    with pytest.raises(ValueError, match="names no section"):
        layouts.section_of("recording_01.wav")


def test_a_2020_root_reads_ids_as_sections_and_every_clip_as_source(tmp_path):
    root = tmp_path / "dcase2020"
    _write(root, [f"fan/train/normal_id_{i}_0000000{j}.wav" for i in ("00", "02") for j in range(3)]
           + [f"fan/test/{lab}_id_{i}_0000000{j}.wav" for i in ("00", "02") for lab in ("normal", "anomaly")
              for j in range(2)])  # fmt: skip
    ds = dcase.scan(root)
    assert Counter((c.section, c.split, c.label) for c in ds.clips) == {
        ("00", "train", 0): 3, ("02", "train", 0): 3, ("00", "test", 0): 2, ("00", "test", 1): 2,
        ("02", "test", 0): 2, ("02", "test", 1): 2}  # fmt: skip
    assert {c.domain for c in ds.clips} == {"source"}
    assert {c.class_key for c in ds.clips if c.split == "train"} == {"fan/noAttribute", "fan/section_02/noAttribute"}


def test_a_2021_root_reads_domain_test_folders_and_refuses_a_clip_in_the_wrong_one(tmp_path):
    root = tmp_path / "dcase2021"
    train = [f"pump/train/section_0{s}_source_train_normal_000{j}_pump_speed_1.wav" for s in (0, 1) for j in range(3)]
    train += [f"pump/train/section_0{s}_target_train_normal_0000_pump_speed_2.wav" for s in (0, 1)]
    test = [f"pump/{d}_test/section_0{s}_{d}_test_{lab}_000{j}.wav" for s in (0, 1) for d in ("source", "target")
            for lab in ("normal", "anomaly") for j in range(2)]  # fmt: skip
    _write(root, train + test)
    ds = dcase.scan(root)
    assert len(ds.clips) == 8 + 16 and {c.split for c in ds.clips} == {"train", "test"}
    assert Counter((c.section, c.domain) for c in ds.select(split="test")) == {
        ("00", "source"): 4, ("00", "target"): 4, ("01", "source"): 4, ("01", "target"): 4}
    assert {c.class_key for c in ds.select(split="train")} == {
        "pump/pump_speed_1", "pump/pump_speed_2", "pump/section_01/pump_speed_1", "pump/section_01/pump_speed_2"}
    write_wave(root / "pump" / "source_test" / "section_00_target_test_normal_0009.wav")
    with pytest.raises(AsdError, match="a target clip lies in the source_test/ folder"):
        dcase.scan(root)


def test_a_2025_root_ignores_its_supplemental_folder_unless_asked(tmp_path):
    root = tmp_path / "dcase2025"
    _write(root, [f"ToyPet/train/section_00_source_train_normal_000{j}_.wav" for j in range(3)]
           + ["ToyPet/train/section_00_target_train_normal_0000_.wav"]
           + [f"ToyPet/test/section_00_{j:04d}.wav" for j in range(4)]
           + [f"ToyPet/supplemental/section_00_{k}_000{j}_.wav" for k in ("machine", "noise") for j in range(2)])
    assert {c.split for c in dcase.scan(root).clips} == {"train", "test"}
    ds = dcase.scan(root, reading=dcase.Reading(supplemental=True))
    extra = ds.select(split="supplemental")
    assert len(extra) == 4 and {c.class_key for c in extra} == {"ToyPet/supplemental-machine", "ToyPet/supplemental-noise"}
    assert {c.label for c in ds.select(split="test")} == {-1} and {c.domain for c in ds.select(split="test")} == {None}


def test_a_root_mixing_layouts_is_refused_unless_asked(tmp_path):
    root = tmp_path / "mixed"
    _write(root, ["fan/train/normal_id_00_00000000.wav", "fan/test/normal_id_00_00000001.wav",
                  "valve/train/section_00_source_train_normal_0000_v_1.wav",
                  "valve/test/section_00_source_test_normal_0000_v_1.wav"])  # fmt: skip
    with pytest.raises(AsdError, match=r"different DCASE layouts in one root \(fan \(2020\); valve \(2022-2026\)\)"):
        dcase.scan(root)
    ds = dcase.scan(root, reading=dcase.Reading(mixed_layouts=True))
    assert {(c.machine, c.section, c.domain) for c in ds.clips} == {("fan", "00", "source"), ("valve", "00", "source")}
    assert {c.machine for c in dcase.scan(root, ["valve"], dcase.Reading("2024")).clips} == {"valve"}
    with pytest.raises(AsdError, match="does not parse"):  # a year's reader applied to another year's names
        dcase.scan(root, ["fan"], dcase.Reading("2023"))
    with pytest.raises(AsdError, match="unknown layout '2019'"):
        dcase.scan(root, reading=dcase.Reading("2019"))


def test_a_section_with_test_clips_but_no_training_clips_is_refused(tmp_path):
    root = tmp_path / "r"
    _write(root, ["fan/train/section_00_source_train_normal_0000_a_1.wav",
                  "fan/test/section_00_0000.wav", "fan/test/section_01_0000.wav"])  # fmt: skip
    with pytest.raises(AsdError, match="section\\(s\\) 01 have test clips but no training clips"):
        dcase.scan(root)


def _group(names: list[str], domain: list[int], label: list[int], values: np.ndarray) -> Group:
    return Group(names, np.array(domain), np.array(label), [""] * len(names), values.astype(np.float32))


def test_each_section_is_scored_against_its_own_training_clips():
    # two sections whose training clips lie far apart: a test clip of section 01 sitting on section 00's
    # training clips is anomalous for its own section, whatever section 00 holds
    train_names = [f"section_0{s}_source_train_normal_000{j}_a_1.wav" for s in (0, 1) for j in range(3)]
    train = _group(train_names, [0] * 6, [0] * 6, np.array([[1, 0.01 * j] for j in range(3)] + [[0, 1 + 0.01 * j] for j in range(3)]))
    test = _group(["section_01_source_test_anomaly_0000_a_1.wav", "section_01_source_test_normal_0000_a_1.wav"],
                  [0, 0], [1, 0], np.array([[1, 0.0], [0, 1.0]]))  # fmt: skip
    store = Store(Path("x.h5"), "embeddings", StoreMeta(model="m"), {("fan", "train"): train, ("fan", "test"): test})
    result = detect_store(store, DetectorSettings(smote_ratio=0))
    scores = result.scores[("fan", "test")].values
    assert scores[0] == pytest.approx(1.0, abs=1e-6) and scores[1] == pytest.approx(0.0, abs=1e-6)
    assert set(result.machines) == {"fan/section_00", "fan/section_01"}


def test_2021_and_2020_ground_truth_files_and_one_domain_metrics(tmp_path):
    gt = tmp_path / "gt2021" / "ground_truth_data"
    gt.mkdir(parents=True)
    (gt / "ground_truth_pump_section_03_source_test.csv").write_text("section_03_source_test_0000.wav,1\nsection_03_source_test_0001.wav,0\n")
    (gt / "ground_truth_pump_section_03_target_test.csv").write_text("section_03_target_test_0000.wav,0\nsection_03_target_test_0001.wav,1\n")
    (t,) = truth_from_folder(tmp_path / "gt2021")
    assert (t.machine, t.section) == ("pump", "03")
    assert t.domain == {"section_03_source_test_0000.wav": 0, "section_03_source_test_0001.wav": 0,
                        "section_03_target_test_0000.wav": 1, "section_03_target_test_0001.wav": 1}  # fmt: skip
    assert t.label["section_03_target_test_0001.wav"] == 1

    (tmp_path / "gt2020").mkdir()
    (tmp_path / "gt2020" / "eval_data_list.csv").write_text(
        "fan\nid_01_00000000.wav,anomaly_id_01_00000000.wav,1\nid_01_00000001.wav,normal_id_01_00000000.wav,0\n"
        "id_01_00000002.wav,normal_id_01_00000001.wav,0\nid_03_00000000.wav,normal_id_03_00000000.wav,0\n"
        "id_03_00000001.wav,anomaly_id_03_00000000.wav,1\n")
    truths = truth_from_folder(tmp_path / "gt2020")
    assert [(t.machine, t.section, len(t.label)) for t in truths] == [("fan", "01", 3), ("fan", "03", 2)]
    assert truths[0].aliases["anomaly_id_01_00000000.wav"] == "id_01_00000000.wav"
    scores = {"fan": {"id_01_00000000.wav": 0.9, "normal_id_01_00000000.wav": 0.1, "id_01_00000002.wav": 0.95,
                      "id_03_00000000.wav": 0.2, "id_03_00000001.wav": 0.8}}  # fmt: skip
    summary = summarize(evaluate_scores(truths, scores))
    # no target domain: AUC target does not exist and the means leave it out (section 01: 0.5, section 03: 1.0)
    assert summary["hmean_auc_target"] is None and summary["machines"]["fan"]["auc_target"] is None
    assert summary["machines"]["fan"]["auc_source"] == pytest.approx(0.75)


def test_the_correspondence_files_of_a_synthetic_2024_set_cover_every_hidden_attribute_clip(tmp_path):
    from asdtool.data.hidden import read_correspondence_folder
    from asdtool.data.synth.dev import SynthSizes
    from asdtool.data.synth.layouts import synthesize_layout

    synthesize_layout(tmp_path / "d", "2024", seed=1, sizes=SynthSizes(0.2, 3, 1, 1), machines=["gearbox", "fan"])
    truth = read_correspondence_folder(tmp_path / "d-ground-truth" / "attributes")
    hidden = [c for c in dcase.scan(tmp_path / "d").clips if c.machine == "gearbox"]
    assert {(c.machine, c.file_name) for c in hidden} == set(truth)
    assert all(c.attribute_string == "noAttribute" for c in hidden)
    assert all(set(layouts.parse_attributes(a)) == {"volt", "wt"} for a in truth.values())  # gearbox: voltage, weight
