
import pytest

from asdtool.train import trainset
from asdtool.data import dcase
from asdtool.core.errors import AsdError

from tests.conftest import make_machine, write_wave


def test_parse_dev_name_with_attributes():
    n = dcase.parse_name("section_00_source_train_normal_0012_car_A1_spd_28V_mic_1.wav")
    assert (n.section, n.domain, n.split, n.label, n.index) == ("00", "source", "train", 0, 12)
    assert n.attribute_string == "car_A1_spd_28V_mic_1"
    assert n.attributes == {"car": "A1", "spd": "28V", "mic": "1"}


def test_parse_dev_name_no_attribute_and_anomaly():
    n = dcase.parse_name("section_00_target_test_anomaly_0049_noAttribute.wav")
    assert (n.domain, n.split, n.label, n.index) == ("target", "test", 1, 49)
    assert n.attributes == {}
    assert n.attribute_string == "noAttribute"


def test_parse_eval_name_has_no_labels():
    n = dcase.parse_name("section_00_0003.wav")
    assert (n.section, n.index, n.domain, n.split, n.label) == ("00", 3, None, None, dcase.UNKNOWN)


def test_hyphenated_keys_parse():
    assert dcase.parse_attributes("m-n_W") == {"m-n": "W"}
    assert dcase.parse_attributes("v1pat_00_v2pat_none") == {"v1pat": "00", "v2pat": "none"}


@pytest.mark.parametrize(
    "name",
    [
        "section_00_source_train_normal_12_noAttribute.wav",  # index not 4 digits
        "section_00_east_train_normal_0000_noAttribute.wav",  # bad domain
        "section_00_source_train_normal_0000_vel.wav",  # attributes not in pairs
        "section_00_source_train_normal_0000_noAttribute.flac",
        "clip.wav",
    ],
)
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError):
        dcase.parse_name(name)


def test_format_name_round_trip():
    name = dcase.format_name("target", "test", 1, 7, {"vel": "6", "loc": "A"})
    assert name == "section_00_target_test_anomaly_0007_vel_6_loc_A.wav"
    assert dcase.parse_name(name).attributes == {"vel": "6", "loc": "A"}
    assert dcase.format_name("source", "train", "normal", 0, {}) == "section_00_source_train_normal_0000_noAttribute.wav"
    with pytest.raises(ValueError):
        dcase.format_attributes({"a_b": "1"})


def test_scan_records_and_classes(tiny_root):
    ds = dcase.scan(tiny_root)
    assert ds.machines == ["fan", "gearbox"]
    fan_train = ds.select("fan", "train")
    assert len(fan_train) == 3 * 2 + 1
    clip = fan_train[0]
    assert clip.machine == "fan" and clip.split == "train" and clip.section == "00"
    assert clip.domain in ("source", "target") and clip.label == 0
    assert clip.attributes in ({"m-n": "W"}, {"m-n": "X"})
    test = ds.select("fan", "test")
    assert sorted({(c.domain, c.label) for c in test}) == [("source", 0), ("source", 1), ("target", 0), ("target", 1)]
    # one class per (machine type, attribute combination); noAttribute is one class
    assert trainset.training_set(ds).class_map == {"fan/m-n_W": 0, "fan/m-n_X": 1, "gearbox/noAttribute": 2}
    assert {c.domain_id for c in test} == {0, 1}


def test_scan_eval_names(tmp_path):
    root = tmp_path / "eval"
    make_machine(root, "Scanner", n_test=0, csv=False)
    write_wave(root / "Scanner" / "test" / "section_00_0000.wav")
    ds = dcase.scan(root)
    t = ds.select("Scanner", "test")
    assert len(t) == 1 and t[0].label == -1 and t[0].domain is None and t[0].domain_id == -1


def test_unknown_machine_is_named(tiny_root):
    with pytest.raises(AsdError, match="no machine folder named pump"):
        dcase.scan(tiny_root, ["pump"])


def test_missing_root(tmp_path):
    with pytest.raises(AsdError, match="data root is not a folder"):
        dcase.scan(tmp_path / "nope")


def test_root_without_machines(tmp_path):
    with pytest.raises(AsdError, match="no machine folders"):
        dcase.scan(tmp_path)


def test_empty_split_folder(tiny_root):
    for p in (tiny_root / "gearbox" / "test").iterdir():
        p.unlink()
    with pytest.raises(AsdError, match=r"gearbox/test: folder holds no \.wav files"):
        dcase.scan(tiny_root)


def test_unparsable_file_name_names_the_file(tiny_root):
    write_wave(tiny_root / "fan" / "train" / "recording_01.wav")
    with pytest.raises(AsdError) as e:
        dcase.scan(tiny_root)
    assert "recording_01.wav" in str(e.value) and "does not parse" in str(e.value)
    assert "\n" not in str(e.value)


def test_test_clip_in_train_folder(tiny_root):
    write_wave(tiny_root / "fan" / "train" / "section_00_source_test_normal_0099_m-n_W.wav")
    with pytest.raises(AsdError, match="a test clip lies in the train/ folder"):
        dcase.scan(tiny_root)


