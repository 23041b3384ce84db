"""Our own checkpoints: safe loading only, fingerprints of files and Hugging Face folders."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from asdtool.models import checkpoint
from asdtool.core.errors import AsdError


def test_file_sha256(tmp_path):
    p = tmp_path / "ckpt.pt"
    p.write_bytes(b"x" * 3_000_000)
    assert checkpoint.file_sha256(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    with pytest.raises(AsdError, match="cannot read"):
        checkpoint.file_sha256(tmp_path / "missing.pt")


def test_a_folder_is_fingerprinted_by_its_files(tmp_path):
    hf = tmp_path / "EAT-base"
    hf.mkdir()
    (hf / "config.json").write_text('{"a": 1}')
    (hf / "model.safetensors").write_bytes(b"weights")
    first = checkpoint.path_sha256(hf)
    assert len(first) == 64 and first != hashlib.sha256(b"").hexdigest()
    assert checkpoint.path_sha256(hf) == first  # deterministic
    (hf / "model.safetensors").write_bytes(b"other weights")
    assert checkpoint.path_sha256(hf) != first  # a changed weight file changes the fingerprint
    (hf / "model.safetensors").write_bytes(b"weights")
    assert checkpoint.path_sha256(hf) == first
    (hf / "config.json").rename(hf / "config2.json")
    assert checkpoint.path_sha256(hf) != first  # names count too


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = _Payload()
    evil.marker = str(marker)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "x": evil}, path)
    assert not marker.exists()
    with pytest.raises(AsdError, match="refused: the checkpoint holds Python objects"):
        checkpoint.read_checkpoint(path)
    assert not marker.exists()
    # the same file would run code under plain pickle loading: the test above is not vacuous
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"random bytes" * 100, b"PK\x03\x04 truncated zip"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(AsdError, match="not a checkpoint") as err:
        checkpoint.read_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_other_formats_and_versions_are_named(tmp_path):
    path = tmp_path / "m" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save({"cfg": {}, "model": {}}, path)
    with pytest.raises(AsdError, match="not an asdtool fine-tuning checkpoint"):
        checkpoint.read_checkpoint(path.parent)
    torch.save({"format": checkpoint.FORMAT, "version": 1}, path)
    with pytest.raises(AsdError, match="another asdtool checkpoint version"):
        checkpoint.read_checkpoint(path)


def test_rng_state_round_trips_as_plain_data(tmp_path):
    import random

    import numpy as np

    np.random.seed(3)
    random.seed(4)
    torch.manual_seed(5)
    state = checkpoint.rng_state()
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)  # no pickled numpy objects
    want = (np.random.rand(), random.random(), torch.rand(1).item())
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    checkpoint.set_rng_state(loaded)
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == want
    assert zipfile.is_zipfile(tmp_path / "s.pt") and pickle.HIGHEST_PROTOCOL >= 2
