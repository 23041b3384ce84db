"""DCASE Task 2 layouts, 2020-2026: one reader per layout, one record type (`dcase.Clip`) out.

Three name grammars cover the seven years; each year is one of them plus what that year adds:

| layout | sections            | train name                                          | dev test name                                      | eval test name                   |
|--------|---------------------|-----------------------------------------------------|----------------------------------------------------|----------------------------------|
| 2020   | machine IDs `id_NN` | `normal_id_01_00000000.wav`                         | `{normal,anomaly}_id_01_00000000.wav`              | `id_05_00000000.wav`             |
| 2021   | `section_00`..`05`  | `section_00_source_train_normal_0000_<attr>.wav`    | `section_00_source_test_anomaly_0000.wav` in `source_test/`, `target_test/` | `section_03_target_test_0000.wav` |
| 2022+  | `section_NN`        | `section_00_source_train_normal_0000_<attrs>.wav`   | `section_00_target_test_anomaly_0000_<attrs>.wav` | `section_00_0000.wav`            |

2022-2026 share the last grammar. `<attrs>` is `key_value_...` pairs, `noAttribute` (hidden attributes,
2024 on) or nothing (2025's trailing underscore: `..._0000_.wav`). 2024 counts clips from 0001, the
others from 0000 (the index is read, never assumed). 2025 adds `<machine>/supplemental/`: clips of the
machine alone and of the noise alone (`section_00_machine_0001_.wav`, `section_00_noise_0001_.wav`; the
forms `section_00_source_supplemental_machine_0000.wav` are read too), ignored unless asked for. 2026
clips are stereo, the near microphone left and the far one right (`asdtool.data.audio` picks the
channel); their names follow the 2022+ grammar (a noise condition is one more attribute pair).

2020 has no domains: its clips read as source-domain clips, and its machine IDs as sections. 2021's
attribute part is free text (`strength_1_ambient`), kept whole as the class name with no key/value
dict. The reader of a root is found from its clips (`detect_layout`); a root whose machine folders
follow different grammars is refused unless mixing is asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from asdtool.core.errors import AsdError

YEARS = ("2020", "2021", "2022", "2023", "2024", "2025", "2026")
YEAR_GRAMMAR = {"2020": "ids", "2021": "domain-folders", **{y: "sections" for y in YEARS[2:]}}
LABELS = {"normal": 0, "anomaly": 1}
UNKNOWN = -1
NO_ATTRIBUTE = "noAttribute"
SUPPLEMENTAL = "supplemental"


@dataclass(frozen=True)
class ClipName:
    """The fields one clip's file name carries (eval test names carry fewer)."""

    section: str
    index: int
    domain: str | None = None  # "source" | "target" | None when the name does not say
    split: str | None = None  # "train" | "test" | "supplemental" | None for eval test names
    label: int = UNKNOWN  # 0 normal, 1 anomaly, -1 unknown
    attribute_string: str = ""  # the raw attribute part: "vel_6_loc_A", "noAttribute", "" or 2021's free text
    pairs: bool = True  # whether the attribute part is key_value pairs (2021's free text is not)

    @property
    def attributes(self) -> dict[str, str]:
        """The attribute dict of the name's attribute part ({} for `noAttribute`, "" and 2021's free text)."""
        return parse_attributes(self.attribute_string) if self.pairs else {}


def parse_attributes(attrs: str) -> dict[str, str]:
    """Return the attribute dict of an attribute string (`key_value_...`; `noAttribute` and "" give {})."""
    if attrs in ("", NO_ATTRIBUTE):
        return {}
    parts = attrs.split("_")
    if len(parts) % 2 or any(p == "" for p in parts):
        raise ValueError(f"attribute part {attrs!r} is not key_value pairs")
    return dict(zip(parts[0::2], parts[1::2]))


# --- the three grammars -------------------------------------------------------------------------

_IDS_DEV = re.compile(r"^(?P<label>normal|anomaly)_id_(?P<section>\d{2})_(?P<index>\d{8})\.wav$")
_IDS_EVAL = re.compile(r"^id_(?P<section>\d{2})_(?P<index>\d{8})\.wav$")

