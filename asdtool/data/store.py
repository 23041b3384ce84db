"""HDF5 stores: the embedding store (`embed` -> `detect`) and the score store (`detect` -> `ensemble`).

Layout (schema 1, see ARCHITECTURE.md):

    /                  attrs: schema (int), model, checkpoint_sha256, clips_sha256, asdtool_version
    /<machine>/<split>/embeddings   float32 [N, D]      (embedding store)
                       scores       float64 [N]         (score store, instead of embeddings)
                       file_names   utf-8 str [N]
                       domain       int8 [N]  0 source, 1 target, -1 unknown
                       label        int8 [N]  0 normal, 1 anomaly, -1 unknown
                       attributes   utf-8 str [N]  the raw attribute part of the name

A store is written to a temporary file beside its target and renamed only when complete, so a crash
never leaves a readable half store. `clips_sha256` fingerprints the clip list the store holds; a
reader compares it with the data root it is used with (`Store.check_clips`).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from asdtool import __version__
from asdtool.core.atomic import atomic_path
from asdtool.data import dcase
from asdtool.core.errors import AsdError

SCHEMA = 1
EMBEDDINGS = "embeddings"
SCORES = "scores"
KINDS = (EMBEDDINGS, SCORES)
ROOT_ATTRS = ("schema", "model", "checkpoint_sha256", "clips_sha256", "asdtool_version")
_STR = h5py.string_dtype("utf-8")
_VALUE_DTYPE = {EMBEDDINGS: np.float32, SCORES: np.float64}
_VALUE_NDIM = {EMBEDDINGS: 2, SCORES: 1}


# --- fingerprints -----------------------------------------------------------------------------


def clip_keys(clips: Iterable[dcase.Clip]) -> list[str]:
    """Return the sorted `machine/split/file_name` lines that identify a clip list."""
    return sorted(f"{c.machine}/{c.split}/{c.file_name}" for c in clips)


def keys_sha256(keys: Iterable[str]) -> str:
    """Return the sha256 of sorted `machine/split/file_name` lines (one per line, newline-terminated)."""
    h = hashlib.sha256()
    for key in sorted(keys):
        h.update(key.encode("utf-8") + b"\n")
    return h.hexdigest()


def clips_sha256(clips: Iterable[dcase.Clip]) -> str:
    """Return the fingerprint of a clip list: sha256 over its sorted `machine/split/file_name` lines."""
    return keys_sha256(clip_keys(clips))


# --- records ----------------------------------------------------------------------------------


@dataclass
class StoreMeta:
    """The root attributes of a store."""

    model: str
    checkpoint_sha256: str = ""
    clips_sha256: str = ""  # empty: the writer fills in the fingerprint of the clips it wrote
    asdtool_version: str = __version__
    schema: int = SCHEMA
    embedder: str = ""  # optional: JSON of how a frozen model embedded (asdtool.models.frozen settings), for export


@dataclass
class Group:
    """One `/<machine>/<split>/` group: per-clip records plus embeddings [N, D] or scores [N], in store order."""

    file_names: list[str]
    domain: np.ndarray  # int8 [N]
    label: np.ndarray  # int8 [N]
    attributes: list[str]
    values: np.ndarray  # float32 [N, D] embeddings or float64 [N] scores

    def __post_init__(self) -> None:
        self.file_names = [str(n) for n in self.file_names]
        self.attributes = [str(a) for a in self.attributes]
        self.domain = np.asarray(self.domain, dtype=np.int8).reshape(-1)
        self.label = np.asarray(self.label, dtype=np.int8).reshape(-1)
        self.values = np.asarray(self.values)

    def __len__(self) -> int:
        return len(self.file_names)

    @property
    def sections(self) -> list[str]:
        """The section (2020: machine ID) of each clip, read from its file name (every layout starts with it)."""
        from asdtool.data.layouts import section_of

        return [section_of(n) for n in self.file_names]

    def subset(self, index: np.ndarray) -> "Group":
        """Return the clips at `index` (in that order) with their values."""
        return Group([self.file_names[i] for i in index], self.domain[index], self.label[index],
                     [self.attributes[i] for i in index], self.values[index])  # fmt: skip

    @classmethod
    def from_clips(cls, clips: Sequence[dcase.Clip], values: np.ndarray) -> "Group":
        """Return the group of `clips` (in that order) with their embeddings or scores."""
        return cls(
            file_names=[c.file_name for c in clips],
            domain=np.array([c.domain_id for c in clips], dtype=np.int8),
            label=np.array([c.label for c in clips], dtype=np.int8),
            attributes=[c.attribute_string for c in clips],
            values=values,
        )

    def with_values(self, values: np.ndarray) -> "Group":
        """Return the same clips with other values (scores of these embeddings, say)."""
        return Group(list(self.file_names), self.domain.copy(), self.label.copy(), list(self.attributes), values)

    def problem(self, kind: str) -> str | None:
        """Return what is wrong with this group as a `kind` group, or None."""
        n = len(self.file_names)
        v = self.values
        if v.ndim != _VALUE_NDIM[kind]:
            want = "[N, D]" if kind == EMBEDDINGS else "[N]"
            return f"{kind} has shape {list(v.shape)}, expected {want}"
        lengths = {"file_names": n, "domain": len(self.domain), "label": len(self.label),
                   "attributes": len(self.attributes), kind: len(v)}
        if len(set(lengths.values())) != 1:
            return "datasets of inconsistent length (" + ", ".join(f"{k} {m}" for k, m in lengths.items()) + ")"
        if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
            return f"{kind} are not real numbers (dtype {v.dtype})"
        if v.size and not np.all(np.isfinite(v)):
            bad = np.flatnonzero(~np.isfinite(v.reshape(n, -1)).all(axis=1))
            return f"NaN or infinite {kind} for {len(bad)} clip(s), e.g. {self.file_names[bad[0]]}"
        if not set(np.unique(self.domain).tolist()) <= {-1, 0, 1}:
            return "domain holds codes other than 0 (source), 1 (target), -1 (unknown)"
        if not set(np.unique(self.label).tolist()) <= {-1, 0, 1}:
            return "label holds codes other than 0 (normal), 1 (anomaly), -1 (unknown)"
        if len(set(self.file_names)) != n:
            dup = sorted({x for x in self.file_names if self.file_names.count(x) > 1})
            return f"clip {dup[0]} is listed twice"
        return None


@dataclass
class Store:
    """A whole store in memory: root attributes and the groups in file order."""

    path: Path
    kind: str  # EMBEDDINGS or SCORES
    meta: StoreMeta
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)  # (machine, split) -> group

    @property
    def machines(self) -> list[str]:
        """Return the machine types of the groups, each once, in file order."""
        return list(dict.fromkeys(m for m, _ in self.groups))

    def get(self, machine: str, split: str) -> Group | None:
        """Return the group of one machine type and split, or None when the store has none."""
        return self.groups.get((machine, split))

    def content_sha256(self) -> str:
        """Return the fingerprint of the clips this store holds (what `clips_sha256` must say)."""
        return keys_sha256(f"{m}/{s}/{n}" for (m, s), g in self.groups.items() for n in g.file_names)

    def check_clips(self, expected_sha256: str, source: str | Path = "the data root") -> None:
        """Refuse a store built from another clip list than `source`, whose fingerprint is `expected_sha256`."""
        if self.meta.clips_sha256 != expected_sha256:
            raise AsdError(
                f"built from another clip list than {source} (store clips_sha256 {self.meta.clips_sha256[:12]}..., "
                f"{source} {expected_sha256[:12]}...); re-run the stage that wrote it",
                self.path,
            )


# --- writing ----------------------------------------------------------------------------------


class StoreWriter:
    """Write a store group by group; the file appears at `path` only when the `with` block succeeds.

        with StoreWriter(path, meta) as w:
            w.add("fan", "train", Group.from_clips(clips, embeddings))
    """

    def __init__(self, path: str | Path, meta: StoreMeta, kind: str = EMBEDDINGS):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = Path(path)
        self.meta = meta
        self.kind = kind
        self._keys: list[str] = []
        self._stack: contextlib.ExitStack | None = None
        self._file: h5py.File | None = None

    def __enter__(self) -> "StoreWriter":
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path))
            self._file = stack.enter_context(h5py.File(tmp, "w", track_order=True))
        except OSError as exc:
            stack.close()
            raise AsdError(f"cannot create store ({exc.__class__.__name__})", self.path) from None
        self._stack = stack
        return self

    def add(self, machine: str, split: str, group: Group) -> None:
        """Write one `/<machine>/<split>/` group (refusing NaN values and inconsistent lengths)."""
        if self._file is None:
            raise RuntimeError("StoreWriter.add outside its with block")
        if not machine or not split or "/" in machine + split or machine.startswith("."):
            raise AsdError(f"bad group name /{machine}/{split}", self.path)
        problem = group.problem(self.kind)
        if problem:
            raise AsdError(f"refusing to write /{machine}/{split}: {problem}", self.path)
        name = f"{machine}/{split}"
        if name in self._file:
            raise AsdError(f"group /{name} written twice", self.path)
        if machine not in self._file:  # groups keep the order they were written in
            self._file.create_group(machine, track_order=True)
        g = self._file[machine].create_group(split)
        g.create_dataset(self.kind, data=group.values.astype(_VALUE_DTYPE[self.kind], copy=False))
        g.create_dataset("file_names", data=group.file_names, dtype=_STR, shape=(len(group),))
        g.create_dataset("domain", data=group.domain.astype(np.int8))
        g.create_dataset("label", data=group.label.astype(np.int8))
        g.create_dataset("attributes", data=group.attributes, dtype=_STR, shape=(len(group),))
        self._keys += [f"{machine}/{split}/{n}" for n in group.file_names]

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._stack is not None and self._file is not None
        stack, f = self._stack, self._file
        self._stack = self._file = None
        if exc_type is not None:  # the temp file goes; nothing appears at the target
            return bool(stack.__exit__(exc_type, exc, tb))
        try:
            self._write_root_attrs(f)
        except BaseException as err:
            stack.__exit__(type(err), err, err.__traceback__)
            raise
        try:
            stack.__exit__(None, None, None)  # close, then rename onto the target
        except OSError as err:
            raise AsdError(f"cannot write store ({err.__class__.__name__}: {err.strerror or err})", self.path) from None
        return False

    def _write_root_attrs(self, f: h5py.File) -> None:
        content = keys_sha256(self._keys)
        if self.meta.clips_sha256 and self.meta.clips_sha256 != content:
            raise AsdError(
                "clips_sha256 given to the writer does not match the clips written "
                "(fingerprint exactly the clips you store: store.clips_sha256(clips))",
                self.path,
            )
        f.attrs["schema"] = np.int64(self.meta.schema)
        f.attrs["model"] = str(self.meta.model)
        f.attrs["checkpoint_sha256"] = str(self.meta.checkpoint_sha256)
        f.attrs["clips_sha256"] = self.meta.clips_sha256 or content
        f.attrs["asdtool_version"] = str(self.meta.asdtool_version)
        if self.meta.embedder:
            f.attrs["embedder"] = str(self.meta.embedder)


def write_store(path: str | Path, meta: StoreMeta, groups: Mapping[tuple[str, str], Group], kind: str) -> None:
    """Write a whole store atomically: {(machine, split): Group}."""
    with StoreWriter(path, meta, kind) as w:
        for (machine, split), group in groups.items():
            w.add(machine, split, group)


def write_embeddings(
    path: str | Path,
    meta: StoreMeta,
    groups: Mapping[tuple[str, str], tuple[Sequence[dcase.Clip], np.ndarray]],
) -> None:
    """Write an embedding store atomically: {(machine, split): (clips, embeddings [N, D])}."""
    write_store(path, meta, {key: Group.from_clips(clips, emb) for key, (clips, emb) in groups.items()}, EMBEDDINGS)


def write_scores(path: str | Path, meta: StoreMeta, groups: Mapping[tuple[str, str], Group]) -> None:
    """Write a score store (`scores.h5`) atomically: {(machine, split): Group with scores [N]}."""
    write_store(path, meta, groups, SCORES)


# --- reading ----------------------------------------------------------------------------------


def read_store(path: str | Path, kind: str | None = None) -> Store:
    """Return a whole store, checked: schema version, root attributes, dataset shapes, finite values.

    `kind` (EMBEDDINGS or SCORES) refuses the other kind of store; None accepts either.
    """
    path = Path(path)
    if not path.is_file():
        raise AsdError("store does not exist", path)
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise AsdError("is not an HDF5 file (not an asdtool store)", path) from None
    with f:
        missing = [a for a in ROOT_ATTRS if a not in f.attrs]
        if missing:
            raise AsdError(f"is not an asdtool store (root attribute {missing[0]} missing)", path)
        schema = f.attrs["schema"]
        if not isinstance(schema, (int, np.integer)) or int(schema) < 1:
            raise AsdError(f"is not an asdtool store (schema {schema!r} is not a positive integer)", path)
        if int(schema) > SCHEMA:
            raise AsdError(
                f"store schema {int(schema)} is newer than this asdtool reads ({SCHEMA}); upgrade asdtool or rewrite the store",
                path,
            )
        meta = StoreMeta(
            model=_attr_str(f, "model", path),
            checkpoint_sha256=_attr_str(f, "checkpoint_sha256", path),
            clips_sha256=_attr_str(f, "clips_sha256", path),
            asdtool_version=_attr_str(f, "asdtool_version", path),
            schema=int(schema),
            embedder=_attr_str(f, "embedder", path) if "embedder" in f.attrs else "",
        )
        groups: dict[tuple[str, str], Group] = {}
        kinds: set[str] = set()
        for machine, mgroup in f.items():
            if not isinstance(mgroup, h5py.Group):
                raise AsdError(f"/{machine} is not a machine group", path)
            for split, sgroup in mgroup.items():
                name = f"/{machine}/{split}"
                if not isinstance(sgroup, h5py.Group):
                    raise AsdError(f"{name} is not a split group", path)
                found = [k for k in KINDS if k in sgroup]
                if len(found) != 1:
                    raise AsdError(f"{name} holds {' and '.join(found) or 'neither embeddings nor scores'}", path)
                kinds.add(found[0])
                groups[(machine, split)] = _read_group(sgroup, found[0], name, path)
    if not groups:
        raise AsdError("store holds no /<machine>/<split> groups", path)
    if len(kinds) != 1:
        raise AsdError("store mixes embeddings and scores groups", path)
    found_kind = kinds.pop()
    if kind is not None and found_kind != kind:
        raise AsdError(f"is a {found_kind} store, expected a {kind} store", path)
    if found_kind == EMBEDDINGS:
        dims = {g.values.shape[1] for g in groups.values()}
        if len(dims) > 1:
            raise AsdError(f"embeddings of different sizes in one store ({sorted(dims)})", path)
    store = Store(path, found_kind, meta, groups)
    if meta.clips_sha256 != store.content_sha256():
        raise AsdError("clips_sha256 does not match the clips the store holds (edited or truncated store)", path)
    return store


def _attr_str(f: h5py.File, name: str, path: Path) -> str:
    value = f.attrs[name]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise AsdError(f"is not an asdtool store (root attribute {name} is not a string)", path)
    return value


def _read_group(g: h5py.Group, kind: str, name: str, path: Path) -> Group:
    for ds in ("file_names", "domain", "label", "attributes"):
        if ds not in g or not isinstance(g[ds], h5py.Dataset):
            raise AsdError(f"{name} has no {ds} dataset", path)
    for ds in ("file_names", "attributes"):
        if h5py.check_string_dtype(g[ds].dtype) is None:
            raise AsdError(f"{name}/{ds} is not a string dataset", path)
    for ds in ("domain", "label"):
        if not np.issubdtype(g[ds].dtype, np.integer):
            raise AsdError(f"{name}/{ds} is not an integer dataset", path)
    if not np.issubdtype(g[kind].dtype, np.floating):
        raise AsdError(f"{name}/{kind} is not a float dataset (dtype {g[kind].dtype})", path)
    group = Group(
        file_names=list(g["file_names"].asstr()[()]) if g["file_names"].shape else [],
        domain=g["domain"][()],
        label=g["label"][()],
        attributes=list(g["attributes"].asstr()[()]) if g["attributes"].shape else [],
        values=g[kind][()].astype(_VALUE_DTYPE[kind], copy=False),
    )
    problem = group.problem(kind)
    if problem:
        raise AsdError(f"{name}: {problem}", path)
    return group
