"""Synthetic DCASE Task 2 data in any year's file layout (2020-2026, dev or eval), with the organisers' ground truth.

`synthesize_layout` writes what one year's dev or eval zips extract to, so that every reader of
`asdtool.data.layouts` can be tested end to end, and, for eval sets (and the hidden attributes of
2024-2026), the ground-truth files in the organisers' evaluator layout beside it:

| year | sections dev / eval   | names (train / dev test / eval test)                                                         | extra |
|------|-----------------------|----------------------------------------------------------------------------------------------|-------|
| 2020 | IDs 00, 02 / 01, 03   | `normal_id_00_00000000.wav` / `anomaly_id_00_00000000.wav` / `id_01_00000000.wav`            | no domains; `eval_data_list.csv` |
| 2021 | 00-02 / 03-05         | `..._train_normal_0000_6_A.wav` / `source_test/section_00_source_test_anomaly_0000.wav` / `source_test/section_03_source_test_0000.wav` | per-domain ground truth |
| 2022 | 00-02 / 03-05         | `section_00_source_train_normal_0000_vel_6_loc_A.wav` / `..._test_anomaly_0000_<attrs>.wav` / `section_03_0000.wav` | `attributes_NN.csv` |
| 2023 | 00                    | as 2022                                                                                      | |
| 2024 | 00                    | as 2022, numbered from 0001; hidden attributes `noAttribute`                                 | 3-column attribute truth, correspondence files |
| 2025 | 00                    | as 2022; hidden attributes `noAttribute`                                                     | `supplemental/section_00_machine_0001_.wav`, `..._noise_0001_.wav` |
| 2026 | 00                    | as 2024 from 0000, one more attribute `noise_1`/`noise_2`                                    | stereo: near microphone left, far right |

What is imitated is the layout, not the machine types: every year uses the seven machine types and
signal models of the embedded default (`asdtool.data.synth.dev`: `MACHINES`, `plan_clips`, the clip
renderer), dev and eval alike, and the sizes (`SynthSizes`) apply per section. Simplifications:
2020's machine IDs are 00 and 02 (dev) and 01 and 03 (eval) for every machine type, not the official
per-type lists; its clips are all source-domain clips (2020 has no domains). Hidden attributes
(gearbox, slider, ToyTrain) are hidden from 2024 on, shown in 2021-2023 as every attribute was then.

Sections sound different: section NN runs every machine (1 + 0.05 NN) times faster (rendered longer
and resampled, so every tone, resonance and event rate scales; the halls stay as they are). Each
clip's generator is seeded by the default's clip identity plus (year, dev/eval, section, stream), so
no clip repeats another year's, the other dataset's, another section's or the embedded default's.
Eval test clips are numbered in a shuffled order fixed by the seed, so a name gives away neither
label nor domain; the ground truth maps each eval name to its dev-style renamed name.

The ground truth (`<out>-ground-truth/` unless told otherwise): 2020 `eval_data_list.csv` (a
machine-type line, then `eval name,renamed name,label` rows); 2021
`ground_truth_data/ground_truth_<machine>_section_NN_<source|target>_test.csv`; 2022
`ground_truth_{data,domain}/ground_truth_<machine>_section_NN_test.csv` and
`ground_truth_attributes/<machine>/attributes_NN.csv` (the eval attribute file, test clips included);
2023-2026 `ground_truth_{data,domain,attributes}/ground_truth_<machine>_section_NN_test.csv`, which
`asdtool.evaluate.metrics.truth_from_folder` reads; and, for the hidden attributes of 2024-2026, dev sets too,
`attributes/<machine>/attributes_NN_{train,test}_correspondence.csv`.

2026's far microphone hears the machine 8 dB quieter, low-passed (first order, 3 kHz) and with a
short room reverberation, plus the same hall noise and the clip's extra noise source (its `noise`
condition: 1 a steady ventilation unit, 2 a louder intermittent compressor) at full level; the near
microphone (left) hears machine and hall as the mono years mix them, plus that source 12 dB lower.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

from asdtool.core.atomic import replace_dir, staging_dir
from asdtool.data.audio import SAMPLE_RATE
from asdtool.data.dcase import DEV_MACHINES, DOMAINS, format_attributes, format_name, write_attribute_csv
from asdtool.data.hidden import CORRESPONDENCE_HEADER, HIDDEN_ATTRIBUTES_FILE, read_hidden_rows, write_hidden_rows
from asdtool.data.layouts import NO_ATTRIBUTE, SUPPLEMENTAL, YEAR_GRAMMAR, YEARS
from asdtool.data.synth import dsp
from asdtool.data.synth.dev import (
    MACHINES,
    PlannedClip,
    SynthSizes,
    check_request,
    clip_rng,
    hall_noise,
    move_into_place,
    plan_clips,
    render_parts,
)
from asdtool.core.errors import AsdError

SECTION_SPEED_STEP = 0.05  # section NN runs the machine (1 + 0.05 NN) times faster
SUPPLEMENTAL_CLIPS = 10  # 2025: machine-only and noise-only clips, each, per machine type and section
NOISE_CONDITIONS = ("1", "2")  # 2026's extra noise source: 1 steady ventilation, 2 intermittent compressor
FAR_ATTENUATION_DB = 8.0  # the far microphone's distance loss on the machine
FAR_LOWPASS_HZ = 3000.0  # ... and its air and distance high-frequency loss (first order)
NEAR_SOURCE_DB = -12.0  # the extra noise source at the near microphone, relative to the far one

_STREAMS = {"clip": 0, "machine": 1, "noise": 2, "far": 3, "order": 4}  # the last element of a clip's key


@dataclass(frozen=True)
class YearLayout:
    """What one DCASE year's folders and names look like (see the module table)."""

    year: str
    dev_sections: tuple[str, ...]
    eval_sections: tuple[str, ...]
    first_index: int = 0  # the first clip number of every group (2024: 1)
    domains: bool = True  # False: 2020, source-domain clips only
    hidden: str | None = None  # the attribute part of hidden-attribute types' names; None: shown
    attribute_files: bool = True  # attributes_NN.csv per section
    attribute_truth_files: bool = False  # eval attribute truth as attributes_NN.csv per machine (2022), else per-section rows
    renamed_by_group: bool = False  # renamed eval names number per domain x label from 0001 (2025), else as the eval name
    supplemental: bool = False  # <machine>/supplemental/ (2025)
    stereo: bool = False  # near microphone left, far right, a noise condition in the names (2026)

    @property
    def grammar(self) -> str:
        """Return the year's file-name grammar (`asdtool.data.layouts.YEAR_GRAMMAR`)."""
        return YEAR_GRAMMAR[self.year]

    def sections(self, eval_set: bool) -> tuple[str, ...]:
        """Return the section numbers of the eval set, or of the dev set."""
        return self.eval_sections if eval_set else self.dev_sections


