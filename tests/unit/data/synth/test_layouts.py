"""asdtool.data.synth.layouts: every DCASE year's dev and eval layout, read back by the layout readers and the ground-truth reader."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from asdtool.cli import app, main
from asdtool.data import layouts
from asdtool.data.synth import dev as synth, dsp, layouts as synth_layouts
from asdtool.data.dcase import NO_ATTRIBUTE, Reading, read_attribute_csv, scan
from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.data.synth.layouts import (
    YEAR_LAYOUTS,
    default_ground_truth_folder,
    plan_layout,
    section_speed,
    synthesize_layout,
)
from asdtool.core.errors import AsdError
from asdtool.evaluate.metrics import truth_from_folder

TINY = SynthSizes(seconds=0.5, source_train=3, target_train=1, test_per_domain=2)
MACHINES = ("fan", "gearbox")  # attributes shown, attributes hidden (2024 on)
SUPPLEMENTAL = 2
SECTIONS = {
    "2020": (("00", "02"), ("01", "03")),
    "2021": (("00", "01", "02"), ("03", "04", "05")),
    "2022": (("00", "01", "02"), ("03", "04", "05")),
    **{y: (("00",), ("00",)) for y in ("2023", "2024", "2025", "2026")},
}
SETS = [(year, eval_set) for year in layouts.YEARS for eval_set in (False, True)]
SET_IDS = [f"{year}-{'eval' if eval_set else 'dev'}" for year, eval_set in SETS]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def write_set(out: Path, year: str, eval_set: bool, seed: int = 0, **kwargs):
    supplemental = SUPPLEMENTAL if year == "2025" else None
    return synthesize_layout(out, year, eval_set, seed=seed, sizes=TINY, machines=MACHINES, supplemental=supplemental,
                             **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Return a function (year, eval_set) -> (data root, ground-truth folder, plans), each set written once."""
    root = tmp_path_factory.mktemp("layouts")
    cache: dict[tuple[str, bool], tuple[Path, Path, dict]] = {}

    def get(year: str, eval_set: bool):
        if (year, eval_set) not in cache:
            out = root / f"{year}-{'eval' if eval_set else 'dev'}"
            summary = write_set(out, year, eval_set)
            assert summary.ground_truth in (None, default_ground_truth_folder(out))
            plans = {m: plan_layout(m, year, eval_set, TINY, 0, SUPPLEMENTAL) for m in MACHINES}
            cache[year, eval_set] = (out, default_ground_truth_folder(out), plans)
        return cache[year, eval_set]

    return get


def expected_groups(year: str, eval_set: bool) -> Counter:
    """Return the clip count of every (machine, section, split, domain, label) a set must hold (supplemental aside)."""
    want: Counter = Counter()
    for machine in MACHINES:
        for section in SECTIONS[year][eval_set]:
            domains = ("source",) if year == "2020" else ("source", "target")
            for domain in domains:
                want[machine, section, "train", domain, 0] = TINY.source_train if domain == "source" else TINY.target_train
                if not eval_set:
                    for label in (0, 1):
                        want[machine, section, "test", domain, label] = TINY.test_per_domain
                elif year in ("2020", "2021"):  # the name (2020: no domains) or the folder (2021) still says the domain
                    want[machine, section, "test", domain, -1] = 2 * TINY.test_per_domain
            if eval_set and year not in ("2020", "2021"):
                want[machine, section, "test", None, -1] = 4 * TINY.test_per_domain
    return want


# ------------------------------------------------------------------------------------------------ read back


@pytest.mark.parametrize("year,eval_set", SETS, ids=SET_IDS)
def test_scan_reads_every_year(written, year, eval_set):
    out, _, _ = written(year, eval_set)
    data = scan(out)  # the layout is detected from the clips
    assert sorted(data.machines) == sorted(MACHINES)
    assert Counter((c.machine, c.section, c.split, c.domain, c.label) for c in data.clips) == expected_groups(year, eval_set)
    assert {c.section for c in data.clips} == set(SECTIONS[year][eval_set])
    assert {c.split for c in data.clips} == {"train", "test"}
    if year == "2020":
        assert {c.domain for c in data.clips} == {"source"}
    assert all(c.label == -1 for c in data.clips if eval_set and c.split == "test")
    assert layouts.detect_layout(out, list(MACHINES)) == dict.fromkeys(MACHINES, layouts.YEAR_GRAMMAR[year])