def test_attribute_csv_disagreeing_with_name(tiny_root):
    csv_path = tiny_root / "fan" / "attributes_00.csv"
    text = csv_path.read_text().replace("m-n,X", "m-n,Y", 1)
    csv_path.write_text(text)
    with pytest.raises(AsdError) as e:
        dcase.scan(tiny_root)
    assert "attributes_00.csv" in str(e.value) and "m-n" in str(e.value)


def test_attribute_csv_listing_absent_file(tiny_root):
    csv_path = tiny_root / "gearbox" / "attributes_00.csv"
    with open(csv_path, "a") as f:
        f.write("gearbox/train/section_00_source_train_normal_0999_noAttribute.wav,noAttribute,\n")
    with pytest.raises(AsdError, match="not in the machine folder"):
        dcase.scan(tiny_root)


def test_attribute_csv_missing_a_training_clip(tiny_root):
    write_wave(tiny_root / "gearbox" / "train" / "section_00_source_train_normal_0050_noAttribute.wav")
    with pytest.raises(AsdError, match="does not list 1 training clip"):
        dcase.scan(tiny_root)


def test_attribute_csv_without_header(tiny_root):
    (tiny_root / "gearbox" / "attributes_00.csv").write_text("gearbox/train/x.wav,noAttribute\n")
    with pytest.raises(AsdError, match="header"):
        dcase.scan(tiny_root)


def test_attribute_csv_round_trip(tmp_path):
    path = tmp_path / "attributes_00.csv"
    dcase.write_attribute_csv(path, [("fan/train/a.wav", {"m-n": "W", "x": "1"}), ("fan/train/b.wav", {})])
    assert path.read_text().splitlines()[0] == "file_name,d1p,d1v,d2p,d2v"
    assert dcase.read_attribute_csv(path) == {"fan/train/a.wav": {"m-n": "W", "x": "1"}, "fan/train/b.wav": {}}


@pytest.mark.parametrize(
    "layout, why",
    [
        (("train", "test"), "train/ and test/ are empty"),
        ((), "no train/ or test/ folder"),
        (("train",), "train/ is empty, test/ is missing"),
        (("train/notes.txt", "test/clip.flac"), "train/ and test/ hold no .wav files"),
    ],
)
def test_machine_folder_without_clips_is_refused(tiny_root, layout, why):
    folder = tiny_root / "pump"
    folder.mkdir()
    for entry in layout:
        if "." in entry:
            (folder / entry).parent.mkdir(parents=True, exist_ok=True)
            (folder / entry).write_text("x")
        else:
            (folder / entry).mkdir()
    with pytest.raises(AsdError) as e:
        dcase.scan(tiny_root)
    assert str(e.value) == f"{folder}: machine folder holds no clips ({why})"
    with pytest.raises(AsdError, match="machine folder holds no clips"):
        dcase.scan_machine(tiny_root, "pump")
    # naming only the other machines still scans them
    assert dcase.scan(tiny_root, ["fan", "gearbox"]).machines == ["fan", "gearbox"]


def test_empty_machine_folder_alone(tmp_path):
    (tmp_path / "fan" / "train").mkdir(parents=True)
    (tmp_path / "fan" / "test").mkdir()
    with pytest.raises(AsdError, match=r"fan: machine folder holds no clips \(train/ and test/ are empty\)$"):
        dcase.scan(tmp_path)


def test_hidden_folders_and_files_beside_machines_are_ignored(tiny_root):
    before = dcase.scan(tiny_root).clips
    (tiny_root / ".fan.abc.tmp").mkdir()
    (tiny_root / "__MACOSX").mkdir()
    (tiny_root / "hidden_attributes.csv").write_text("machine,file_name,hidden_attributes\n")
    after = dcase.scan(tiny_root)
    assert after.machines == ["fan", "gearbox"] and after.clips == before
    assert [c.path for c in after.clips] == [c.path for c in before]


def test_root_with_only_hidden_folders_and_files(tmp_path):
    (tmp_path / ".cache").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(AsdError, match=r"no machine folders \(<machine>/train or <machine>/test\) found"):
        dcase.scan(tmp_path)


def test_scan_order_is_case_insensitive_by_machine_then_split_then_name(tmp_path):
    make_machine(tmp_path, "valve")
    make_machine(tmp_path, "ToyCar")
    make_machine(tmp_path, "bearing")
    ds = dcase.scan(tmp_path)
    assert ds.machines == ["bearing", "ToyCar", "valve"]
    keys = [(c.machine.lower(), dcase.SPLITS.index(c.split), c.file_name) for c in ds.clips]
    assert keys == sorted(keys)


def test_attribute_csv_missing_training_clips_are_named(tiny_root):
    for i in (50, 51):
        write_wave(tiny_root / "gearbox" / "train" / f"section_00_source_train_normal_00{i}_noAttribute.wav")
    with pytest.raises(AsdError) as e:
        dcase.scan(tiny_root)
    assert str(e.value).endswith(
        "does not list 2 training clip(s): gearbox/train/section_00_source_train_normal_0050_noAttribute.wav, "
        "gearbox/train/section_00_source_train_normal_0051_noAttribute.wav"
    )