YEAR_LAYOUTS: dict[str, YearLayout] = {
    "2020": YearLayout("2020", ("00", "02"), ("01", "03"), domains=False, attribute_files=False),
    "2021": YearLayout("2021", ("00", "01", "02"), ("03", "04", "05"), attribute_files=False),
    "2022": YearLayout("2022", ("00", "01", "02"), ("03", "04", "05"), attribute_truth_files=True),
    "2023": YearLayout("2023", ("00",), ("00",)),
    "2024": YearLayout("2024", ("00",), ("00",), first_index=1, hidden=NO_ATTRIBUTE),
    # 2025: hidden names say noAttribute, as the organisers' correspondence files do (the README's generic
    # `..._0000_.wav` pattern is read by asdtool.data.layouts but was found on no real clip)
    "2025": YearLayout("2025", ("00",), ("00",), hidden=NO_ATTRIBUTE, renamed_by_group=True, supplemental=True),
    "2026": YearLayout("2026", ("00",), ("00",), hidden=NO_ATTRIBUTE, stereo=True),
}
assert tuple(YEAR_LAYOUTS) == YEARS


@dataclass(frozen=True)
class LayoutClip:
    """One file of a layout set: the signal it renders, where it goes and the names the ground truth needs."""

    clip: PlannedClip  # the signal: machine, domain, label, fault, attribute values, index within its group
    section: str
    folder: str  # sub-folder of the machine folder: train, test, source_test, target_test or supplemental
    name: str  # the file name as distributed
    attributes: tuple[tuple[str, str], ...]  # the true attributes (2026: with the noise condition)
    renamed: str = ""  # eval test clips: the labelled dev-style name the ground truth maps the eval name to
    true_name: str = ""  # hidden attributes: the distributed name (renamed name for eval test) with the true attributes
    kind: str = "clip"  # "clip", or 2025's supplemental "machine" / "noise"

    @property
    def machine(self) -> str:
        """Return the clip's machine type."""
        return self.clip.machine

    @property
    def rel(self) -> str:
        """Return the file's path under the data root: <machine>/<folder>/<name>."""
        return f"{self.machine}/{self.folder}/{self.name}"

    @property
    def eval_test(self) -> bool:
        """Return whether this is an unlabelled eval test clip (one with a renamed name)."""
        return bool(self.renamed)


