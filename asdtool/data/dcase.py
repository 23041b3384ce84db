"""DCASE Task 2 data roots: clip records, scanning and validation, attribute files, class labels.

A data root holds one folder per machine type. How a machine folder's clips are named and filed
depends on the year (2020-2026); `asdtool.data.layouts` has one reader per layout, and every one of
them gives the same record, `Clip`, so nothing past this module knows which year a clip came from.
The 2022-2026 layout, as the dev and eval zips extract:

    <root>/<machine>/train/section_00_source_train_normal_0000_<attrs>.wav
    <root>/<machine>/test/section_00_target_test_anomaly_0003_<attrs>.wav   (dev)
    <root>/<machine>/test/section_00_0003.wav                                (eval: no labels)
    <root>/<machine>/attributes_00.csv

`<attrs>` is `key_value_key_value...`, `noAttribute` or empty (a trailing underscore).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from asdtool.data.layouts import (  # noqa: F401  (re-exported: the record's vocabulary)
    LABELS,
    NO_ATTRIBUTE,
    SUPPLEMENTAL,
    UNKNOWN,
    ClipName,
    detect_layout,
    parse_attributes,
    parse_sections_name,
    reader_for,
)
from asdtool.core.errors import AsdError, few

DEV_MACHINES = ("bearing", "fan", "gearbox", "slider", "ToyCar", "ToyTrain", "valve")
SPLITS = ("train", "test")
DOMAINS = ("source", "target")

_MACHINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def format_attributes(attributes: dict[str, str] | Sequence[tuple[str, str]]) -> str:
    """Return the attribute string of a name (`noAttribute` for none)."""
    items = list(attributes.items()) if isinstance(attributes, dict) else list(attributes)
    if not items:
        return NO_ATTRIBUTE
    for key, value in items:
        for part in (str(key), str(value)):
            if not part or "_" in part or "/" in part or part.endswith(".wav"):
                raise ValueError(f"attribute key or value {part!r} cannot go into a DCASE file name")
    return "_".join(f"{k}_{v}" for k, v in items)


def parse_name(name: str) -> ClipName:
    """Return the fields of a 2022-2026 clip file name; raise ValueError when it does not parse."""
    return parse_sections_name(name)


def format_name(
    domain: str,
    split: str,
    label: int | str,
    index: int,
    attributes: dict[str, str] | Sequence[tuple[str, str]] | str,
    section: str | int = "00",
) -> str:
    """Return the official dev file name of a clip."""
    if domain not in DOMAINS or split not in SPLITS:
        raise ValueError(f"bad domain/split {domain!r}/{split!r}")
    label_name = label if isinstance(label, str) else {0: "normal", 1: "anomaly"}[label]
    if label_name not in LABELS:
        raise ValueError(f"bad label {label!r}")
    attrs = attributes if isinstance(attributes, str) else format_attributes(attributes)
    return f"section_{int(section):02d}_{domain}_{split}_{label_name}_{int(index):04d}_{attrs}.wav"


@dataclass(frozen=True)
class Clip:
    """One audio clip of the dataset and everything its name and folder say about it."""

    path: Path
    machine: str
    section: str
    split: str  # the folder it lies in: "train" | "test"
    domain: str | None  # "source" | "target" | None (eval test clips)
    label: int  # 0 normal, 1 anomaly, -1 unknown
    attribute_string: str  # raw attribute part of the name ("" for eval test clips)
    attributes: dict[str, str] = field(hash=False, compare=False)

    @property
    def file_name(self) -> str:
        """The clip's file name (the last part of its path)."""
        return self.path.name

    @property
    def domain_id(self) -> int:
        """0 source, 1 target, -1 unknown (the HDF5 stores' int8 code)."""
        return {"source": 0, "target": 1}.get(self.domain or "", -1)

    @property
    def class_key(self) -> str:
        """The training class: machine type, section (when not 00) and attribute combination (`noAttribute` is one class)."""
        section = "" if self.section == "00" else f"section_{self.section}/"
        return f"{self.machine}/{section}{self.attribute_string or NO_ATTRIBUTE}"


ROOT_SEPARATOR = ":"  # `<root>:<machine>`: a machine type of one of several data roots


@dataclass
class Dataset:
    """All clips under one data root (or several: `scan_roots`), machine by machine."""

    root: Path  # the first data root
    clips: list[Clip]
    roots: list[Path] = field(default_factory=list)  # every data root read (empty: just `root`)

    def folder(self, machine: str) -> Path:
        """Return the machine folder of a machine type (a namespaced one lies under its own root)."""
        label, sep, bare = machine.rpartition(ROOT_SEPARATOR)
        if sep:
            for root in self.roots:
                if root_label(root) == label:
                    return root / bare
        return self.root / machine

    @property
    def machines(self) -> list[str]:
        """The machine types of the clips, sorted case-insensitively."""
        return sorted({c.machine for c in self.clips}, key=str.lower)

    def select(self, machine: str | None = None, split: str | None = None) -> list[Clip]:
        """Return the clips of one machine type and/or split, in file-name order."""
        return [
            c
            for c in self.clips
            if (machine is None or c.machine == machine) and (split is None or c.split == split)
        ]