@pytest.mark.parametrize("year,eval_set", SETS, ids=SET_IDS)
def test_names_carry_the_years_attributes_and_numbering(written, year, eval_set):
    out, _, _ = written(year, eval_set)
    data = scan(out)
    labelled = [c for c in data.clips if c.label != -1]
    for machine in MACHINES:
        mine = [c for c in labelled if c.machine == machine]
        strings = {c.attribute_string for c in mine if c.split == "train"}
        if year == "2020":
            assert strings == {""}
        elif year == "2021":  # free text: the values alone, no key/value dict; test names carry none
            assert strings == ({"W", "X", "Y", "Z"} if machine == "fan" else {"10_150", "15_150", "15_250", "20_250"})
            assert all(c.attributes == {} for c in data.clips)
            assert {c.attribute_string for c in mine if c.split == "test"} <= {""}
        elif machine == "gearbox" and year in ("2024", "2025", "2026"):
            assert {c.attribute_string for c in mine} == {NO_ATTRIBUTE}
        else:
            keys = {"fan": {"m-n"}, "gearbox": {"volt", "wt"}}[machine] | ({"noise"} if year == "2026" else set())
            assert all(set(c.attributes) == keys for c in mine)
            if year == "2026":
                assert {c.attributes["noise"] for c in mine} == {"1", "2"}
    # numbering: every group counts from the year's first index (2024: 1) without gaps
    reader = layouts.reader_for(year)
    first = 1 if year == "2024" else 0
    groups: dict[tuple, list[int]] = {}
    for c in data.clips:
        name = reader.parse(c.file_name, c.split)
        groups.setdefault((c.machine, c.section, c.split, c.domain, c.label), []).append(name.index)
    for key, indices in groups.items():
        assert sorted(indices) == list(range(first, first + len(indices))), key


@pytest.mark.parametrize("year", ["2022", "2023", "2024", "2025", "2026"])
def test_attribute_files_list_train_and_dev_test_clips(written, year):
    for eval_set in (False, True):
        out, _, _ = written(year, eval_set)
        for machine in MACHINES:
            for section in SECTIONS[year][eval_set]:
                listed = read_attribute_csv(out / machine / f"attributes_{section}.csv")
                splits = ("train",) if eval_set else ("train", "test")  # eval files cover the training clips only
                on_disk = {f"{machine}/{s}/{p.name}" for s in splits for p in (out / machine / s).glob(f"section_{section}_*.wav")}
                assert set(listed) == on_disk


def test_2020_and_2021_have_no_attribute_files(written):
    for year in ("2020", "2021"):
        out, _, _ = written(year, False)
        assert not list(out.rglob("attributes_*.csv"))


def test_2025_supplemental_clips_only_when_asked(written):
    for eval_set in (False, True):
        out, _, _ = written("2025", eval_set)
        assert all(c.split != "supplemental" for c in scan(out).clips)
        extra = [c for c in scan(out, reading=Reading(supplemental=True)).clips if c.split == "supplemental"]
        assert Counter((c.machine, c.attribute_string) for c in extra) == {
            (m, f"supplemental-{kind}"): SUPPLEMENTAL for m in MACHINES for kind in ("machine", "noise")}  # fmt: skip
        names = sorted(p.name for p in (out / "fan" / "supplemental").iterdir())
        assert names == ["section_00_machine_0001_.wav", "section_00_machine_0002_.wav",
                         "section_00_noise_0001_.wav", "section_00_noise_0002_.wav"]  # fmt: skip
        assert all(layouts.parse_sections_name(n, "supplemental").section == "00" for n in names)
    for year in ("2024", "2026"):
        assert not list(written(year, True)[0].rglob("supplemental"))


