"""The output rule of every command: it replaces only what it wrote itself, recognised by content.

One rule, written once here and applied by every command before any work starts:

- **A file output** may replace an existing file only when that file is of the command's own kind,
  recognised by its content (a bundle by its safetensors header, a score CSV by its header line, a
  PNG by the `Software` text chunk asdtool writes into every plot, a JSON document by its keys, an
  HDF5 store by its attributes), or when the user gives `--force`. Its extension proves nothing.
- **A folder output** may replace an existing folder only when every entry in it is one the
  command writes, recognised by content the same way (plot folders: each PNG carries asdtool's
  marker), so a folder of the user's files is never deleted: the command refuses instead.
- **An input is never an output**, `--force` or not: the output may not be one of the files the
  command reads (compared by resolved path and by inode, so links and `..` do not hide it), and a
  folder output may not hold an input (replacing the folder would delete it).

Every refusal is one line naming the path and the problem. The recognisers read a bounded prefix
of a file (never a whole large file) and never unpickle anything.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from asdtool.core.errors import AsdError, few

PNG_SOFTWARE = "asdtool"  # the PNG tEXt "Software" value of every plot asdtool draws (savefig metadata)
PNG_METADATA = {"Software": PNG_SOFTWARE}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JSON_LIMIT = 64_000_000  # bytes of a JSON output read to recognise it
_VCS_FILES = {".gitignore"}  # DVC lists a stage's file outputs in a .gitignore beside them
TMP_PREFIX = ".asdtool-tmp-"  # temporary files and folders of atomic writes: .asdtool-tmp-<pid>-<target>.<random>.tmp


@dataclass(frozen=True)
class Kind:
    """A kind of output a command writes: what to call it in a message, and how to recognise one by content."""

    name: str
    recognise: Callable[[Path], bool]

    def __call__(self, path: Path) -> bool:
        try:
            return path.is_file() and bool(self.recognise(path))
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError, struct.error,
                zipfile.BadZipFile):  # fmt: skip
            return False


# ----------------------------------------------------------------------------- recognisers


def first_line(path: Path, limit: int = 65536) -> str:
    """Return the first line of a text file (at most `limit` bytes, without its line end)."""
    with open(path, "rb") as f:
        return f.read(limit).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8")


def csv_with_header(*headers: str) -> Callable[[Path], bool]:
    """Return a recogniser of CSV files whose first line is one of `headers`."""
    return lambda path: first_line(path) in headers


def json_document(path: Path):
    """Return a JSON file's document, refusing (ValueError) one too large to be an output of ours."""
    if path.stat().st_size > _JSON_LIMIT:
        raise ValueError("too large")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("nested too deep") from None


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """Return a recogniser of JSON objects that hold every one of `keys`."""
    def recognise(path: Path) -> bool:
        """Return whether `path` is a JSON object holding every one of `keys` (ValueError from `json_document`)."""
        doc = json_document(path)
        return isinstance(doc, dict) and all(k in doc for k in keys)

    return recognise


def png_of_ours(path: Path) -> bool:
    """Return whether a file is a PNG that asdtool drew: its tEXt chunk Software is asdtool's (before the image data)."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return False
        for _ in range(64):  # the text chunks matplotlib writes come before IDAT
            head = f.read(8)
            if len(head) < 8:
                return False
            length, ctype = struct.unpack(">I4s", head)
            if ctype == b"IDAT" or length > 1_000_000:
                return False
            body = f.read(length)
            f.read(4)  # CRC
            if ctype == b"tEXt":
                key, _, value = body.partition(b"\0")
                if key == b"Software" and value.decode("latin-1").startswith(PNG_SOFTWARE):
                    return True
    return False


def safetensors_metadata(path: Path) -> dict:
    """Return the `__metadata__` of a safetensors file's header (read alone; ValueError when it is none)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("short")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError("header too large")
        header = json.loads(f.read(n).decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("no metadata")
    return meta


BUNDLE_FORMAT = "asdtool-detector-bundle"  # asdtool.deploy.bundle's format name and metadata key, kept here so that
BUNDLE_META_KEY = "asdtool_bundle"  # recognising a bundle needs neither torch nor the bundle code


def bundle_file(path: Path) -> bool:
    """Return whether a file is an asdtool detector bundle (by its safetensors header alone)."""
    raw = safetensors_metadata(path).get(BUNDLE_META_KEY)
    if not isinstance(raw, str):
        return False
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == BUNDLE_FORMAT


def hdf5_store(path: Path) -> bool:
    """Return whether a file is one of asdtool's HDF5 stores (embeddings or scores: its root attributes)."""
    with open(path, "rb") as f:
        if f.read(8) != b"\x89HDF\r\n\x1a\n":
            return False
    import h5py

    with h5py.File(path, "r") as f:
        return all(a in f.attrs for a in ("schema", "asdtool_version", "clips_sha256"))


def torch_checkpoint(path: Path) -> bool:
    """Return whether a file is a torch zip checkpoint (its archive's data.pkl; nothing is unpickled)."""
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("/data.pkl") for name in z.namelist()[:4096])