@dataclass(frozen=True)
class LayoutSummary:
    """What `synthesize_layout` wrote: clip counts per machine type and section, and where the ground truth went."""

    out: Path
    ground_truth: Path | None  # None: the set needs none (a dev set without hidden attributes)
    year: str
    eval_set: bool
    seed: int
    sizes: SynthSizes
    counts: dict[str, dict[str, dict[str, int]]]  # machine -> section -> train_source, ..., supplemental

    @property
    def total(self) -> int:
        """Return the number of files written, supplemental clips included."""
        return sum(sum(c.values()) for sections in self.counts.values() for c in sections.values())


def section_speed(section: str) -> float:
    """Return how many times faster than in section 00 the machines of a section run."""
    return 1.0 + SECTION_SPEED_STEP * int(section)


def default_ground_truth_folder(out: Path) -> Path:
    """Return where the ground truth of a set written to `out` goes by default: `<out>-ground-truth` beside it."""
    out = Path(out)
    return out.parent / f"{out.name}-ground-truth"


# --------------------------------------------------------------------------------------------------
# Names


def _attribute_part(layout: YearLayout, attrs: Sequence[tuple[str, str]], shown: bool) -> str:
    if not shown:
        return str(layout.hidden)
    if layout.grammar == "domain-folders":  # 2021: free text, the values alone
        return "_".join(v for _, v in attrs)
    return format_attributes(attrs)


def _labelled_name(layout: YearLayout, clip: PlannedClip, section: str, index: int, attr_part: str) -> str:
    """Return a dev-style name (train or labelled test) of the layout's grammar."""
    label = ("normal", "anomaly")[clip.label]
    if layout.grammar == "ids":
        return f"{label}_id_{section}_{index:08d}.wav"
    if layout.grammar == "domain-folders":
        if clip.split == "train":
            return f"section_{section}_{clip.domain}_train_normal_{index:04d}_{attr_part}.wav"
        return f"section_{section}_{clip.domain}_test_{label}_{index:04d}.wav"
    return format_name(clip.domain, clip.split, clip.label, index, attr_part, section)


def _names(layout: YearLayout, clip: PlannedClip, section: str, index: int, attrs: Sequence[tuple[str, str]],
           hidden: bool) -> tuple[str, str]:  # fmt: skip
    """Return (the distributed dev-style name, the name with the true attributes when they are hidden, else "")."""
    name = _labelled_name(layout, clip, section, index, _attribute_part(layout, attrs, not hidden))
    return name, _labelled_name(layout, clip, section, index, _attribute_part(layout, attrs, True)) if hidden else ""


def _eval_name(layout: YearLayout, clip: PlannedClip, section: str, index: int) -> str:
    """Return an unlabelled eval test name of the layout's grammar."""
    if layout.grammar == "ids":
        return f"id_{section}_{index:08d}.wav"
    if layout.grammar == "domain-folders":
        return f"section_{section}_{clip.domain}_test_{index:04d}.wav"
    return f"section_{section}_{index:04d}.wav"


