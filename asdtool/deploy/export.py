"""Exporting a detector bundle: the detector of a model or of a system, fitted and written as one file (`asdtool export`).

`export_bundle` takes each member's model folder (or `frozen`: the frozen model its embedding store
records) with its embedding store, merges any LoRA adapters into the weights (`merged_state`), runs
`detect` on the store with the bundle's detector settings and keeps each section's training
embeddings as its memory bank; a system (several members and one fusion weight each) also keeps each
member's test-clip score statistics per machine type, the z-normalisation `ensemble` used. Each
section's threshold is the gamma fit of its training clips' own (leave-one-out) scores, fused as the
bundle will fuse them. The document and the tensors are checked against `asdtool.deploy.schema`
before anything is written, so a bundle the loader would refuse is never written; the file's layout,
its content hash and its signature are `asdtool.deploy.bundle`'s.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from asdtool import __version__
from asdtool.core.errors import AsdError
from asdtool.detect.settings import DetectorSettings
from asdtool.deploy.bundle import (FORMAT, FORMAT_VERSION, FROZEN, META_KEY, QUANTIZE, SIGNATURE_KEY, bundle_signature,
                                   content_sha256, read_key)  # fmt: skip


@dataclass
class ExportResult:
    """What `export_bundle` wrote: the file, its members, their weights, each section's training clips and threshold, its size."""

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
    settings: DetectorSettings = DetectorSettings(), decision_quantile: float = 0.9,
    progress: Callable[[str], None] | None = None, quantize: str = "none",
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
    from asdtool.detect.knn import detect_store
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
    try:  # settings the format bounds tighter than the detector (a SMOTE ratio of 5000, say) fail before the fitting
        check_detector(settings.as_dict(), out)
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
        detection = detect_store(emb, settings)
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
            "detector": settings.as_dict(),
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
