"""`asdtool.deploy.bundle`: the format's pieces export and load share: sections, a recording's row, content hash and signature.

Whole bundles signed and verified (export --sign-key, --verify-key) are tested in test_schema.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asdtool.core.errors import AsdError
from asdtool.deploy.bundle import Bundle, RecordingScore, bundle_signature, check_signature, content_sha256


def test_machine_types_sort_case_insensitively_with_their_sections():
    bundle = Bundle(Path("b.asd"), {}, [], None, {("valve", "01"): 1.0, ("Fan", "00"): 1.0, ("valve", "00"): 1.0,
                                                  ("bearing", "02"): 1.0})  # fmt: skip
    assert bundle.machines == {"bearing": ["02"], "Fan": ["00"], "valve": ["00", "01"]}
    assert list(bundle.machines) == ["bearing", "Fan", "valve"]


def test_a_recording_is_anomalous_only_above_its_threshold():
    at = RecordingScore("a.wav", "fan", "00", [0.0, 0.5], [0.2, 0.5], 0.5, 0.5)
    above = RecordingScore("a.wav", "fan", "00", [0.0], [0.6], 0.6, 0.5)
    assert at.decision == 0 and above.decision == 1
    assert above.row() == {"file": "a.wav", "machine": "fan", "section": "00", "score": 0.6, "threshold": 0.5, "decision": 1}


def test_the_content_hash_covers_the_document_and_every_tensor_and_the_signature_that_hash():
    meta = {"kind": "model", "thresholds": {"fan": {"00": 0.5}}}
    tensors = {"m0/model/w": torch.zeros(2, 3), "m0/bank/fan/00/domain": torch.zeros(4, dtype=torch.int8)}
    digest = content_sha256(meta, tensors)
    assert content_sha256({**meta, "content_sha256": "0" * 64}, tensors) == digest  # not itself
    one_bit = torch.zeros(2, 3)
    one_bit[1, 2] = 1e-45  # the smallest subnormal: one bit of the tensor's bytes
    for changed_meta, changed in (({**meta, "thresholds": {"fan": {"00": 0.6}}}, tensors),
                                  (meta, {**tensors, "m0/model/w": one_bit}),
                                  (meta, {**tensors, "m0/model/w": torch.zeros(3, 2)}),  # the same bytes, another shape
                                  (meta, {**tensors, "m0/model/w": torch.zeros(2, 3, dtype=torch.int32)})):  # fmt: skip
        assert content_sha256(changed_meta, changed) != digest
    key = b"0123456789abcdef"
    signature = bundle_signature(digest, key)
    assert signature.startswith("hmac-sha256:") and len(signature) == len("hmac-sha256:") + 64
    check_signature(signature, digest, key, Path("b.asd"), "k")
    with pytest.raises(AsdError, match="its signature does not match the key k"):
        check_signature(signature, content_sha256(meta, {}), key, Path("b.asd"), "k")
    with pytest.raises(AsdError, match="its signature does not match the key k"):
        check_signature(signature, digest, key + b"!", Path("b.asd"), "k")