def _folder(layout: YearLayout, clip: PlannedClip) -> str:
    if layout.grammar == "domain-folders" and clip.split == "test":
        return f"{clip.domain}_test"
    return clip.split


# --------------------------------------------------------------------------------------------------
# Plan


def _true_attributes(layout: YearLayout, clip: PlannedClip) -> tuple[tuple[str, str], ...]:
    spec = MACHINES[clip.machine]
    attrs = tuple(zip(spec.keys, clip.values))
    if layout.stereo:  # neighbouring clips and each attribute combination's turns alternate the noise condition
        combos = len(spec.source if clip.domain == "source" else spec.target)
        turn = clip.index % combos + clip.index // combos
        attrs += (("noise", NOISE_CONDITIONS[turn % len(NOISE_CONDITIONS)]),)
    return attrs


def _group_rng(seed: int, year: str, eval_set: bool, machine: str, section: str, group: int) -> np.random.Generator:
    key = [seed, DEV_MACHINES.index(machine), int(year), int(eval_set), int(section), group, _STREAMS["order"]]
    return np.random.default_rng(np.random.SeedSequence(key))


def plan_layout(
    machine: str, year: str, eval_set: bool = False, sizes: SynthSizes = SynthSizes(), seed: int = 0,
    supplemental: int = SUPPLEMENTAL_CLIPS,
) -> list[LayoutClip]:  # fmt: skip
    """Return every file of one machine type in a year's dev or eval set, eval test clips in eval-name order."""
    layout = YEAR_LAYOUTS[year]
    spec = MACHINES[machine]
    hidden = spec.hidden and layout.hidden is not None
    out: list[LayoutClip] = []
    for section in layout.sections(eval_set):
        base = [c for c in plan_clips(machine, sizes) if layout.domains or c.domain == "source"]
        unlabelled: dict[str, list[PlannedClip]] = {}  # eval test clips by numbering group
        for clip in base:
            if eval_set and clip.split == "test":
                unlabelled.setdefault(clip.domain if layout.grammar == "domain-folders" else "", []).append(clip)
                continue
            attrs = _true_attributes(layout, clip)
            name, true_name = _names(layout, clip, section, clip.index + layout.first_index, attrs, hidden)
            out.append(LayoutClip(clip, section, _folder(layout, clip), name, attrs, true_name=true_name))
        for group, clips in unlabelled.items():
            order = _group_rng(seed, year, eval_set, machine, section, DOMAINS.index(group) if group else 2)
            for position, k in enumerate(order.permutation(len(clips))):
                clip = clips[k]
                attrs = _true_attributes(layout, clip)
                index = position + layout.first_index
                if layout.grammar == "ids":  # 2020's test_rename numbers per label, as the dev test names do
                    renamed_index = clip.index
                else:
                    renamed_index = clip.index + 1 if layout.renamed_by_group else index
                renamed, true_name = _names(layout, clip, section, renamed_index, attrs, hidden)
                name = _eval_name(layout, clip, section, index)
                out.append(LayoutClip(clip, section, _folder(layout, clip), name, attrs, renamed=renamed, true_name=true_name))
        if layout.supplemental:
            for kind in ("machine", "noise"):
                for j in range(supplemental):
                    clip = PlannedClip(machine, "train", "source", 0, j, spec.source[j % len(spec.source)], None)
                    name = f"section_{section}_{kind}_{j + 1:04d}_.wav"  # 1-based, as the organisers' README lists them
                    out.append(LayoutClip(clip, section, SUPPLEMENTAL, name, (), kind=kind))
    return out


# --------------------------------------------------------------------------------------------------
# Audio