_FOLDERS_TRAIN = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_train_normal_(?P<index>\d{4})_(?P<attrs>[^/\\]+)\.wav$")
_FOLDERS_DEV_TEST = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_test_(?P<label>normal|anomaly)_(?P<index>\d{4})\.wav$")
_FOLDERS_EVAL_TEST = re.compile(r"^section_(?P<section>\d{2})_(?P<domain>source|target)_test_(?P<index>\d{4})\.wav$")

_SECTIONS_DEV = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d{4})_(?P<attrs>[^/\\]*)\.wav$"
)
_SECTIONS_EVAL = re.compile(r"^section_(?P<section>\d{2})_(?P<index>\d{4})\.wav$")
_SUPPLEMENTAL = re.compile(
    r"^section_(?P<section>\d{2})_(?:(?P<domain>source|target)_)?(?:supplemental_)?(?P<kind>machine|noise)"
    r"(?:_normal)?_(?P<index>\d{4})(?:_(?P<attrs>[^/\\]*))?\.wav$"
)


def _checked_pairs(attrs: str) -> str:
    parse_attributes(attrs)  # validates the key_value structure
    return attrs


def parse_ids_name(name: str, split: str) -> ClipName:
    """2020: `{normal,anomaly}_id_NN_NNNNNNNN.wav` (train and dev test) or `id_NN_NNNNNNNN.wav` (eval test)."""
    m = _IDS_DEV.match(name)
    if m:
        return ClipName(section=m["section"], index=int(m["index"]), domain="source", split=split,
                        label=LABELS[m["label"]])  # fmt: skip
    m = _IDS_EVAL.match(name)
    if m and split == "test":
        return ClipName(section=m["section"], index=int(m["index"]), domain="source", split="test")
    raise ValueError("file name does not parse as {normal|anomaly}_id_NN_NNNNNNNN.wav" + (
        " or id_NN_NNNNNNNN.wav" if split == "test" else ""))  # fmt: skip


def parse_folders_name(name: str, split: str) -> ClipName:
    """2021: train names with free-text attributes; test names without, their domain also the folder's."""
    if split == "train":
        m = _FOLDERS_TRAIN.match(name)
        if m:
            return ClipName(section=m["section"], index=int(m["index"]), domain=m["domain"], split="train", label=0,
                            attribute_string=m["attrs"], pairs=False)  # fmt: skip
        raise ValueError("file name does not parse as section_NN_{source|target}_train_normal_NNNN_<attributes>.wav")
    m = _FOLDERS_DEV_TEST.match(name) or _FOLDERS_EVAL_TEST.match(name)
    if m:
        label = LABELS[m["label"]] if "label" in m.groupdict() else UNKNOWN
        return ClipName(section=m["section"], index=int(m["index"]), domain=m["domain"], split="test", label=label,
                        pairs=False)  # fmt: skip
    raise ValueError("file name does not parse as section_NN_{source|target}_test_{normal|anomaly}_NNNN.wav "
                     "or section_NN_{source|target}_test_NNNN.wav")  # fmt: skip


def parse_sections_name(name: str, split: str | None = None) -> ClipName:
    """2022-2026: `section_NN_<domain>_<split>_<label>_NNNN_<attrs>.wav` or, eval test, `section_NN_NNNN.wav`.

    `split` "supplemental" reads 2025's machine-only and noise-only clips.
    """
    if split == SUPPLEMENTAL:
        m = _SUPPLEMENTAL.match(name)
        if not m:
            raise ValueError("file name does not parse as section_NN_{machine|noise}_NNNN_<attrs>.wav")
        attrs = _checked_pairs(m["attrs"] or "")
        # its own training class: the machine alone, or the noise alone, apart from the machine's attribute classes
        return ClipName(section=m["section"], index=int(m["index"]), domain=m["domain"] or "source",
                        split=SUPPLEMENTAL, label=0, attribute_string=f"{SUPPLEMENTAL}-{m['kind']}" + (
                            f"_{attrs}" if attrs else ""), pairs=False)  # fmt: skip
    m = _SECTIONS_DEV.match(name)
    if m:
        return ClipName(section=m["section"], index=int(m["index"]), domain=m["domain"], split=m["split"],
                        label=LABELS[m["label"]], attribute_string=_checked_pairs(m["attrs"]))  # fmt: skip
    m = _SECTIONS_EVAL.match(name)
    if m:
        return ClipName(section=m["section"], index=int(m["index"]))
    raise ValueError(
        "file name does not parse as section_NN_{source|target}_{train|test}_{normal|anomaly}_NNNN_<attrs>.wav "
        "or section_NN_NNNN.wav"
    )