def test_supplemental_clips_are_the_machine_alone_and_the_hall_alone(written):
    out, _, plans = written("2025", False)
    items = {c.name: c for c in plans["fan"] if c.kind != "clip"}
    machine_only, _ = sf.read(out / "fan" / "supplemental" / "section_00_machine_0001_.wav", dtype="int16")
    noise_only, _ = sf.read(out / "fan" / "supplemental" / "section_00_noise_0001_.wav", dtype="int16")
    clip = items["section_00_machine_0001_.wav"].clip
    machine, _ = synth.render_parts(clip, 0, TINY.seconds, hall=False, key=[2025, 0, 0, 1])
    assert np.array_equal(machine_only, dsp.to_pcm16(machine))
    hall = synth.hall_noise(synth.clip_rng(0, items["section_00_noise_0001_.wav"].clip, [2025, 0, 0, 2]), 8000, "source")
    assert np.array_equal(noise_only, dsp.to_pcm16(hall))
    # the fan's blade-pass tone (5 blades x 22 Hz) stands out of the machine alone, not of the hall alone
    def tone(x):
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        f = np.fft.rfftfreq(len(x), 1 / 16000)
        return spectrum[(f > 95) & (f < 125)].max() / np.median(spectrum[(f > 50) & (f < 2000)])
    assert tone(machine_only.astype(float)) > 5 * tone(noise_only.astype(float))


@pytest.mark.parametrize("eval_set", [False, True], ids=["dev", "eval"])
def test_2026_is_stereo_near_left_far_right(written, eval_set):
    out, _, _ = written("2026", eval_set)
    wavs = sorted(out.rglob("*.wav"))
    assert wavs and all(sf.info(p).channels == 2 and sf.info(p).samplerate == 16000 for p in wavs)
    for path in wavs[:6]:
        wave, _ = sf.read(path)
        left, right = wave[:, 0], wave[:, 1]
        assert not np.array_equal(left, right)
        assert np.corrcoef(left, right)[0, 1] < 0.95  # not a gain copy: filtered, reverberant, other noise
    for year in ("2020", "2021", "2025"):
        assert all(sf.info(p).channels == 1 for p in list(written(year, eval_set)[0].rglob("*.wav"))[:10])


def test_2026_far_microphone_hears_the_machine_quieter_and_duller():
    item = next(c for c in plan_layout("fan", "2026", False, TINY) if c.clip.split == "train")
    machine, hall = synth.render_parts(item.clip, 0, TINY.seconds, key=[2026, 0, 0, 0])
    rng = synth.clip_rng(0, item.clip, [2026, 0, 0, 3])
    far = synth_layouts._far_microphone(rng, machine)
    assert 6.0 <= 20 * np.log10(machine.std() / far.std()) <= 11.0
    def high_share(x):
        power = np.abs(np.fft.rfft(x)) ** 2
        return power[np.fft.rfftfreq(len(x), 1 / 16000) > 4000].sum() / power.sum()
    assert high_share(far) < 0.5 * high_share(machine)
    stereo = synth_layouts.render_layout_clip(item, "2026", False, 0, TINY.seconds)
    assert stereo.shape == (8000, 2) and stereo.dtype == np.int16


# ------------------------------------------------------------------------------------------------ sections


def test_sections_run_the_machines_at_shifted_speeds():
    """A section speeds every machine up by 5 % per section number: the ToyCar motor whine (8 Hz/V) moves with it."""
    assert [section_speed(s) for s in ("00", "01", "03", "05")] == pytest.approx([1.0, 1.05, 1.15, 1.25])
    clip = synth.PlannedClip("ToyCar", "train", "source", 0, 0, ("A1", "28V", "1"), None)

    def peak(speed):
        x, _ = synth.render_parts(clip, 0, 2.0, hall=False, key=[2022, 0, 2, 0], speed=speed)
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        return np.fft.rfftfreq(len(x), 1 / 16000)[np.argmax(spectrum)]

    assert peak(section_speed("02")) / peak(1.0) == pytest.approx(1.10, rel=0.01)


