"""Detector bundles: one file holding everything that scores a new recording, and scoring with it.

`asdtool export` fits the detector of a model (or of a system: several models and their fusion
weights) on the normal training embeddings of every machine type and section, and writes one
safetensors file:

- tensors `m<i>/model/<key>`: member i's classifier weights (LoRA adapters merged into the
  backbone, so the bundle needs no pre-trained file and no peft at scoring time);
- tensors `m<i>/bank/<machine>/<section>/embeddings` (float32 [N, D]) and `.../domain` (int8 [N]):
  the training embeddings the detector's memory bank is built from;
- metadata `asdtool_bundle`: a JSON document with the format version, the asdtool version, each
  member's architecture (`build_args`), clip length, channel and detector settings (k, SMOTE,
  normalisation), the system's z-normalisation statistics and weights, the decision threshold of
  every section (the gamma fit of the training clips' own scores, as `submit`) and those scores
  (leave-one-out, what `asdtool drift` compares new scores with), the params of the
  fine-tuning runs and the fingerprints of the checkpoints and clip lists, and a sha256 over the
  whole content, which `load_bundle` checks;
- metadata `asdtool_signature` (only with `export --sign-key`): `hmac-sha256:<hex>`, the HMAC-SHA256
  under the key file's bytes of `SIGNATURE_CONTEXT` + the content sha256 hex digest. It sits outside
  the `asdtool_bundle` document, so the content hash is the same signed or not.

What each protects. The content sha256 (over the document less the hash, and every tensor's name,
dtype, shape and bytes) catches accidents: a truncated, corrupted or half-copied file. It does not
catch tampering: anyone can change a threshold, recompute the hash with `content_sha256` and
rewrite the file, and without a key such a bundle loads. The signature catches tampering by anyone
without the key: `load_bundle(verify_key=...)` (score and serve --verify-key) recomputes the content
sha256 from what the file holds and refuses a bundle whose signature is missing or does not match,
so a change to any part of the metadata document or to any tensor is refused. It is a shared
secret (HMAC), not a public-key signature: whoever holds the key file can sign, so it protects
nothing once the key is stolen, and it does not say who signed. Keys are files read as bytes
(a trailing newline is part of the key), 16 bytes to 1 MB.

At load, after the hash (and the signature) is checked, the document and the tensors are validated
against `asdtool.deploy.schema` (types, ranges, finite numbers, every member's weights and memory
banks), so a bundle with a NaN threshold or `k: 0` is refused in one line instead of scoring `nan`.

Loading uses safetensors and JSON only (no pickle): a bundle cannot run code. The memory banks are
refitted at load exactly as `detect` fits them (SMOTE is seeded), so a clip scored through a
bundle gets the score `detect` gave it.

A system's score is sum_i w_i (s_i - mean_i) / std_i over its members, with each member's mean and
std of the test-clip scores per machine type that `ensemble` used when the bundle was exported.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from asdtool import __version__
from asdtool.core.errors import AsdError, quote
from asdtool.core.outputs import BUNDLE_FORMAT, BUNDLE_META_KEY

FORMAT = BUNDLE_FORMAT
FORMAT_VERSION = 1
META_KEY = BUNDLE_META_KEY
SUFFIX = ".asd"
AGGREGATES = ("max", "mean")
QUANTIZE = ("none", "int8")
SIGNATURE_KEY = "asdtool_signature"  # safetensors metadata key of the HMAC, beside META_KEY
SIGNATURE_ALGORITHM = "hmac-sha256"
SIGNATURE_CONTEXT = b"asdtool detector bundle v1\n"  # keeps a bundle's HMAC apart from anything else the key signs
KEY_MIN_BYTES = 16
KEY_MAX_BYTES = 1_000_000


# ----------------------------------------------------------------------------- what a bundle holds


@dataclass
class Member:
    """One model of a bundle: its embedder, how it hears a clip, and its fitted detectors."""

    name: str
    model: object  # torch module with .embed(wave [B, T]) -> [B, E]
    seconds: float
    channel: str
    detector: dict  # k, smote_ratio, smote_k, seed, normalise, density_k
    stats: dict[str, tuple[float, float]]  # machine -> (mean, std) of a system member; {} for a single model
    banks: dict[tuple[str, str], object] = field(default_factory=dict)  # (machine, section) -> detect.FittedSection


@dataclass
class Bundle:
    """A loaded detector: members, fusion weights (None: one model, raw scores) and section thresholds."""

    path: Path
    meta: dict
    members: list[Member]
    weights: list[float] | None
    thresholds: dict[tuple[str, str], float]
    device: object = None

    @property
    def seconds(self) -> float:
        return self.members[0].seconds

    @property
    def machines(self) -> dict[str, list[str]]:
        """Return {machine type: its sections}."""
        out: dict[str, list[str]] = {}
        for machine, section in self.thresholds:
            out.setdefault(machine, []).append(section)
        return {m: sorted(s) for m, s in sorted(out.items(), key=lambda kv: kv[0].lower())}


@dataclass
class RecordingScore:
    """The score of one recording: per window and aggregated, with the section's threshold."""

    name: str
    machine: str
    section: str
    window_starts: list[float]  # seconds
    window_scores: list[float]
    score: float
    threshold: float

    @property
    def decision(self) -> int:
        """1 when anomalous: the score exceeds the threshold (the organisers' rule)."""
        return int(self.score > self.threshold)

    def row(self) -> dict:
        return {"file": self.name, "machine": self.machine, "section": self.section, "score": self.score,
                "threshold": self.threshold, "decision": self.decision}  # fmt: skip