_SECTION_PREFIX = re.compile(r"^(?:(?:normal|anomaly)_)?(?:id|section)_(?P<section>\d{2})_")


def section_of(file_name: str) -> str:
    """Return the section (2020: the machine ID) of a clip file name of any layout; ValueError if it has none.

    Every layout starts its names with `section_NN_`, `id_NN_` or `{normal,anomaly}_id_NN_`.
    """
    m = _SECTION_PREFIX.match(file_name)
    if not m:
        raise ValueError(f"{file_name!r} names no section (section_NN_... or id_NN_...)")
    return m["section"]


# --- readers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """How one layout's machine folder is read: its grammar, its clip folders and its name parser."""

    grammar: str
    folders: tuple[str, ...]  # sub-folders of a machine folder that hold clips, as (folder) -> split
    parse: Callable[[str, str], ClipName]

    def split_of(self, folder: str) -> str:
        """Return the split of a clip folder: "test" for `test`, `source_test` and `target_test`, else the folder's name."""
        return "test" if folder.endswith("test") else folder


READERS = {
    "ids": Reader("ids", ("train", "test"), parse_ids_name),
    "domain-folders": Reader("domain-folders", ("train", "source_test", "target_test"), parse_folders_name),
    "sections": Reader("sections", ("train", "test", SUPPLEMENTAL), parse_sections_name),
}


def reader_for(layout: str) -> Reader:
    """Return the reader of a layout: a year 2020..2026 or a grammar name."""
    grammar = YEAR_GRAMMAR.get(layout, layout)
    if grammar not in READERS:
        raise AsdError(f"unknown layout {layout!r}; choose auto or one of {', '.join(YEARS)}")
    return READERS[grammar]


def machine_grammar(folder: Path) -> str:
    """Return the grammar a machine folder's clips follow, from its sub-folders and clip names.

    2021 is the one with `source_test/` or `target_test/`; 2020 names start `normal_id_`, `anomaly_id_`
    or `id_`, and a folder none of whose clips starts `section_` but some of which start so is read as
    2020; everything else is read as 2022-2026, whose reader names any clip it cannot parse.
    """
    if (folder / "source_test").is_dir() or (folder / "target_test").is_dir():
        return "domain-folders"
    names = [p.name for sub in ("train", "test") if (folder / sub).is_dir() for p in (folder / sub).iterdir()
             if p.suffix.lower() == ".wav"]  # fmt: skip
    ids = any(_IDS_DEV.match(n) or _IDS_EVAL.match(n) for n in names)
    return "ids" if ids and not any(n.startswith("section_") for n in names) else "sections"


def detect_layout(root: Path, machines: list[str], mixed: bool = False) -> dict[str, str]:
    """Return {machine: grammar} for the machine folders under `root`; AsdError for a mixed root unless `mixed`."""
    found = {m: machine_grammar(root / m) for m in machines}
    kinds = sorted(set(found.values()))
    if len(kinds) > 1 and not mixed:
        by = {k: [m for m, g in found.items() if g == k] for k in kinds}
        what = "; ".join(f"{', '.join(ms[:3])}{' ...' if len(ms) > 3 else ''} {_year_words(k)}" for k, ms in by.items())
        raise AsdError(f"machine folders of different DCASE layouts in one root ({what}); pass --mixed-layouts to "
                       "read each with its own reader, or give them separate data roots", root)  # fmt: skip
    return found


def _year_words(grammar: str) -> str:
    return {"ids": "(2020)", "domain-folders": "(2021)", "sections": "(2022-2026)"}[grammar]