def test_each_section_and_set_draws_its_own_clips():
    """Same clip identity, other section, year or dataset: another recording (and never the embedded default's)."""
    clip = synth.plan_clips("fan", TINY)[0]
    default = synth.render_clip(clip, 0, TINY.seconds)
    keys = ([2022, 0, 0, 0], [2022, 0, 1, 0], [2023, 0, 0, 0], [2023, 1, 0, 0])
    waves = [dsp.to_pcm16(sum(synth.render_parts(clip, 0, TINY.seconds, key=k))) for k in keys]
    for i, a in enumerate(waves):
        assert not np.array_equal(a, default)
        assert all(not np.array_equal(a, b) for b in waves[i + 1:])


def test_eval_test_numbering_hides_label_and_domain():
    plan = [c for c in plan_layout("fan", "2023", True, SynthSizes(0.5, 1, 1, 20)) if c.eval_test]
    assert [c.name for c in plan] == [f"section_00_{i:04d}.wav" for i in range(80)]
    first_half = [c.clip.domain for c in plan[:40]]
    assert 10 <= first_half.count("target") <= 30  # shuffled, not grouped by domain ...
    assert len({tuple(c.clip.label for c in plan[i:i + 4]) for i in range(0, 80, 4)}) > 3  # ... nor by label


# ------------------------------------------------------------------------------------------------ ground truth


@pytest.mark.parametrize("year", ["2022", "2023", "2024", "2025", "2026"])
def test_eval_ground_truth_reads_back_as_planned(written, year):
    out, gt, plans = written(year, True)
    truths = truth_from_folder(gt)
    assert sorted((t.machine, t.section) for t in truths) == sorted((m, s) for m in MACHINES for s in SECTIONS[year][1])
    for t in truths:
        tests = [c for c in plans[t.machine] if c.eval_test and c.section == t.section]
        assert t.label == {c.name: c.clip.label for c in tests}
        assert t.domain == {c.name: ("source", "target").index(c.clip.domain) for c in tests}
        on_disk = {p.name for p in (out / t.machine / "test").glob(f"section_{t.section}_*.wav")}
        assert set(t.label) == on_disk
        if year == "2022":  # the eval set's attribute file, test clips included
            listed = read_attribute_csv(gt / "ground_truth_attributes" / t.machine / f"attributes_{t.section}.csv")
            assert all(listed[f"{t.machine}/test/{c.name}"] == dict(c.attributes) for c in tests)
            continue
        for c in tests:  # renamed dev-style names (and, hidden, the true-attribute names) point back to the eval name
            assert t.aliases[c.renamed] == c.name
            renamed = layouts.parse_sections_name(c.renamed)
            assert (renamed.label, renamed.domain, renamed.split) == (c.clip.label, c.clip.domain, "test")
            if t.machine == "gearbox" and year >= "2024":
                assert t.aliases[c.true_name] == c.name
                assert layouts.parse_sections_name(c.true_name).attributes == dict(c.attributes)
        if year == "2025":  # renamed names number per domain x label from 0001, apart from the eval index
            indices = Counter((c.clip.domain, c.clip.label) for c in tests)
            for (domain, label), n in indices.items():
                got = sorted(layouts.parse_sections_name(c.renamed).index for c in tests
                             if (c.clip.domain, c.clip.label) == (domain, label))  # fmt: skip
                assert got == list(range(1, n + 1))
        else:
            assert all(layouts.parse_sections_name(c.renamed).index == layouts.parse_sections_name(c.name).index for c in tests)