def render_layout_clip(item: LayoutClip, year: str, eval_set: bool, seed: int, seconds: float) -> np.ndarray:
    """Return one file's samples as int16: [n] mono, or [n, 2] (near, far) for 2026."""
    layout = YEAR_LAYOUTS[year]
    clip = item.clip
    key = [int(year), int(eval_set), int(item.section), _STREAMS[item.kind]]
    n = int(round(seconds * SAMPLE_RATE))
    if item.kind == "noise":  # the hall alone, no machine
        return dsp.to_pcm16(hall_noise(clip_rng(seed, clip, key), n, clip.domain))
    speed = section_speed(item.section)
    machine, hall = render_parts(clip, seed, seconds, hall=item.kind == "clip", key=key, speed=speed)
    if hall is None:
        return dsp.to_pcm16(machine)
    if not layout.stereo:
        return dsp.to_pcm16(machine + hall)
    far_rng = clip_rng(seed, clip, key[:-1] + [_STREAMS["far"]])
    condition = dict(item.attributes)["noise"]
    source = _extra_noise_source(far_rng, n, condition)
    near = machine + hall + 10 ** (NEAR_SOURCE_DB / 20) * source
    far = _far_microphone(far_rng, machine) + hall + source
    return np.stack([dsp.to_pcm16(near), dsp.to_pcm16(far)], axis=1)  # (n, 2): left near, right far