def score_lines(path: Path, values: str = "float") -> bool:
    """Return whether a file reads as official score lines `<clip>,<number>` (or decision lines `<clip>,0|1`)."""
    with open(path, "rb") as f:
        data, more = f.read(65536), f.read(1)
    if more:  # keep whole lines only: the cut may split a line, even a multi-byte character
        data = data[: data.rfind(b"\n") + 1]
        if not data:
            return False  # no line ends within 64 KiB: not score lines
    try:
        head = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return False
    if not head:
        return True  # an empty score file (a section without clips)
    for line in head[:200]:
        clip, comma, value = line.rpartition(",")
        if not comma or not clip:
            return False
        if values == "decision":
            if value not in ("0", "1"):
                return False
        else:
            try:
                float(value)
            except ValueError:
                return False
    return True


def any_of(*kinds: Kind) -> Kind:
    """Return a kind matching any of `kinds` (a folder holding several kinds of entries)."""
    return Kind(" or ".join(k.name for k in kinds), lambda path: any(k(path) for k in kinds))


def named(pattern: Callable[[str], bool], kind: Kind) -> Kind:
    """Return `kind` limited to entries whose names also match (a folder entry must be in its place and of its kind)."""
    return Kind(kind.name, lambda path: pattern(path.name) and kind(path))


# ----------------------------------------------------------------------------- the rule


def _same(a: Path, b: Path) -> bool:
    """Return whether two paths name the same file or folder (resolved path, or inode when both exist)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _within(inner: Path, outer: Path) -> bool:
    """Return whether `inner` lies at or below folder `outer` (resolved)."""
    try:
        inner, outer = inner.resolve(), outer.resolve()
    except OSError:
        return False
    return inner == outer or outer in inner.parents


def refuse_inputs(path: Path, inputs: Iterable[str | Path], *, folder: bool) -> None:
    """Refuse an output that is one of the command's inputs, replaces a file inside a folder input, or (a folder) holds an input.

    A new file may go inside a folder input (a results file beside the recordings); an existing one
    there may be an input itself, so it is never replaced, `--force` or not.
    """
    for item in inputs:
        if item is None or str(item) == "-":
            continue
        item = Path(item)
        if _same(path, item):
            raise AsdError("is one of this command's own inputs; refusing to write over it (choose another output)", path)
        if item.is_dir() and path.exists() and _within(path, item):
            raise AsdError(f"lies inside {item}, one of this command's inputs; refusing to write over it (choose "
                           "another output)", path)  # fmt: skip
        if folder and _within(item, path):
            raise AsdError(f"holds {item}, one of this command's inputs; choose another output folder", path)


def check_file(path: str | Path, kind: Kind, *, inputs: Iterable[str | Path] = (), force: bool = False) -> Path:
    """Return a file output after refusing, before any work, one it must not write (see the module docstring).

    An existing file is replaced only when `kind` recognises it as the command's own, or with
    `force`; one of `inputs` never. The place must be writable (see `asdtool.core.atomic.check_writable`).
    """
    from asdtool.core.atomic import check_writable

    path = Path(path)
    refuse_inputs(path, inputs, folder=False)
    if path.is_dir():
        raise AsdError("is a folder; give a file name for this output", path)
    if (path.exists() or path.is_symlink()) and not force and not kind(path):
        raise AsdError(f"exists and is not {kind.name} written by asdtool; refusing to replace it "
                       "(give --force to replace it, or choose another output)", path)  # fmt: skip
    return check_writable(path)


def check_folder(path: str | Path, entry: Kind, *, inputs: Iterable[str | Path] = ()) -> Path:
    """Return a folder output after refusing one that is not a folder, or holds entries `entry` does not recognise.

    Hidden leftovers of asdtool's own atomic writes and DVC's .gitignore count as the command's own.
    """
    from asdtool.core.atomic import check_writable

    path = Path(path)
    refuse_inputs(path, inputs, folder=True)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise AsdError("exists and is not a folder; refusing to replace it (choose another output)", path)
        strangers = sorted(p.name for p in path.iterdir()
                           if p.name not in _VCS_FILES and not p.name.startswith(TMP_PREFIX) and not entry(p))  # fmt: skip
        if strangers:
            raise AsdError(f"holds {few(strangers, 1)}, which this command did not write ({entry.name} written by "
                           "asdtool goes there); refusing to replace the folder (choose another output)", path)  # fmt: skip
    return check_writable(path)


def check_into(path: str | Path, *, inputs: Iterable[str | Path] = ()) -> Path:
    """Return a folder that a command adds entries to (each checked by the command itself), after refusing a file or an input."""
    from asdtool.core.atomic import check_writable

    path = Path(path)
    refuse_inputs(path, inputs, folder=True)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise AsdError("exists and is not a folder; refusing to replace it (choose another output)", path)
    return check_writable(path)


def files_of(folder: str | Path) -> list[Path]:
    """Return the files directly in a (small) input folder, such as a model folder, for `inputs`."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]