def test_2021_ground_truth_per_section_and_domain(written):
    out, gt, plans = written("2021", True)
    files = sorted(p.name for p in (gt / "ground_truth_data").iterdir())
    assert files == sorted(f"ground_truth_{m}_section_{s}_{d}_test.csv" for m in MACHINES for s in ("03", "04", "05")
                           for d in ("source", "target"))  # fmt: skip
    assert sorted(p.name for p in gt.iterdir()) == ["ground_truth_data"]
    for machine in MACHINES:
        for section in ("03", "04", "05"):
            for domain in ("source", "target"):
                with open(gt / "ground_truth_data" / f"ground_truth_{machine}_section_{section}_{domain}_test.csv") as f:
                    rows = {name: int(label) for name, label in csv.reader(f)}
                want = {c.name: c.clip.label for c in plans[machine]
                        if c.eval_test and c.section == section and c.clip.domain == domain}  # fmt: skip
                assert rows == want
                assert set(rows) == {p.name for p in (out / machine / f"{domain}_test").glob(f"section_{section}_*.wav")}


def test_2020_eval_data_list(written):
    out, gt, plans = written("2020", True)
    assert sorted(p.name for p in gt.iterdir()) == ["eval_data_list.csv"]
    with open(gt / "eval_data_list.csv") as f:
        rows = list(csv.reader(f))
    machine, listed = None, {}
    for row in rows:
        if len(row) == 1:  # a machine-type line
            machine = row[0]
            continue
        name, renamed, label = row
        listed[machine, name] = int(label)
        parsed = layouts.parse_ids_name(renamed, "test")
        assert (parsed.label, parsed.section) == (int(label), layouts.parse_ids_name(name, "test").section)
    assert [r[0] for r in rows if len(r) == 1] == list(MACHINES)
    assert listed == {(m, c.name): c.clip.label for m in MACHINES for c in plans[m] if c.eval_test}
    assert {n for m, n in listed if m == "fan"} == {p.name for p in (out / "fan" / "test").iterdir()}


@pytest.mark.parametrize("year,eval_set", [(y, e) for y in ("2024", "2025", "2026") for e in (False, True)],
                         ids=[f"{y}-{e}" for y in ("2024", "2025", "2026") for e in ("dev", "eval")])  # fmt: skip