# ----------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    out: Path
    members: list[str]
    weights: list[float] | None
    sections: dict[tuple[str, str], tuple[int, float]]  # (machine, section) -> (training clips, threshold)
    bytes: int


def merged_state(model) -> tuple[dict, dict]:
    """Return (build_args without LoRA, state dict) of a classifier with any LoRA adapters merged into its backbone(s)."""
    import copy

    model = copy.deepcopy(model).cpu()
    branches = [model.beats, model.eat] if hasattr(model, "beats") else [model.branch]
    for branch in branches:
        if hasattr(branch.backbone, "merge_and_unload"):  # a peft wrapper: fold B @ A into the frozen weights
            branch.backbone = branch.backbone.merge_and_unload()
    args = dict(model.build_args)
    args["lora_rank"], args["lora_alpha"], args["lora_dropout"] = 0, None, 0.0
    return args, {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}  # tied weights as copies


FROZEN = "frozen"  # `--model frozen`: the frozen model an embedding store records


@dataclass
class MemberSource:
    """What export takes from one member: its name, weights, how to rebuild it, and how it hears a clip."""

    name: str
    build_args: dict  # classifier: build_classifier's arguments; frozen: {"frozen": {backbone, config, layer, pooling}}
    state: dict
    seconds: float
    channel: str
    fingerprint: str
    params: dict


def member_source(model: str | Path, emb, store_path: Path) -> MemberSource:
    """Return the member of a fine-tuned model folder, or of `frozen` (the frozen model the store records), checked against the store."""
    import dataclasses

    from asdtool.models.checkpoint import config_dict, load_finetuned

    if str(model) == FROZEN:
        from asdtool.models.frozen import load_frozen

        if not emb.meta.embedder:
            raise AsdError("--model frozen: this store records no frozen model (asdtool embed --backbone writes it)", store_path)
        how = json.loads(emb.meta.embedder)
        args = {k: how[k] for k in ("backbone", "pretrained", "size", "layer", "pooling", "seed")}
        embedder, fingerprint = load_frozen(**args)
        if fingerprint != emb.meta.checkpoint_sha256:
            raise AsdError(f"was embedded from another pre-trained file than {args['pretrained']} holds now", store_path)
        frozen = {"backbone": args["backbone"], "config": dataclasses.asdict(embedder.backbone.cfg), "layer": embedder.layer,
                  "pooling": embedder.pooling}  # fmt: skip
        state = {k: v.detach().clone().contiguous() for k, v in embedder.state_dict().items()}
        return MemberSource(emb.meta.model, {FROZEN: frozen}, state, float(how["seconds"]), how["channel"], fingerprint, args)
    trained = load_finetuned(model)
    if emb.meta.checkpoint_sha256 != trained.checkpoint_sha256:
        raise AsdError(f"was embedded with another checkpoint than {trained.path}", store_path)
    build_args, state = merged_state(trained.model)
    return MemberSource(emb.meta.model, build_args, state, float(trained.config.seconds), trained.config.channel,
                        trained.checkpoint_sha256, config_dict(trained.config))  # fmt: skip


