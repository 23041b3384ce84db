"""Loading a detector bundle safely: every check before anything scores, then its models rebuilt and its detectors fitted.

`read_bundle_meta` reads the header alone: the format, its version and the document's schema.
`load_bundle` then reads the tensors, checks the content sha256 and, with `verify_key`, the signature
(`asdtool.deploy.bundle` says what each protects), validates the tensors against
`asdtool.deploy.schema` (so a bundle with a NaN threshold or `k: 0` is refused in one line instead
of scoring `nan`), rebuilds each member's model from its `build_args` (optionally with int8 linear
layers, `quantize_int8`) and refits each section's memory bank exactly as `detect` fits it
(`detect.knn.fit_section`, SMOTE seeded), so a clip scored through a bundle gets the score `detect`
gave it. Only safetensors and JSON are read, never a pickle: a bundle cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from asdtool import __version__
from asdtool.core.errors import AsdError, quote
from asdtool.deploy.bundle import (FORMAT, FORMAT_VERSION, FROZEN, META_KEY, QUANTIZE, SIGNATURE_KEY, Bundle, Member,
                                   check_signature, content_sha256, read_key)  # fmt: skip


def read_bundle_meta(path: str | Path) -> dict:
    """Return the metadata of a bundle file after checking its format, version and schema (no tensors read)."""
    return _read_header(Path(path))[0]


def _read_header(path: Path) -> tuple[dict, str | None]:
    """Return (the checked metadata document, the signature or None) of a bundle file, from its header alone."""
    from safetensors import safe_open

    from asdtool.deploy.schema import check_meta

    if not path.is_file():
        raise AsdError("bundle file does not exist", path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise AsdError(f"is not an asdtool detector bundle (unreadable: {str(exc).splitlines()[0][:120]})", path) from None
    raw = header.get(META_KEY)
    if raw is None:
        raise AsdError("is not an asdtool detector bundle (a safetensors file without its metadata)", path)
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise AsdError("is not an asdtool detector bundle (its metadata is not JSON)", path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AsdError("is not an asdtool detector bundle", path)
    _check_format_version(meta, path)
    check_meta(meta, path)
    return meta, header.get(SIGNATURE_KEY)


def _check_format_version(meta: dict, path: Path) -> None:
    """Refuse a document whose format_version is not the integer this asdtool reads, saying what it is instead."""
    version = meta.get("format_version")
    if type(version) is int:  # bool is an int subclass: true is refused below
        if version != FORMAT_VERSION:
            made_by = meta.get("asdtool_version")
            made_by = made_by if isinstance(made_by, str) and len(made_by) <= 40 else quote(made_by)
            raise AsdError(f"is bundle format {version} (asdtool {made_by}); this asdtool {__version__} reads format "
                           f"{FORMAT_VERSION}: export it again", path)  # fmt: skip
        return
    if "format_version" not in meta:
        raise AsdError(f"has no format_version (this asdtool reads format {FORMAT_VERSION})", path)
    if isinstance(version, str):
        what = f"the string {quote(version)}"
    elif isinstance(version, bool) or version is None:
        what = {True: "true", False: "false", None: "null"}[version]
    elif isinstance(version, float):
        what = f"the number {quote(version)}"
    else:
        what = f"{quote(version)}, a {'list' if isinstance(version, list) else 'mapping'}"
    raise AsdError(f"format_version is {what}, not the integer {FORMAT_VERSION}", path)


def rebuild(build_args: dict):
    """Return a member's model at random init, ready for its weights: a classifier, or a frozen backbone's embedder."""
    if FROZEN in build_args:
        from asdtool.models.frozen import FrozenEmbedder
        from asdtool.models.backbones.registry import load_backbone

        f = build_args[FROZEN]
        return FrozenEmbedder(load_backbone(f["backbone"], None, size="tiny", **f["config"]), f["backbone"], f["layer"], f["pooling"])
    from asdtool.models.classifier import build_classifier

    return build_classifier(**build_args)


def load_bundle(path: str | Path, device: str = "cpu", quantize: str | None = None,
                verify_key: str | Path | None = None) -> Bundle:  # fmt: skip
    """Return a bundle ready to score: its content hash (and signature) checked, its schema validated, its models rebuilt, its detectors fitted.

    `quantize` overrides the bundle's own choice ("none" or "int8"; None: the bundle's). With
    `verify_key` (a key file of export --sign-key) a bundle not signed with that key is refused;
    without it a bundle anyone rewrote with a recomputed content hash loads (see `asdtool.deploy.bundle`).
    """
    import torch
    from safetensors.torch import load_file

    from asdtool.deploy.schema import check_tensors
    from asdtool.detect.knn import fit_section
    from asdtool.detect.settings import DetectorSettings
    from asdtool.models.device import resolve_device
    from asdtool.data.store import Group

    path = Path(path)
    if quantize is not None and quantize not in QUANTIZE:
        raise AsdError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quote(quantize)}")
    meta, signature = _read_header(path)
    key = read_key(verify_key) if verify_key is not None else None
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise AsdError(f"cannot read the bundle's tensors ({str(exc).splitlines()[0][:120]})", path) from None
    digest = content_sha256(meta, tensors)
    if digest != meta["content_sha256"]:
        raise AsdError("has been modified since it was exported (content sha256 mismatch)", path)
    if key is not None:
        check_signature(signature, digest, key, path, verify_key)
    check_tensors(meta, tensors, path)
    dev = resolve_device(device)
    members = []
    for i, m in enumerate(meta["members"]):
        prefix = f"m{i}/model/"
        torch.manual_seed(0)
        try:
            model = rebuild(m["build_args"])
        except AsdError as exc:
            raise AsdError(f"member {m['name']}: cannot rebuild its model ({exc.problem})", path) from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as exc:  # build_args is data
            detail = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise AsdError(f"member {m['name']}: cannot rebuild its model ({detail})", path) from None
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a tensor of the wrong shape
            detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "a tensor of the wrong shape")
            raise AsdError(f"member {m['name']}: weights do not fit its model ({detail[:200]})", path) from None
        if missing or unexpected:
            raise AsdError(f"member {m['name']}: weights do not fit its model ({len(missing)} missing, {len(unexpected)} unexpected)", path)
        model.to(dev).eval()
        if (quantize or meta.get("quantize", "none")) == "int8" and dev.type == "cpu":
            model = quantize_int8(model)
        member = Member(m["name"], model, float(m["seconds"]), m["channel"], m["detector"],
                        {k: tuple(v) for k, v in m["stats"].items()})  # fmt: skip
        for machine, sections in meta["thresholds"].items():
            for section in sections:
                base = f"m{i}/bank/{machine}/{section}/"  # present, shaped and typed: check_tensors
                values = tensors[base + "embeddings"].numpy()
                domain = tensors[base + "domain"].numpy()
                n = len(values)
                group = Group([f"section_{section}_{j:04d}.wav" for j in range(n)], domain, np.full(n, -1, np.int8), [""] * n, values)
                try:
                    member.banks[(machine, section)] = fit_section(group, DetectorSettings.from_dict(m["detector"]))
                except AsdError as exc:  # e.g. k larger than the bank
                    raise AsdError(f"member {m['name']}, {machine} section {section}: {exc.problem}", path) from None
        members.append(member)
    thresholds = {(mc, s): float(t) for mc, secs in meta["thresholds"].items() for s, t in secs.items()}
    return Bundle(path, meta, members, meta["weights"], thresholds, dev)


def quantize_int8(model):
    """Return the model with its linear layers quantised to int8 weights, activations quantised per batch (CPU)."""
    import warnings

    import torch
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