def find_machines(root: str | Path) -> list[str]:
    """Return the machine folders under `root`, sorted case-insensitively.

    Every folder directly under `root` is a machine folder, except hidden ones (a name starting with
    `.` or `_`: temporary folders of atomic writes, `__MACOSX`); `scan_machine` refuses one that
    holds no clips. Files beside the machine folders (such as hidden_attributes.csv) are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise AsdError("data root is not a folder", root)
    machines = sorted(
        (p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
        key=str.lower,
    )
    if not machines:
        raise AsdError("no machine folders (<machine>/train or <machine>/test) found", root)
    return machines


def _split_state(split_dir: Path) -> str:
    """Return why a split folder gave no clips: "missing", "empty" or "no-wav"."""
    if not split_dir.is_dir():
        return "missing"
    return "no-wav" if any(split_dir.iterdir()) else "empty"


def _why_no_clips(folder: Path) -> str:
    """Return, for a message, why neither train/ nor test/ of a machine folder gave a clip."""
    states = [_split_state(folder / split) for split in SPLITS]
    if states[0] == states[1]:
        return {
            "missing": "no train/ or test/ folder",
            "empty": "train/ and test/ are empty",
            "no-wav": "train/ and test/ hold no .wav files",
        }[states[0]]
    words = {"missing": "is missing", "empty": "is empty", "no-wav": "holds no .wav files"}
    return ", ".join(f"{split}/ {words[state]}" for split, state in zip(SPLITS, states))


def scan_machine(root: str | Path, machine: str, grammar: str = "sections", supplemental: bool = False) -> list[Clip]:
    """Return every clip of one machine folder, read by its layout's reader and validated (names, folders, attributes_NN.csv).

    `supplemental`: also read 2025's `supplemental/` clips (split "supplemental"); otherwise that folder is ignored.
    """
    folder = Path(root) / machine
    if not _MACHINE.match(machine):
        raise AsdError(f"machine folder name {machine!r} is not a DCASE machine type name", folder)
    if not folder.is_dir():
        raise AsdError("machine folder does not exist", folder)
    reader = reader_for(grammar)
    wanted = [f for f in reader.folders if f != SUPPLEMENTAL or supplemental]
    listing = {
        sub: sorted(p for p in (folder / sub).iterdir() if p.suffix.lower() == ".wav")
        for sub in wanted
        if (folder / sub).is_dir()
    }
    if not any(wavs for sub, wavs in listing.items() if sub != SUPPLEMENTAL):
        raise AsdError(f"machine folder holds no clips ({_why_no_clips(folder)})", folder)
    clips: list[Clip] = []
    for sub, wavs in listing.items():
        if not wavs:
            raise AsdError("folder holds no .wav files", folder / sub)
        split = reader.split_of(sub)
        for path in wavs:
            try:
                name = reader.parse(path.name, split)
            except ValueError as exc:
                raise AsdError(str(exc), path) from None
            if name.split is not None and name.split != split:
                raise AsdError(f"a {name.split} clip lies in the {sub}/ folder", path)
            if sub.endswith("_test") and name.domain != sub.split("_")[0]:
                raise AsdError(f"a {name.domain} clip lies in the {sub}/ folder", path)
            if split == "train" and name.split is None:
                raise AsdError("training clip names must carry domain, label and attributes", path)
            clips.append(
                Clip(
                    path=path,
                    machine=machine,
                    section=name.section,
                    split=split,
                    domain=name.domain,
                    label=name.label,
                    attribute_string=name.attribute_string,
                    attributes=name.attributes,
                )
            )
    if "train" not in listing:
        sections = sorted({c.section for c in clips})
        raise AsdError(f"no train/ folder: section(s) {', '.join(sections)} have no training clips", folder)
    trained = {c.section for c in clips if c.split == "train"}
    untrained = sorted({c.section for c in clips} - trained)
    if untrained:
        raise AsdError(f"section(s) {', '.join(untrained)} have test clips but no training clips", folder)
    if grammar == "sections":
        check_attribute_csv(folder, clips)
    return clips


def read_csv_rows(path: str | Path, what: str) -> list[list[str]]:
    """Return the rows of a CSV file (a leading byte-order mark ignored); AsdError naming `what` if unreadable."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AsdError(f"cannot read {what} ({exc.__class__.__name__})", path) from None