def export_bundle(
    models: Sequence[str | Path], embeddings: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None,
    k: int = 1, smote_ratio: float = 1.0, smote_k: int = 5, seed: int = 0, normalise: str = "none", density_k: int = 2,
    decision_quantile: float = 0.9, progress: Callable[[str], None] | None = None, quantize: str = "none",
    force: bool = False, inputs: Sequence[str | Path] = (), sign_key: str | Path | None = None,
) -> ExportResult:  # fmt: skip
    """Write the detector bundle of one model (no `weights`) or of a system (one weight per model) to `out`.

    With `sign_key` (a key file) the bundle carries the HMAC-SHA256 of its content under that key,
    which `load_bundle(verify_key=...)` checks.
    """
    import torch
    from safetensors.torch import save_file

    from asdtool.core import outputs
    from asdtool.data import store as stores
    from asdtool.evaluate import metrics
    from asdtool.core.atomic import atomic_path
    from asdtool.deploy.schema import check_detector, check_meta, check_tensors
    from asdtool.detect.knn import check_normalisation, detect_store
    from asdtool.detect.ensemble import check_weights

    out = Path(out)
    if len(models) != len(embeddings) or not models:
        raise AsdError(f"give one --embeddings store per --model ({len(models)} models, {len(embeddings)} stores)")
    if weights is not None:
        w = check_weights(weights, len(models), of="--model members").tolist()
    elif len(models) > 1:
        raise AsdError("a system of several models needs one --weights per --model")
    else:
        w = None
    check_normalisation(normalise, density_k)
    settings = {"k": k, "smote_ratio": smote_ratio, "smote_k": smote_k, "seed": seed, "normalise": normalise,
                "density_k": density_k}  # fmt: skip
    try:  # before the fitting, which a library caller's k=2.0 would crash
        check_detector(settings, out)
    except AsdError as exc:
        raise AsdError(f"would be an invalid bundle: {exc.problem}", out) from None
    if quantize not in QUANTIZE:
        raise AsdError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if not 0.0 < decision_quantile < 1.0:
        raise AsdError(f"--decision-quantile must lie strictly between 0 and 1, got {decision_quantile}")
    signing_key = read_key(sign_key) if sign_key is not None else None  # before the fitting: a bad key file fails fast
    model_files = [f for m in models if str(m) != FROZEN for f in outputs.files_of(m)]
    outputs.check_file(out, outputs.BUNDLE, inputs=[*model_files, *embeddings, *inputs, sign_key], force=force)

    tensors: dict[str, object] = {}
    members_meta, scores_by_member, clips_of = [], [], None
    for i, (model_dir, store_path) in enumerate(zip(models, embeddings)):
        if progress:
            progress(f"member {i + 1}/{len(models)}: {Path(model_dir).name}")
        emb = stores.read_store(store_path, stores.EMBEDDINGS)
        source = member_source(model_dir, emb, Path(store_path))
        if clips_of is None:
            clips_of = (emb.meta.clips_sha256, Path(store_path))
        elif emb.meta.clips_sha256 != clips_of[0]:
            raise AsdError(f"holds other clips than {clips_of[1]}: the members of a system must embed the same data", store_path)
        if members_meta and source.seconds != members_meta[0]["seconds"]:
            raise AsdError(f"cuts clips to {source.seconds} s, the first member to {members_meta[0]['seconds']} s: "
                           "the members of a system must share the clip length", model_dir)  # fmt: skip
        detection = detect_store(emb, k=k, smote_ratio=smote_ratio, smote_k=smote_k, seed=seed, normalise=normalise,
                                 density_k=density_k)  # fmt: skip
        scores_by_member.append(detection)
        for key, value in source.state.items():
            tensors[f"m{i}/model/{key}"] = value
        for machine in emb.machines:
            train = emb.get(machine, "train")
            sections = np.array(train.sections)
            for section in sorted(set(sections.tolist())):
                rows = np.flatnonzero(sections == section)
                part = train.subset(rows)
                tensors[f"m{i}/bank/{machine}/{section}/embeddings"] = torch.from_numpy(np.ascontiguousarray(part.values, np.float32))
                tensors[f"m{i}/bank/{machine}/{section}/domain"] = torch.from_numpy(np.ascontiguousarray(part.domain, np.int8))
        stats = {}
        if w is not None:  # the system's z-normalisation: the test-clip statistics `ensemble` used
            for machine in emb.machines:
                test = detection.scores.get((machine, "test"))
                if test is None or not len(test):
                    raise AsdError(f"has no test clips of {machine}: a system's z-normalisation needs its test-clip scores",
                                   store_path)  # fmt: skip
                std = float(test.values.std())
                stats[machine] = [float(test.values.mean()), std if std > 0 else 1.0]
        members_meta.append({
            "name": source.name,
            "build_args": source.build_args,
            "seconds": float(source.seconds),
            "channel": source.channel,
            "detector": dict(settings),
            "stats": stats,
            "checkpoint_sha256": source.fingerprint,
            "clips_sha256": emb.meta.clips_sha256,
            "params": source.params,
        })  # fmt: skip

    # the score of every training clip (leave-one-out) as the bundle will score it, per section
    first = scores_by_member[0]
    machines = list(dict.fromkeys(m for m, _ in first.scores))
    thresholds: dict[str, dict[str, float]] = {}
    train_scores: dict[str, dict[str, list[float]]] = {}  # what drift compares new scores with
    sections_out: dict[tuple[str, str], tuple[int, float]] = {}
    for machine in machines:
        train = first.scores[(machine, "train")]
        if w is None:
            fused = train.values.astype(np.float64)
        else:  # as ensemble.fuse computes it, to the last bit: the gamma fit below is sensitive to that
            z = np.array([(det.scores[(machine, "train")].values - mm["stats"][machine][0]) / mm["stats"][machine][1]
                          for det, mm in zip(scores_by_member, members_meta)])  # fmt: skip
            fused = np.asarray(w, dtype=np.float64) @ z
        sections = np.array(train.sections)
        for section in sorted(set(sections.tolist())):
            part = fused[sections == section]
            try:
                thr = metrics.decision_threshold(part.tolist(), decision_quantile)
            except AsdError as exc:
                raise AsdError(f"{machine} section {section}: {exc.problem}", embeddings[0]) from None
            if not math.isfinite(thr):
                raise AsdError(f"{machine} section {section}: the gamma fit of the training scores gave no threshold", embeddings[0])
            thresholds.setdefault(machine, {})[section] = thr
            train_scores.setdefault(machine, {})[section] = [float(v) for v in part]
            sections_out[(machine, section)] = (len(part), thr)

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "asdtool_version": __version__,
        "kind": "model" if w is None else "system",
        "members": members_meta,
        "weights": w,
        "decision_quantile": decision_quantile,
        "quantize": quantize,
        "thresholds": thresholds,
        "train_scores": train_scores,
    }
    meta["content_sha256"] = content_sha256(meta, tensors)
    try:  # what load_bundle would refuse is never written (a library caller's k=2.0, say)
        check_meta(meta, out)
        check_tensors(meta, tensors, out)
    except AsdError as exc:
        raise AsdError(f"would be an invalid bundle: {exc.problem}", out) from None
    metadata = {META_KEY: json.dumps(meta, sort_keys=True)}
    if signing_key is not None:
        metadata[SIGNATURE_KEY] = bundle_signature(meta["content_sha256"], signing_key)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return ExportResult(out, [m["name"] for m in members_meta], w, sections_out, out.stat().st_size)


