"""The detector bundle's format: what the file holds, its content hash and its signature.

A bundle is one safetensors file, written by `asdtool.deploy.export` and read by `asdtool.deploy.load`:
tensors `m<i>/model/<key>` are member i's weights (LoRA adapters merged into the backbone, so scoring
needs no pre-trained file and no peft), `m<i>/bank/<machine>/<section>/embeddings` (float32 [N, D]) and
`.../domain` (int8 [N]) the normal training embeddings its detector's memory bank is built from; the
metadata `asdtool_bundle` (`META_KEY`) is a JSON document with the format version, the asdtool
version, each member's architecture (`build_args`), clip length, channel and detector settings (k,
SMOTE, normalisation), the system's z-normalisation statistics and weights, the decision threshold of
every section (the gamma fit of the training clips' own scores, as `submit`) and those scores
(leave-one-out, what `asdtool drift` compares new scores with), the params of the fine-tuning runs,
the fingerprints of the checkpoints and clip lists, and `content_sha256`, a sha256 over the whole
content; the metadata `asdtool_signature` (`SIGNATURE_KEY`, only with `export --sign-key`) is
`hmac-sha256:<hex>`, the HMAC-SHA256 under the key file's bytes of `SIGNATURE_CONTEXT` + the content
sha256 hex digest, kept outside the document so that the content hash is the same signed or not.
This module holds the format's constants, the data classes of a loaded bundle and of a scored
recording, and the hash, key and signature functions that export and load share.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path

from asdtool.core.errors import AsdError
from asdtool.core.outputs import BUNDLE_FORMAT, BUNDLE_META_KEY

FORMAT = BUNDLE_FORMAT
FORMAT_VERSION = 1
META_KEY = BUNDLE_META_KEY
QUANTIZE = ("none", "int8")
FROZEN = "frozen"  # `--model frozen`: the frozen model an embedding store records; a frozen member's build_args key
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
        """Return the clip length its members hear, in seconds: the length of a window."""
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
        """Return the recording's one row of `asdtool score --out` and of the service's answer (no windows)."""
        return {"file": self.name, "machine": self.machine, "section": self.section, "score": self.score,
                "threshold": self.threshold, "decision": self.decision}  # fmt: skip


# ----------------------------------------------------------------------------- content hash and signature

# What each protects. The content sha256 (over the document less the hash, and every tensor's name,
# dtype, shape and bytes) catches accidents: a truncated, corrupted or half-copied file. It does not
# catch tampering: anyone can change a threshold, recompute the hash with `content_sha256` and rewrite
# the file, and without a key such a bundle loads. The signature catches tampering by anyone without
# the key: `load_bundle(verify_key=...)` (score and serve --verify-key) recomputes the content sha256
# from what the file holds and refuses a bundle whose signature is missing or does not match, so a
# change to any part of the metadata document or to any tensor is refused. It is a shared secret
# (HMAC), not a public-key signature: whoever holds the key file can sign, so it protects nothing once
# the key is stolen, and it does not say who signed. Keys are files read as bytes (a trailing newline
# is part of the key), 16 bytes to 1 MB.


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