def read_attribute_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """Return {file path relative to the data root: attribute dict} from an official attributes_NN.csv."""
    path = Path(path)
    rows = read_csv_rows(path, "attribute file")
    if not rows or not rows[0] or rows[0][0] != "file_name":
        raise AsdError("attribute file has no 'file_name,d1p,d1v,...' header", path)
    header = rows[0]
    out: dict[str, dict[str, str]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) > len(header):
            raise AsdError(f"line {line_no} has more columns than the header", path)
        row = row + [""] * (len(header) - len(row))
        attrs: dict[str, str] = {}
        for key, value in zip(row[1::2], row[2::2]):
            if key in ("", NO_ATTRIBUTE):
                continue
            attrs[key] = value
        out[row[0]] = attrs
    return out


def write_attribute_csv(path: str | Path, rows: Sequence[tuple[str, dict[str, str]]]) -> None:
    """Write an official attributes_NN.csv: rows of (path relative to the data root, attribute dict)."""
    width = max([len(a) for _, a in rows] + [1])
    header = ["file_name"] + [f"d{i}{c}" for i in range(1, width + 1) for c in ("p", "v")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for rel, attrs in rows:
            cells = [x for kv in attrs.items() for x in kv] if attrs else [NO_ATTRIBUTE, ""]
            writer.writerow([rel] + cells + [""] * (2 * width - len(cells)))


def check_attribute_csv(folder: Path, clips: Sequence[Clip]) -> None:
    """Raise AsdError when the machine's attributes_NN.csv disagrees with its clip names."""
    by_rel = {f"{c.machine}/{c.split}/{c.file_name}": c for c in clips}
    for section in sorted({c.section for c in clips}):
        csv_path = folder / f"attributes_{section}.csv"
        if not csv_path.exists():
            continue
        listed = read_attribute_csv(csv_path)
        for rel, attrs in listed.items():
            clip = by_rel.get(rel)
            if clip is None:
                raise AsdError(f"lists {rel}, which is not in the machine folder", csv_path)
            if clip.domain is not None and attrs != clip.attributes:
                raise AsdError(
                    f"says {rel} has attributes {attrs or NO_ATTRIBUTE}, its name says {clip.attributes or NO_ATTRIBUTE}",
                    csv_path,
                )
        missing = [rel for rel, c in by_rel.items() if c.split == "train" and c.section == section and rel not in listed]
        if missing:
            raise AsdError(f"does not list {len(missing)} training clip(s): {few(missing)}", csv_path)


@dataclass(frozen=True)
class Reading:
    """How a data root is read: by which layout's reader, and which clips.

    `layout`: "auto" finds each machine folder's reader from its clips (a root mixing layouts is
    refused unless `mixed_layouts`); a year 2020..2026 reads every folder with that year's reader.
    `supplemental`: also read 2025's `supplemental/` clips (split "supplemental").
    """

    layout: str = "auto"
    mixed_layouts: bool = False
    supplemental: bool = False


def root_label(root: str | Path) -> str:
    """Return the name of a data root in namespaced machine types: its path as given, normalised."""
    return Path(os.path.normpath(str(root))).as_posix()


def scan_roots(roots: Sequence[str | Path], reading: Reading = Reading()) -> Dataset:
    """Return the training data of several data roots at once (earlier years, eval additional training data).

    One root reads as `scan`. With several, every clip's machine type becomes `<root>:<machine>`
    (`root_label`), so the machine types, sections and classes of different roots never merge: the
    2020 fan and the 2025 fan are different machines. Each root is read with its own layout.
    """
    roots = [Path(r) for r in roots]
    if not roots:
        raise AsdError("no data root given")
    if len(roots) == 1:
        return scan(roots[0], reading=reading)
    seen: dict[Path, Path] = {}
    for root in roots:
        key = root.resolve()
        if key in seen:
            raise AsdError(f"is given twice as a data root (also as {seen[key]})", root)
        seen[key] = root
    clips = []
    for root in roots:
        label = root_label(root)
        clips += [replace(c, machine=f"{label}{ROOT_SEPARATOR}{c.machine}") for c in scan(root, reading=reading).clips]
    return Dataset(root=roots[0], clips=clips, roots=roots)


def scan(root: str | Path, machines: Sequence[str] | None = None, reading: Reading = Reading()) -> Dataset:
    """Return the validated dataset under `root` (all machine folders, or the named ones)."""
    root = Path(root)
    available = find_machines(root)
    if machines:
        unknown = [m for m in machines if m not in available]
        if unknown:
            raise AsdError(f"no machine folder named {few(unknown)} (found {', '.join(available)})", root)
        available = list(machines)
    if reading.layout == "auto":
        grammars = detect_layout(root, available, reading.mixed_layouts)
    else:
        grammar = reader_for(reading.layout).grammar
        grammars = {m: grammar for m in available}
    clips = [c for m in available for c in scan_machine(root, m, grammars[m], reading.supplemental)]
    return Dataset(root=root, clips=clips, roots=[root])
