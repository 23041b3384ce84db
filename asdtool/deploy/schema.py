"""The schema of a detector bundle: what its metadata document and its tensors must be before anything scores.

A bundle's content sha256 only says that the file is the one its writer wrote; a writer can still
have written nonsense (a NaN threshold, `k: 0`, a member without tensors), and such a bundle used to
score every clip `nan` in silence, or crash deep inside `load_bundle` with a `KeyError`. `check_meta`
validates the JSON document (types, ranges, finite numbers, the fields that must agree with each
other) and `check_tensors` the tensors the document promises (every member's weights and memory
banks); each refuses the first violation in one line naming the field, e.g.
`members[0].detector.k must be at least 1, got 0`.

The document's per-field types and ranges are a pydantic model (pydantic v2, pinned in
constraints.txt, which fastapi already depends on; it is imported here directly, so it is a direct
dependency in pyproject.toml): strict mode, so that `"1"` is not an integer, `true` is not a number
and `1.5` is not a k, and `allow_inf_nan=False`, so that NaN and infinity (which Python's JSON reader
accepts) are refused in every number. The rules that span fields (one member and no weights for a
model, one weight per member for a system, the same sections in thresholds and train_scores, a
system member's statistics for every machine type) are the model validators below. The validated
model is thrown away: the loader keeps the document itself, whose bytes the content hash covers.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from asdtool.config.checks import MAX_SEED
from asdtool.config.choices import Normalise, ViewChannel
from asdtool.core.errors import AsdError, quote
from asdtool.deploy.bundle import QUANTIZE

KINDS = ("model", "system")
EMBEDDINGS_DTYPE, DOMAIN_DTYPE = "float32", "int8"
DOMAINS = (0, 1)  # asdtool.detect.knn's SOURCE, TARGET

Finite = float  # every float below is finite: allow_inf_nan=False in the model config
Name = Annotated[str, Field(min_length=1)]
Scores = Annotated[list[Finite], Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")


class Detector(_Strict):
    """A member's detector settings: detect's k, SMOTE and normalisation."""

    k: int = Field(ge=1)
    smote_ratio: Finite = Field(ge=0, le=1000)  # SMOTE makes ratio x (source clips) rows at load: bounded
    smote_k: int = Field(ge=1)
    seed: int = Field(ge=0, le=MAX_SEED)
    normalise: Literal[Normalise.values()]
    density_k: int = Field(ge=1)


class MemberMeta(_Strict):
    """One member: its name, how to rebuild it, how it hears a clip, its detector and a system member's statistics."""

    name: Name
    build_args: dict[str, Any]
    seconds: Finite = Field(gt=0, le=600)  # a window; the longest clip of any DCASE year is 18 s
    channel: Literal[ViewChannel.values()]
    detector: Detector
    stats: dict[str, Annotated[list[Finite], Field(min_length=2, max_length=2)]]  # machine -> [mean, std]

    @model_validator(mode="after")
    def _positive_std(self):
        for machine, (_, std) in self.stats.items():
            if not std > 0:
                raise _Problem(f"stats{_key(machine)} must be [mean, std] with a positive std, got std {std!r}")
        return self


