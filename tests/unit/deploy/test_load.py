"""`asdtool.deploy.load`: tampered, newer and foreign files are refused; an int8 bundle loads with quantised layers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asdtool.core.errors import AsdError
from asdtool.deploy.export import export_bundle
from asdtool.deploy.load import load_bundle, read_bundle_meta
from asdtool.deploy.scoring import score_recordings

from tests.unit.deploy.conftest import _test_recordings


def test_tampered_wrong_version_and_foreign_files_are_refused(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "b.asd"
    export_bundle([fitted["full"]], [fitted["base"] / "full.h5"], path)
    meta = read_bundle_meta(path)
    assert meta["format_version"] == 1 and meta["members"][0]["name"] == "full"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # a flipped bit in the tensor data
    tampered = tmp_path / "tampered.asd"
    tampered.write_bytes(bytes(raw))
    with pytest.raises(AsdError, match="modified since it was exported"):
        load_bundle(tampered)
    tensors = load_file(str(path))
    newer = tmp_path / "newer.asd"
    save_file(tensors, str(newer), metadata={"asdtool_bundle": json.dumps({**meta, "format_version": 99})})
    with pytest.raises(AsdError, match="is bundle format 99 .* reads format 1: export it again"):
        load_bundle(newer)
    plain = tmp_path / "plain.asd"
    save_file(tensors, str(plain))
    with pytest.raises(AsdError, match="not an asdtool detector bundle"):
        load_bundle(plain)
    junk = tmp_path / "junk.asd"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(AsdError, match="not an asdtool detector bundle"):
        load_bundle(junk)


def test_an_int8_bundle_scores_with_quantised_linear_layers_on_cpu(fitted, tmp_path):
    base = fitted["base"]
    plain, small = tmp_path / "f.asd", tmp_path / "q.asd"
    export_bundle([fitted["full"]], [base / "full.h5"], plain)
    export_bundle([fitted["full"]], [base / "full.h5"], small, quantize="int8")
    assert read_bundle_meta(small)["quantize"] == "int8" and read_bundle_meta(plain)["quantize"] == "none"
    q, f = load_bundle(small), load_bundle(plain)
    def dynamic_int8(model) -> int:
        return sum(type(m).__module__ == "torch.ao.nn.quantized.dynamic.modules.linear" for m in model.modules())

    assert dynamic_int8(q.members[0].model) > 10 and dynamic_int8(f.members[0].model) == 0
    recs = _test_recordings(f, fitted["data"], "fan")
    got = np.array([r.score for r in score_recordings(q, recs)])
    ref = np.array([r.score for r in score_recordings(f, recs)])
    assert np.all(np.isfinite(got)) and not np.array_equal(got, ref)
    assert np.corrcoef(got, ref)[0, 1] > 0.9  # raw cosine distances move little under int8 weights
    with pytest.raises(AsdError, match="--quantize must be one of none, int8"):
        export_bundle([fitted["full"]], [base / "full.h5"], tmp_path / "x.asd", quantize="int4")