# ----------------------------------------------------------------------------- the kinds of outputs


BUNDLE = Kind("a detector bundle", bundle_file)
PNG = Kind("a plot", png_of_ours)
EMBEDDING_STORE = Kind("an embedding store", hdf5_store)
SCORE_STORE = Kind("a score store", hdf5_store)
SCORE_LINES = Kind("an anomaly score file", score_lines)
DECISION_LINES = Kind("a decision file", lambda p: score_lines(p, "decision"))
METRICS_JSON = Kind("a metrics file", json_with_keys("official_score", "arithmetic_mean"))
SEARCH_JSON = Kind("a weight-search result", json_with_keys("models", "best", "top"))
DRIFT_JSON = Kind("a drift report", json_with_keys("log", "content_sha256", "rule", "sections"))
TORCH_CHECKPOINT = Kind("a checkpoint", torch_checkpoint)
ROC_CSV = Kind("a ROC curve", csv_with_header("fpr,tpr"))
TRAIN_LOG = Kind("a training log", lambda p: first_line(p).startswith("step,"))
RUN_SUMMARY = Kind("a run summary", json_with_keys("backbone", "steps", "total_params"))
PSEUDO_LABELS = Kind("a pseudo-label file", csv_with_header("file_name,machine,pseudo_label"))
PSEUDO_SUMMARY = Kind("a pseudo-label summary", json_with_keys("labels", "plots"))
SCORE_RESULTS_CSV = Kind("a score table", csv_with_header("file,machine,section,score,threshold,decision"))


def _score_results_json(path: Path) -> bool:
    doc = json_document(path)
    keys = {"file", "machine", "section", "score", "threshold", "decision"}
    return isinstance(doc, list) and all(isinstance(r, dict) and keys <= set(r) for r in doc)


SCORE_RESULTS_JSON = Kind("a score table", _score_results_json)
MODEL_FOLDER_ENTRY = any_of(TORCH_CHECKPOINT, TRAIN_LOG, RUN_SUMMARY)  # finetune and pretrain --out


# ----------------------------------------------------------------------------- text for spreadsheets

# A CSV cell starting with one of these is a formula to a spreadsheet program: file names and other
# text we write into CSV files meant for spreadsheets get a leading apostrophe (which such programs
# take as "text"), and readers of those files take it off again.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """Return `text` safe in a CSV cell a spreadsheet opens: an apostrophe before a formula's first character.

    Text that already starts with apostrophes before such a character gets one more, so that
    `from_spreadsheet_text` gives back exactly what was written. A lone "-" (standard input's name)
    is no formula and stays as it is.
    """
    return "'" + text if text != "-" and text.lstrip("'").startswith(FORMULA_STARTS) else text


def from_spreadsheet_text(text: str) -> str:
    """Return the text `spreadsheet_text` was given."""
    return text[1:] if text.startswith("'") and text.lstrip("'").startswith(FORMULA_STARTS) and text != "'-" else text