def content_sha256(meta: dict, tensors: dict) -> str:
    """Return the sha256 over the metadata (less this hash) and every tensor's name, dtype, shape and bytes."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "content_sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_key(path: str | Path) -> bytes:
    """Return the bytes of a signing key file (export --sign-key, score/serve --verify-key), 16 bytes to 1 MB."""
    path = Path(path)
    if not path.exists():
        raise AsdError("key file does not exist", path)
    if not path.is_file():
        raise AsdError("is not a key file (a folder or a device, not a regular file)", path)
    size = path.stat().st_size  # before reading: a key file is small, and a wrong path may be huge
    if size > KEY_MAX_BYTES:
        raise AsdError(f"key file holds {size} bytes, more than {KEY_MAX_BYTES // 1_000_000} MB: is it the right file?", path)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise AsdError(f"cannot read the key file ({exc.strerror or exc})", path) from None
    if not key:
        raise AsdError("key file is empty", path)
    if len(key) < KEY_MIN_BYTES:
        raise AsdError(f"key file holds {len(key)} bytes; a key needs at least {KEY_MIN_BYTES} "
                       "(e.g. head -c 32 /dev/urandom > FILE)", path)  # fmt: skip
    return key


def bundle_signature(digest: str, key: bytes) -> str:
    """Return the signature of a bundle whose content sha256 is `digest`: `hmac-sha256:<hex>` under `key`."""
    mac = hmac.new(key, SIGNATURE_CONTEXT + digest.encode("ascii"), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_ALGORITHM}:{mac}"


def check_signature(signature: str | None, digest: str, key: bytes, path: Path, key_path: str | Path) -> None:
    """Refuse a bundle whose signature is missing, or is not the HMAC under `key` of the content sha256 `digest`."""
    if signature is None:
        raise AsdError(f"is not signed; export it with --sign-key to score it with --verify-key {key_path}", path)
    if not hmac.compare_digest(signature.encode("utf-8", "replace"), bundle_signature(digest, key).encode("ascii")):
        raise AsdError(f"its signature does not match the key {key_path}; it was changed or signed with another key", path)


# ----------------------------------------------------------------------------- load


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
    without it a bundle anyone rewrote with a recomputed content hash loads (see the module docstring).
    """
    import torch
    from safetensors.torch import load_file

    from asdtool.deploy.schema import check_tensors
    from asdtool.detect.knn import fit_section
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
                d = m["detector"]
                try:
                    member.banks[(machine, section)] = fit_section(group, d["k"], d["smote_ratio"], d["smote_k"], d["seed"],
                                                                   d["normalise"], d["density_k"])  # fmt: skip
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