class BundleMeta(_Strict):
    """The metadata document `asdtool_bundle` (format version 1); `format` and `format_version` are checked before it."""

    asdtool_version: str
    kind: Literal[KINDS]
    members: Annotated[list[MemberMeta], Field(min_length=1)]
    weights: list[Annotated[Finite, Field(ge=0)]] | None
    decision_quantile: Finite = Field(gt=0, lt=1)
    quantize: Literal[QUANTIZE]
    thresholds: Annotated[dict[str, Annotated[dict[str, Finite], Field(min_length=1)]], Field(min_length=1)]
    train_scores: dict[str, dict[str, Scores]]
    content_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

    @model_validator(mode="after")
    def _consistent(self):
        for machine, sections in self.thresholds.items():
            if "/" in machine or not machine.strip():
                raise _Problem(f"thresholds has the machine type {quote(machine)}: a name must be non-empty, without '/'")
            for section in sections:
                if "/" in section or not section.strip():
                    raise _Problem(f"thresholds{_key(machine)} has the section {quote(section)}: a name must be "
                                   "non-empty, without '/'")  # fmt: skip
                if section not in self.train_scores.get(machine, {}):
                    raise _Problem(f"train_scores{_key(machine)} has no section {quote(section)} (thresholds has it)")
        for machine, sections in self.train_scores.items():
            for section in sections:
                if section not in self.thresholds.get(machine, {}):
                    raise _Problem(f"train_scores{_key(machine)}{_key(section)} has no threshold (thresholds has no such section)")
        n = len(self.members)
        if self.kind == "model":
            if n != 1:
                raise _Problem(f"kind is 'model', which has one member, but members holds {n}")
            if self.weights is not None:
                raise _Problem(f"weights must be null for kind 'model', got {quote(self.weights)}")
        else:
            if self.weights is None:
                raise _Problem("weights must hold one weight per member for kind 'system', got null")
            if len(self.weights) != n:
                raise _Problem(f"weights must hold one weight per member ({n}), got {len(self.weights)}")
            if not sum(self.weights) > 0:
                raise _Problem(f"weights must sum to a positive number, got {quote(self.weights)}")
            for i, member in enumerate(self.members):
                for machine in self.thresholds:
                    if machine not in member.stats:
                        raise _Problem(f"members[{i}].stats has no {quote(machine)}: a system member needs the mean and "
                                       "std of its scores per machine type")  # fmt: skip
        seconds = self.members[0].seconds
        for i, member in enumerate(self.members[1:], 1):
            if member.seconds != seconds:
                raise _Problem(f"members[{i}].seconds is {member.seconds:g}, members[0].seconds {seconds:g}: the members "
                               "of a system share the clip length")  # fmt: skip
        return self


class _Problem(ValueError):
    """A rule across fields broken; its text is the whole problem (the field named in it)."""


def check_meta(meta: dict, path) -> None:
    """Refuse a bundle's metadata document that breaks the schema, in one line naming `path` and the field."""
    _validate(BundleMeta, meta, path, ())


def check_detector(settings: dict, path) -> None:
    """Refuse detector settings (a member's `detector`) that break the schema, the field named `detector.<name>`."""
    _validate(Detector, settings, path, ("detector",))


def _validate(model: type[BaseModel], doc, path, loc: tuple) -> None:
    try:
        model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise AsdError(_describe({**first, "loc": (*loc, *first["loc"])}), path) from None