def test_correspondence_files_list_every_hidden_attribute_clip(written, year, eval_set):
    out, gt, plans = written(year, eval_set)
    where = gt / "attributes"
    assert sorted(p.name for p in where.iterdir()) == ["gearbox"]  # the one hidden-attribute type here
    if not eval_set:
        assert sorted(p.name for p in gt.iterdir()) == ["attributes"]  # a dev set needs no other truth
    for split in ("train", "test"):
        with open(where / "gearbox" / f"attributes_00_{split}_correspondence.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and list(rows[0]) == ["source_file_name", "target_file_name"]
        distributed = {r["target_file_name"] for r in rows}
        if split == "train" or not eval_set:
            assert distributed == {p.name for p in (out / "gearbox" / split).iterdir()}
        else:  # eval test clips: the renamed names of the ground truth
            assert distributed == {c.renamed for c in plans["gearbox"] if c.eval_test}
        for r in rows:
            true, shown = layouts.parse_sections_name(r["source_file_name"]), layouts.parse_sections_name(r["target_file_name"])
            assert set(true.attributes) == {"volt", "wt"} | ({"noise"} if year == "2026" else set())
            assert shown.attribute_string == YEAR_LAYOUTS[year].hidden
            assert (true.domain, true.label, true.index) == (shown.domain, shown.label, shown.index)


def test_dev_sets_without_hidden_attributes_write_no_ground_truth(written):
    for year in ("2020", "2021", "2022", "2023"):
        out, gt, _ = written(year, False)
        assert not gt.exists()


# ------------------------------------------------------------------------------------------------ determinism, writing


def test_same_seed_is_byte_identical(tmp_path, written):
    out, gt, _ = written("2026", True)
    again = tmp_path / "again"
    write_set(again, "2026", True)
    assert digests(again) == digests(out)
    assert digests(default_ground_truth_folder(again)) == digests(gt)
    other = tmp_path / "other"
    write_set(other, "2026", True, seed=1)
    theirs = digests(other)
    assert all(theirs[k] != v for k, v in digests(out).items() if k.endswith(".wav"))


def test_default_without_layout_is_the_embedded_set_unchanged(tmp_path):
    """`asdtool synth` without --layout writes exactly what `synthesize` writes (the embedded 2024 dev set)."""
    args = ["synth", "--out", str(tmp_path / "cli"), "--seed", "0", "--seconds", "0.5", "--source-train", "3",
            "--target-train", "1", "--test-per-domain", "2", "--machine", "fan", "--machine", "gearbox"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    synthesize(tmp_path / "lib", seed=0, sizes=TINY, machines=list(MACHINES))
    assert digests(tmp_path / "cli") == digests(tmp_path / "lib")
    assert "hidden_attributes.csv" in digests(tmp_path / "lib")
    assert not (tmp_path / "cli-ground-truth").exists()
    clip = synth.plan_clips("gearbox", TINY)[5]  # the mono renderer is the parts, mixed and limited
    machine, hall = synth.render_parts(clip, 0, 0.5)
    assert np.array_equal(synth.render_clip(clip, 0, 0.5), dsp.to_pcm16(machine + hall))


def test_command_writes_a_layout_and_says_where_the_truth_went(tmp_path):
    out, gt = tmp_path / "eval23", tmp_path / "truth"
    args = ["synth", "--out", str(out), "--layout", "2023", "--eval", "--ground-truth-out", str(gt), "--seconds", "0.5",
            "--source-train", "2", "--target-train", "1", "--test-per-domain", "1", "--machine", "valve"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "DCASE 2023 eval layout" in text and "section" in text and "valve" in text
    assert "7 clips written" in text and f"ground truth written to {gt}" in text
    assert [t.machine for t in truth_from_folder(gt)] == ["valve"]
    assert not (tmp_path / "eval23-ground-truth").exists()
    again = CliRunner().invoke(app, args)  # refuses to overwrite, one line
    assert again.exit_code == 1 and "--overwrite" in again.output and len(again.output.strip().splitlines()) == 1
    assert CliRunner().invoke(app, args + ["--overwrite", "--seed", "4"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval23", "truth"]  # no staging folder left


@pytest.mark.parametrize("extra,message", [
    (["--eval"], "--eval needs --layout"),
    (["--ground-truth-out", "gt"], "--ground-truth-out needs --layout"),
    (["--layout", "2024", "--supplemental", "3"], "--supplemental is for --layout 2025 only"),
    (["--layout", "2019"], "2019"),
])  # fmt: skip
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, message):
    code = main(["synth", "--out", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err
    assert code == 1 and message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_library_refusals_leave_nothing(tmp_path, monkeypatch):
    with pytest.raises(AsdError, match="unknown layout '2019'"):
        synthesize_layout(tmp_path / "x", "2019")
    with pytest.raises(AsdError, match="2025 layout feature"):
        synthesize_layout(tmp_path / "x", "2024", supplemental=3)
    with pytest.raises(AsdError, match="outside the data root"):
        synthesize_layout(tmp_path / "x", "2024", ground_truth=tmp_path / "x" / "gt")
    (tmp_path / "x-ground-truth").mkdir()
    with pytest.raises(AsdError, match="ground-truth folder already exists"):
        write_set(tmp_path / "x", "2023", True)
    (tmp_path / "x-ground-truth").rmdir()
    calls = []

    def broken(*args):
        calls.append(args)
        if len(calls) > 10:
            raise RuntimeError("boom")
        return np.zeros(8000, np.int16)

    monkeypatch.setattr(synth_layouts, "render_layout_clip", broken)
    with pytest.raises(RuntimeError):
        write_set(tmp_path / "x", "2024", True)
    assert list(tmp_path.iterdir()) == []


def test_overwriting_a_default_root_drops_the_replaced_machines_hidden_rows(tmp_path):
    out = tmp_path / "root"
    synthesize(out, seed=0, sizes=TINY, machines=["gearbox"])
    write_set(out, "2024", False, overwrite=True)
    assert not (out / "hidden_attributes.csv").exists()  # its only machine was replaced
    assert scan(out).machines == sorted(MACHINES, key=str.lower)