# ----------------------------------------------------------------------------- scoring


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Return the start samples of the windows of a recording: every `hop`, plus one ending at its end.

    A recording of at most one window is one window (zero-padded, as `embed` pads a short clip).
    """
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return starts


def _views(channel: str, channels: np.ndarray) -> tuple[str, ...]:
    """Return the single channels a member hears: its own, or both microphones of a stereo clip (`both`)."""
    if channel != "both":
        return (channel,)
    return ("left", "right") if channels.shape[0] == 2 else ("left",)


def score_recordings(
    bundle: Bundle, recordings: Iterable[tuple[Recording, np.ndarray]], hop: float | None = None, aggregate: str = "max",
    batch_size: int = 16, progress: Callable[[], None] | None = None,
) -> list[RecordingScore]:  # fmt: skip
    """Score recordings (each with its channels [C, T] at 16 kHz), window by window, batched across recordings.

    Windows of the bundle's clip length start every `hop` seconds (default: the clip length), plus
    one that ends at the recording's end; a recording of one clip length or less is one window,
    zero-padded. The windows of consecutive recordings share batches of `batch_size`, so clips
    given in a store's order embed in the batches `embed` used. `progress()` follows each recording read.
    """
    import torch

    from asdtool.data.audio import SAMPLE_RATE, fit_length, pick_channel
    from asdtool.detect.embed import _embed_batch

    if aggregate not in AGGREGATES:
        raise AsdError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if batch_size < 1:
        raise AsdError(f"batch size must be at least 1, got {batch_size}")
    window = int(round(bundle.seconds * SAMPLE_RATE))
    hop_n = window if hop is None else int(round(hop * SAMPLE_RATE))
    if hop_n < 1:
        raise AsdError(f"--hop {hop:g} s is shorter than one sample at {SAMPLE_RATE // 1000} kHz ({1 / SAMPLE_RATE:g} s)")
    autocast = bundle.device.type == "cuda"
    # per (member, view): windows waiting for a batch, and the embeddings made, with their recording index
    pending: dict[tuple[int, str], list[tuple[int, np.ndarray]]] = {}
    made: dict[tuple[int, str], list[tuple[int, np.ndarray]]] = {}

    def flush(key: tuple[int, str]) -> None:
        items = pending.pop(key, [])
        if not items:
            return
        waves = np.stack([w for _, w in items]).astype(np.float32)
        with torch.inference_mode():
            emb = _embed_batch(bundle.members[key[0]].model, waves, bundle.device, autocast)
        made.setdefault(key, []).extend((r, e) for (r, _), e in zip(items, emb))

    recs: list[Recording] = []
    starts_of: list[list[int]] = []
    views_of: list[list[tuple[str, ...]]] = []
    for index, (rec, channels) in enumerate(recordings):
        if (rec.machine, rec.section) not in bundle.thresholds:
            known = ", ".join(f"{m} ({', '.join(s)})" for m, s in bundle.machines.items())
            raise AsdError(f"the bundle has no detector for {rec.machine} section {rec.section} (it has: {known})", rec.name)
        starts = window_starts(channels.shape[-1], window, hop_n)
        recs.append(rec)
        starts_of.append(starts)
        views_of.append([])
        for m, member in enumerate(bundle.members):
            views = _views(member.channel, channels)
            views_of[-1].append(views)
            for view in views:
                wave = pick_channel(channels, view, rec.name)
                for s in starts:
                    pending.setdefault((m, view), []).append((index, fit_length(wave[s : s + window], window)))
                    if len(pending[(m, view)]) == batch_size:
                        flush((m, view))
        if progress:
            progress()
    for key in list(pending):
        flush(key)

    by_rec: dict[tuple[int, str], dict[int, list[np.ndarray]]] = {}
    for key, rows in made.items():
        for r, e in rows:
            by_rec.setdefault(key, {}).setdefault(r, []).append(e)
    results = []
    for index, rec in enumerate(recs):
        total, z = None, []
        for m, member in enumerate(bundle.members):
            views = views_of[index][m]
            emb = np.stack(by_rec[(m, views[0])][index])
            if len(views) == 2:  # both microphones: the mean of the two views' embeddings, as embed --channel both
                emb = (emb + np.stack(by_rec[(m, views[1])][index])) / 2
            raw, _ = member.banks[(rec.machine, rec.section)].score(emb)
            if bundle.weights is None:
                total = raw
            else:
                mean, std = member.stats[rec.machine]
                z.append((raw - mean) / std)
        if bundle.weights is not None:  # as ensemble.fuse: the weights times the members' z-scores
            total = np.asarray(bundle.weights, dtype=np.float64) @ np.array(z)
        scores = [float(v) for v in total]
        value = max(scores) if aggregate == "max" else float(np.mean(scores))
        results.append(RecordingScore(rec.name, rec.machine, rec.section, [s / SAMPLE_RATE for s in starts_of[index]],
                                      scores, value, bundle.thresholds[(rec.machine, rec.section)]))  # fmt: skip
    return results


# ----------------------------------------------------------------------------- inputs of `asdtool score`

AUDIO_SUFFIXES = (".wav", ".flac")
STDIN = "-"


@dataclass
class Recording:
    """One input of `asdtool score`: where its audio is, what to call it, and its machine type and section."""

    name: str
    path: Path
    machine: str
    section: str


def expand_paths(items: Sequence[str]) -> list[str | Path]:
    """Return the audio files that files, folders (every .wav/.flac below) and glob patterns name, in order, once each; `-` stays."""
    import glob

    out: dict[str | Path, None] = {}
    for item in items:
        if item == STDIN:
            out[STDIN] = None
            continue
        path = Path(item)
        if path.is_file():
            out[path] = None
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not found:
                raise AsdError("holds no .wav or .flac files", path)
            out.update(dict.fromkeys(found))
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise AsdError("matches no file", item)
            out.update(dict.fromkeys(found))
        else:
            raise AsdError("no such file or folder", path)
    return list(out)


def read_audio_bytes(data: bytes, name: str, max_seconds: float | None = None) -> np.ndarray:
    """Return the channels [C, T] of WAV/FLAC bytes (stdin, an upload), checked as a file is; errors name `name`.

    With `max_seconds`, a recording whose header declares more audio is refused before decoding
    (`asdtool.data.audio.TooLong`).
    """
    import os
    import tempfile

    from asdtool.data.audio import read_channels

    fd, tmp = tempfile.mkstemp(prefix="asdtool-audio-", suffix=".audio")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return read_channels(tmp, seconds=None, max_seconds=max_seconds)
    except AsdError as exc:
        raise type(exc)(exc.problem, name) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def recording_of(bundle: Bundle, path: Path, name: str, machine: str | None, section: str | None) -> Recording:
    """Return a recording with its machine type (given, or the nearest folder above it named as one of the bundle's) and section."""
    from asdtool.data.layouts import section_of

    known = bundle.machines
    if machine is None:
        machine = next((p.name for p in path.resolve().parents if p.name in known), None) if name != STDIN else None
        if machine is None and len(known) == 1:
            machine = next(iter(known))
    if machine is None:
        raise AsdError(f"cannot tell its machine type: no folder above it is one of the bundle's ({', '.join(known)}); "
                       "give --machine", name)  # fmt: skip
    if machine not in known:
        raise AsdError(f"the bundle has no machine type {machine!r} (it has {', '.join(known)})", name)
    if section is None:
        try:
            section = section_of(Path(name).name)
        except ValueError:
            if len(known[machine]) != 1:
                raise AsdError(f"cannot tell its section from its name; give --section (one of {', '.join(known[machine])})",
                               name) from None  # fmt: skip
            section = known[machine][0]
    if section not in known[machine]:
        raise AsdError(f"the bundle has no section {section} of {machine} (it has {', '.join(known[machine])})", name)
    return Recording(name, path, machine, section)


# ----------------------------------------------------------------------------- the score log (asdtool drift reads it)

LOG_SCORES = "scores.csv"
LOG_BUNDLE = "bundle.json"
LOG_DRIFT_PLOT = "drift.png"  # where asdtool drift draws by default
LOG_HEADER = ("time", "file", "machine", "section", "window", "start", "score", "threshold", "decision")


def _log_entry(path: Path) -> bool:
    """Return whether a log folder entry is one score/serve --log or drift writes there.

    scores.csv and bundle.json are taken by name here: `check_log` reads their content next, with
    its own messages. A plot must be asdtool's by content.
    """
    from asdtool.core import outputs

    if path.name in (LOG_SCORES, LOG_BUNDLE):
        return True
    if path.name == LOG_DRIFT_PLOT:
        return outputs.png_of_ours(path)
    return path.name.startswith(".")  # a lock file of the writers


def _log_kind():
    from asdtool.core.outputs import Kind

    return Kind("a score log", _log_entry)


def log_reference(bundle: Bundle) -> dict:
    """Return what a log folder records of its bundle: name, content hash, thresholds and training scores."""
    return {
        "bundle": str(bundle.path),
        "content_sha256": bundle.meta["content_sha256"],
        "kind": bundle.meta["kind"],
        "members": [m["name"] for m in bundle.meta["members"]],
        "thresholds": bundle.meta["thresholds"],
        "train_scores": bundle.meta["train_scores"],
    }


def check_log(folder: str | Path, bundle: Bundle) -> Path:
    """Return the log folder after refusing one that logs another bundle's scores or is not a log folder."""
    from asdtool.core import outputs

    folder = Path(folder)
    outputs.check_folder(folder, _log_kind())
    _check_log_reference(folder, bundle)
    scores = folder / LOG_SCORES
    if scores.exists():
        with open(scores, encoding="utf-8") as f:
            first = f.readline()  # empty: a writer created it and writes the header under its lock
            if first and first.rstrip("\r\n") != ",".join(LOG_HEADER):
                raise AsdError(f"is not a score log (its header is not {','.join(LOG_HEADER)})", scores)
    return folder


def _check_log_reference(folder: Path, bundle: Bundle) -> bool:
    """Refuse a log folder whose bundle.json records another bundle; return whether there is one."""
    from asdtool.core import safeparse

    ref = folder / LOG_BUNDLE
    if not ref.exists():
        return False
    doc = safeparse.read_json(ref, what="score log record")
    if not isinstance(doc, dict) or not isinstance(doc.get("content_sha256"), str):
        raise AsdError("is not a score log's bundle.json", ref)
    if doc["content_sha256"] != bundle.meta["content_sha256"]:
        raise AsdError("logs the scores of another bundle; give another --log folder", folder)
    return True


def append_log(folder: str | Path, bundle: Bundle, results: Sequence[RecordingScore], when: str) -> int:
    """Append one row per window of `results` (scored at `when`, ISO 8601 UTC) to the log; return the rows written.

    Under an exclusive lock of scores.csv the folder's bundle.json is checked, or written (atomically)
    when there is none yet, and the rows are appended in one write: concurrent writers (score
    commands, the service) never interleave inside a row, and two writers of different bundles
    starting the same fresh folder cannot both log there. Text cells (file, machine, section) are
    made safe for spreadsheets (`asdtool.core.outputs.spreadsheet_text`).
    """
    import csv
    import fcntl
    import io
    import os

    from asdtool.core.atomic import write_json
    from asdtool.core.outputs import spreadsheet_text

    folder = check_log(folder, bundle)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rows = 0
    for r in results:
        text = [spreadsheet_text(str(v)) for v in (r.name, r.machine, r.section)]
        for i, (start, score) in enumerate(zip(r.window_starts, r.window_scores)):
            writer.writerow([when, *text, i, f"{start:g}", repr(score), repr(r.threshold), int(score > r.threshold)])
            rows += 1
    path = folder / LOG_SCORES
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time: bundle.json checked or created, the header once, whole rows
        if not _check_log_reference(folder, bundle):
            write_json(folder / LOG_BUNDLE, log_reference(bundle))
        if os.fstat(fd).st_size == 0:
            os.write(fd, (",".join(LOG_HEADER) + "\n").encode())
        os.write(fd, buf.getvalue().encode("utf-8"))
    finally:
        os.close(fd)
    return rows


# ----------------------------------------------------------------------------- plots of long recordings


def plot_name(index: int, name: str) -> str:
    """Return the PNG file name of the `index`-th recording (its stem, made safe; the index keeps names apart)."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:80] or "stdin"
    return f"{index:04d}_{stem}.png"


def plot_recording(path: str | Path, result: RecordingScore, seconds: float) -> None:
    """Draw a recording's window scores over time (each at its window's centre) with the threshold, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    t = np.asarray(result.window_starts) + seconds / 2
    s = np.asarray(result.window_scores)
    ax.plot(t, s, color="0.3", linewidth=1)
    above = s > result.threshold
    ax.scatter(t[~above], s[~above], s=12, color="tab:blue", label="normal", zorder=3)
    ax.scatter(t[above], s[above], s=12, color="tab:red", label="anomalous", zorder=3)
    ax.axhline(result.threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {result.threshold:.3g}")
    ax.set_xlabel("time (s, window centre)")
    ax.set_ylabel("anomaly score")
    ax.set_title(f"{result.name}: {result.machine} section {result.section}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    from asdtool.core.outputs import PNG_METADATA

    fig.savefig(path, format="png", metadata=PNG_METADATA)