def check_tensors(meta: dict, tensors: dict, path) -> None:
    """Refuse tensors that do not hold what the (checked) metadata promises: each member's weights and memory banks.

    Every member i has tensors `m<i>/model/...`, and for every section of `thresholds` a bank
    `m<i>/bank/<machine>/<section>/embeddings` (2-D float32, finite, at least one row, the same
    width in every section of the member) and `.../domain` (1-D int8 of 0 (source) and 1 (target),
    one per row); no tensor belongs to a member the metadata lacks. `tensors` maps a name to
    anything with `.dtype`, `.shape` and an array view (torch or numpy).
    """
    n = len(meta["members"])
    owners = {}
    for name in tensors:
        m = re.match(r"m(\d+)/(model|bank)/", name)
        if m is None or int(m[1]) >= n:
            raise AsdError(f"holds the tensor {quote(name)}, which belongs to no member (members holds {n})", path)
        owners.setdefault(int(m[1]), set()).add(m[2])
    for i in range(n):
        if "model" not in owners.get(i, ()):
            raise AsdError(f"members[{i}] has no weights: no tensor m{i}/model/...", path)
        width = None
        for machine, sections in meta["thresholds"].items():
            for section in sections:
                base = f"m{i}/bank/{machine}/{section}/"
                where = f"members[{i}]'s memory bank of {machine} section {section}"
                emb, dom = tensors.get(base + "embeddings"), tensors.get(base + "domain")
                if emb is None or dom is None:
                    missing = base + ("embeddings" if emb is None else "domain")
                    raise AsdError(f"members[{i}] has no memory bank of {machine} section {section} (no tensor {missing})", path)
                if _dtype(emb) != EMBEDDINGS_DTYPE or len(emb.shape) != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
                    raise AsdError(f"{where}: {base}embeddings must be 2-D {EMBEDDINGS_DTYPE} with at least one row, got "
                                   f"{_dtype(emb)} of shape {list(emb.shape)}", path)  # fmt: skip
                if _dtype(dom) != DOMAIN_DTYPE or len(dom.shape) != 1 or dom.shape[0] != emb.shape[0]:
                    raise AsdError(f"{where}: {base}domain must be 1-D {DOMAIN_DTYPE} with one entry per embedding "
                                   f"({emb.shape[0]}), got {_dtype(dom)} of shape {list(dom.shape)}", path)  # fmt: skip
                if width is not None and emb.shape[1] != width[0]:
                    raise AsdError(f"{where} has {emb.shape[1]} dimensions, that of {width[1]} {width[0]}", path)
                width = width or (emb.shape[1], f"{machine} section {section}")
                if not np.isfinite(np.asarray(emb)).all():
                    raise AsdError(f"{where}: {base}embeddings holds NaN or infinite values", path)
                if not np.isin(np.asarray(dom), DOMAINS).all():
                    raise AsdError(f"{where}: {base}domain must hold only 0 (source) and 1 (target)", path)


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    """Return a mapping key as part of a field's name: `.fan` for a plain key, `[' a.b']` for any other."""
    return f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{quote(key)}]"


def _field(loc: tuple) -> str:
    """Return the field a pydantic error location names, as `members[0].detector.k`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += _key(part) if out else (part if _PLAIN_KEY.fullmatch(part) else f"[{quote(part)}]")
    return out


def _bound(value) -> str:
    """Return a range's bound as written in the schema: 0, not the 0.0 pydantic makes of a float field's bound."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_TYPES = {"int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
          "dict_type": "a mapping (JSON object)", "list_type": "a list", "model_type": "a mapping (JSON object)"}  # fmt: skip


def _describe(err: dict) -> str:
    """Return one pydantic error as our one-line problem: the field, the rule, the value given."""
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    loc = tuple(err["loc"])
    if kind == "value_error" and isinstance(ctx.get("error"), _Problem):
        prefix = _field(loc)  # the model the rule belongs to: members[0] for a member's, nothing for the document's
        return f"{prefix}.{ctx['error']}" if prefix else str(ctx["error"])
    where = _field(loc)
    got = f", got {quote(given)}"
    if kind == "missing":
        parent = _field(loc[:-1])
        return f"{parent} has no {_field(loc[-1:])}" if parent else f"the metadata has no {where}"
    if kind in _TYPES:
        return f"{where} must be {_TYPES[kind]}{got}"
    if kind == "finite_number":
        return f"{where} must be a finite number{got}"
    if kind == "greater_than_equal":
        return f"{where} must be at least {_bound(ctx['ge'])}{got}"
    if kind == "greater_than":
        return f"{where} must be greater than {_bound(ctx['gt'])}{got}"
    if kind == "less_than_equal":
        return f"{where} must be at most {_bound(ctx['le'])}{got}"
    if kind == "less_than":
        return f"{where} must be less than {_bound(ctx['lt'])}{got}"
    if kind == "literal_error":
        return f"{where} must be {ctx['expected']}{got}"
    if kind == "too_short":
        return f"{where} must not be empty" if ctx.get("min_length") == 1 else (
            f"{where} must hold at least {ctx['min_length']} items, got {ctx.get('actual_length')}")
    if kind == "too_long":
        return f"{where} must hold at most {ctx['max_length']} items, got {ctx.get('actual_length')}"
    if kind == "string_too_short":
        return f"{where} must not be empty"
    if kind == "string_pattern_mismatch":
        return f"{where} must be a sha256 hex digest (64 characters 0-9a-f){got}"
    return f"{where}: {err['msg']}{got}"