def _far_microphone(rng: np.random.Generator, machine: np.ndarray) -> np.ndarray:
    """Return the machine as a microphone a few metres away hears it: quieter, duller, with the room's tail."""
    n = len(machine)
    x = dsp.apply_filter(machine, dsp.band(dsp.freqs(n), 20.0, FAR_LOWPASS_HZ, 1.0))
    t = np.arange(int(0.15 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(len(t)) * np.exp(-t / 0.035)  # about 0.25 s reverberation time
    tail[0] = 0.0
    impulse = 0.5 * tail / (np.sqrt(np.sum(tail**2)) + 1e-12)  # reverberant energy 6 dB below the direct sound
    impulse[0] = 1.0
    return 10 ** (-FAR_ATTENUATION_DB / 20) * fftconvolve(x, impulse)[:n]


def _extra_noise_source(rng: np.random.Generator, n: int, condition: str) -> np.ndarray:
    """Return the noise condition's extra source as the far microphone hears it (the near one 12 dB lower)."""
    f = dsp.freqs(n)
    if condition == "1":  # a ventilation unit near the far microphone: steady mid-band noise
        x = dsp.shaped_noise(rng, dsp.band(f, 100.0, 3000.0, 1.0) * dsp.bump(f, 450.0, 0.6, 6.0), n)
        level = 0.03
    else:  # a compressor that cycles: hum harmonics and hiss, on and off
        f0 = 37.0 * (1 + 0.01 * rng.standard_normal())
        hum = dsp.harmonics(rng, dsp.phase(dsp.speed(rng, n, f0)), f0, list(0.7 ** np.arange(10)))
        hiss = dsp.shaped_noise(rng, dsp.band(f, 1500.0, 6000.0, 2.0), n)
        x = (hum / (hum.std() + 1e-12) + 0.6 * hiss) * (0.3 + dsp.bursts(rng, n, 1.5, 0.4))
        level = 0.05
    return level * 10 ** (rng.normal(0.0, 1.0) / 20) * x / (x.std() + 1e-12)


# --------------------------------------------------------------------------------------------------
# Ground truth


def _write_rows(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def write_ground_truth(folder: Path, year: str, eval_set: bool, plans: dict[str, list[LayoutClip]]) -> bool:
    """Write the organisers' ground-truth files of a set into `folder`; return whether there was anything to write.

    Eval sets: 2020 `eval_data_list.csv`; 2021 `ground_truth_data/` per section and domain; 2022
    `ground_truth_{data,domain}/` and `ground_truth_attributes/<machine>/attributes_NN.csv`; 2023-2026
    `ground_truth_{data,domain,attributes}/ground_truth_<machine>_section_NN_test.csv`. Hidden
    attributes (2024-2026, dev and eval): `attributes/<machine>/attributes_NN_{train,test}_correspondence.csv`.
    """
    layout = YEAR_LAYOUTS[year]
    if eval_set and layout.grammar == "ids":
        _write_eval_data_list(folder / "eval_data_list.csv", plans)
    elif eval_set:
        for machine, plan in plans.items():
            for section in layout.eval_sections:
                tests = sorted((c for c in plan if c.eval_test and c.section == section), key=lambda c: c.name)
                if layout.grammar == "domain-folders":
                    for domain in DOMAINS:
                        gt = f"ground_truth_{machine}_section_{section}_{domain}_test.csv"
                        _write_rows(folder / "ground_truth_data" / gt,
                                    [[c.name, str(c.clip.label)] for c in tests if c.clip.domain == domain])  # fmt: skip
                    continue
                gt = f"ground_truth_{machine}_section_{section}_test.csv"
                _write_rows(folder / "ground_truth_data" / gt, [[c.name, str(c.clip.label)] for c in tests])
                _write_rows(folder / "ground_truth_domain" / gt, [[c.name, str(DOMAINS.index(c.clip.domain))] for c in tests])
                if layout.attribute_truth_files:  # 2022: the eval set's attribute file, its test clips included
                    path = folder / "ground_truth_attributes" / machine / f"attributes_{section}.csv"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_attribute_csv(path, [(c.rel, dict(c.attributes)) for c in plan
                                               if c.section == section and c.kind == "clip"])  # fmt: skip
                else:  # eval name, renamed name without .wav[, hidden: the renamed name with the true attributes]
                    _write_rows(folder / "ground_truth_attributes" / gt,
                                [[c.name, c.renamed[: -len(".wav")]] + ([c.true_name] if c.true_name else [])
                                 for c in tests])  # fmt: skip
    correspondences = _write_correspondences(folder / "attributes", layout.sections(eval_set), plans)
    return eval_set or correspondences


def _write_eval_data_list(path: Path, plans: dict[str, list[LayoutClip]]) -> None:
    """2020: one file, a machine-type line and then `eval name,renamed name,label` rows per machine type."""
    rows: list[list[str]] = []
    for machine, plan in plans.items():
        rows.append([machine])
        rows += [[c.name, c.renamed, str(c.clip.label)] for c in sorted(plan, key=lambda c: c.name) if c.eval_test]
    _write_rows(path, rows)


def _write_correspondences(folder: Path, sections: Sequence[str], plans: dict[str, list[LayoutClip]]) -> bool:
    """Write the hidden attributes' `source_file_name,target_file_name` files (true name, distributed name); return whether any."""
    wrote = False
    for machine, plan in plans.items():
        for section in sections:
            hidden = [c for c in plan if c.section == section and c.true_name]
            for split in ("train", "test") if hidden else ():
                rows = sorted([c.true_name, c.renamed or c.name] for c in hidden if c.clip.split == split)
                _write_rows(folder / machine / f"attributes_{section}_{split}_correspondence.csv", rows,
                            CORRESPONDENCE_HEADER)  # fmt: skip
                wrote = True
    return wrote


# --------------------------------------------------------------------------------------------------
# Writing


def _counts(plan: Sequence[LayoutClip]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for c in plan:
        counts = out.setdefault(c.section, dict.fromkeys(
            ("train_source", "train_target", "test_normal", "test_anomaly", "supplemental"), 0))  # fmt: skip
        if c.kind != "clip":
            key = "supplemental"
        elif c.clip.split == "train":
            key = f"train_{c.clip.domain}"
        else:
            key = ("test_normal", "test_anomaly")[c.clip.label]
        counts[key] += 1
    return out


def synthesize_layout(
    out: Path,
    year: str,
    eval_set: bool = False,
    seed: int = 0,
    sizes: SynthSizes = SynthSizes(),
    machines: Sequence[str] = DEV_MACHINES,
    ground_truth: Path | None = None,
    supplemental: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> LayoutSummary:
    """Write a synthetic DCASE `year` dev (or eval) set under `out`, its ground truth under `ground_truth`; return what was written.

    `ground_truth` defaults to `<out>-ground-truth` beside `out` and is written only when the set has
    any (eval sets; hidden attributes of 2024-2026). As `synthesize` does, everything is generated in
    temporary folders beside the outputs and moved into place when complete; existing machine folders
    (and an existing ground-truth folder, which is replaced whole) are replaced only with `overwrite`.
    `supplemental`: 2025's machine-only and noise-only clips, each, per machine type (default 10).
    """
    out = Path(out)
    machines = list(dict.fromkeys(machines))
    count = SUPPLEMENTAL_CLIPS if supplemental is None else supplemental
    if year not in YEAR_LAYOUTS:
        raise AsdError(f"unknown layout {year!r}; choose one of {', '.join(YEARS)}", out)
    check_request(out, machines, seed, sizes, count)
    if supplemental is not None and not YEAR_LAYOUTS[year].supplemental:
        raise AsdError(f"supplemental clips are a 2025 layout feature, not {year}'s", out)
    gt = default_ground_truth_folder(out) if ground_truth is None else Path(ground_truth)
    if out.exists() and not out.is_dir():
        raise AsdError("output exists and is not a folder", out)
    if gt.resolve() == out.resolve() or out.resolve() in gt.resolve().parents or gt.resolve() in out.resolve().parents:
        raise AsdError("the ground-truth folder must lie outside the data root (and not hold it)", gt)
    existing = [m for m in machines if (out / m).exists()]
    if existing and not overwrite:
        raise AsdError(f"already holds {', '.join(existing)}; refusing to overwrite without --overwrite", out)

    plans = {m: plan_layout(m, year, eval_set, sizes, seed, count) for m in machines}
    has_truth = eval_set or any(c.true_name for plan in plans.values() for c in plan)
    if has_truth and gt.exists() and (not gt.is_dir() or not overwrite):
        raise AsdError("ground-truth folder already exists; refusing to overwrite without --overwrite"
                       if gt.is_dir() else "ground-truth output exists and is not a folder", gt)  # fmt: skip
    total, done = sum(len(p) for p in plans.values()), 0
    if progress:
        progress(0, total)
    layout = YEAR_LAYOUTS[year]
    staged: list[Path] = []
    try:
        staging = _stage_beside(out, staged)
        for machine, plan in plans.items():
            folder = staging / machine
            for sub in sorted({c.folder for c in plan}):
                (folder / sub).mkdir(parents=True)
            for item in plan:
                wave = render_layout_clip(item, year, eval_set, seed, sizes.seconds)
                sf.write(folder / item.folder / item.name, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
                done += 1
                if progress:
                    progress(done, total)
            if layout.attribute_files:
                for section in layout.sections(eval_set):
                    listed = [(c.rel, {} if c.true_name else dict(c.attributes)) for c in plan
                              if c.section == section and c.kind == "clip" and not c.eval_test]  # fmt: skip
                    write_attribute_csv(folder / f"attributes_{section}.csv", listed)
        gt_staging = _stage_beside(gt, staged) if has_truth else None
        if gt_staging is not None:
            write_ground_truth(gt_staging, year, eval_set, plans)
        hidden_path = out / HIDDEN_ATTRIBUTES_FILE  # the embedded default's file must not name replaced clips
        kept_hidden = [r for r in read_hidden_rows(hidden_path) if r[0] not in machines] if hidden_path.exists() else []
        if kept_hidden:
            write_hidden_rows(staging / HIDDEN_ATTRIBUTES_FILE, kept_hidden)
        move_into_place(staging, out, machines)
        if not kept_hidden and hidden_path.exists():
            hidden_path.unlink()
        if gt_staging is not None:
            replace_dir(gt_staging, gt)
    finally:
        for path in staged:
            if path.exists():
                shutil.rmtree(path)
    return LayoutSummary(out=out, ground_truth=gt if has_truth else None, year=year, eval_set=eval_set, seed=seed,
                         sizes=sizes, counts={m: _counts(p) for m, p in plans.items()})  # fmt: skip


def _stage_beside(target: Path, staged: list[Path]) -> Path:
    """Return a new temporary folder beside `target` (recorded in `staged` for clean-up) with the usual mode."""
    path = staging_dir(target)
    staged.append(path)
    return path
