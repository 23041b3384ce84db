"""Tests for asdtool/models/backbones/foreign.py's read_checkpoint itself, beyond what test_beats.py and test_eat.py cover through the loaders."""

from __future__ import annotations

import collections
import io
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import pytest
import torch

from asdtool.core.errors import AsdError
from asdtool.models.backbones.foreign import TRAINING_STATE, read_checkpoint

REFUSED = "refuses to load class {!r} from the checkpoint (not a tensor or config)"
SYSTEM = f"{os.system.__module__}.system"  # posix.system


class _Payload:
    """Unpickles as os.system creating `marker`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _save(obj, path: Path, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])


# ----------------------------------------------------------------------------- plain data loads


@FORMATS
def test_a_plain_state_dict_loads_as_saved(tmp_path, legacy):
    g = torch.Generator().manual_seed(0)
    state = collections.OrderedDict(
        [("layer.weight", torch.randn(4, 3, generator=g)), ("layer.bias", torch.zeros(4)),
         ("steps", torch.tensor(7, dtype=torch.int64)), ("half", torch.ones(2, dtype=torch.float16))]
    )  # fmt: skip
    got = read_checkpoint(_save({"cfg": {"encoder_layers": 2, "name": "x", "lr": [1e-3, 0.5]}, "model": state},
                                tmp_path / "c.pt", legacy))  # fmt: skip
    assert got["cfg"] == {"encoder_layers": 2, "name": "x", "lr": [1e-3, 0.5]}
    assert type(got["model"]) is collections.OrderedDict and list(got["model"]) == list(state)
    for k, v in state.items():
        assert got["model"][k].dtype == v.dtype and torch.equal(got["model"][k], v)


@FORMATS
def test_builtin_containers_and_scalars_keep_their_types(tmp_path, legacy):
    obj = {"tuple": (1, "a", None), "set": {1, 2}, "frozen": frozenset({"x"}), "bytes": b"\x00\xff",
           "float": 0.25, "bool": True, "int": 2**40, "nested": [{"a": [1, (2.5,)]}], 3: "int key"}  # fmt: skip
    assert read_checkpoint(_save(obj, tmp_path / "c.pt", legacy)) == obj


@FORMATS
def test_a_top_level_list_or_tensor_is_returned_as_it_is(tmp_path, legacy):
    assert read_checkpoint(_save([1, 2, "three"], tmp_path / "l.pt", legacy)) == [1, 2, "three"]
    t = read_checkpoint(_save(torch.arange(5), tmp_path / "t.pt", legacy))
    assert torch.equal(t, torch.arange(5))


@FORMATS
def test_trainer_state_is_left_out_at_the_top_level_only(tmp_path, legacy):
    ckpt = {"model": {"w": torch.ones(1)}, **{k: {"x": 1} for k in TRAINING_STATE}, "extra": {"criterion": 3}}
    got = read_checkpoint(_save(ckpt, tmp_path / "c.pt", legacy))
    assert set(got) == {"model", "extra"} and got["extra"] == {"criterion": 3}  # a nested key of that name stays
    assert TRAINING_STATE == ("optimizer_history", "last_optimizer_state", "extra_state", "task_state", "criterion")


def test_a_plain_pickle_written_with_protocol_2_loads_through_the_legacy_path(tmp_path):
    """Protocol 2 names builtins as Python 2 did (__builtin__.set); those map to today's names."""
    buf = io.BytesIO()
    torch.save({"s": {1, 2}, "w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False, pickle_protocol=2)
    path = tmp_path / "p2.pt"
    path.write_bytes(buf.getvalue())
    got = read_checkpoint(path)
    assert got["s"] == {1, 2} and torch.equal(got["w"], torch.ones(2))


# ----------------------------------------------------------------------------- code is refused, never run


def test_the_payload_runs_under_plain_pickle(tmp_path):  # the control: the payload below is real
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()


@FORMATS
@pytest.mark.parametrize(
    "where",
    ["top", "value", "tuple", "set", "list", "key"],
)
def test_code_anywhere_in_a_checkpoint_is_refused_and_never_run(tmp_path, legacy, where):
    marker = tmp_path / "marker"
    p = _Payload(marker)
    obj = {"top": p, "value": {"model": {"w": torch.ones(1)}, "cfg": p}, "tuple": {"cfg": (1, p)},
           "set": {"cfg": {1, p}}, "list": [torch.zeros(1), [p]], "key": {p: 1}}[where]  # fmt: skip
    path = _save(obj, tmp_path / "hostile.pt", legacy)
    with pytest.raises(AsdError) as error:
        read_checkpoint(path)
    assert str(error.value) == f"{path}: {REFUSED.format(SYSTEM)}"
    assert not marker.exists()


def test_code_in_a_raw_pickle_file_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}))  # pickled without torch.save
    with pytest.raises(AsdError) as error:
        read_checkpoint(path)
    assert str(error.value) == f"{path}: {REFUSED.format(SYSTEM)}"
    assert not marker.exists()


def test_a_function_named_but_not_called_is_refused(tmp_path):
    path = _save({"model": {}, "hook": os.system}, tmp_path / "f.pt")
    with pytest.raises(AsdError) as error:
        read_checkpoint(path)
    assert str(error.value) == f"{path}: {REFUSED.format(SYSTEM)}"


# ----------------------------------------------------------------------------- what is not a checkpoint


def test_a_missing_file_or_a_folder_is_not_found(tmp_path):
    for path in (tmp_path / "absent.pt", tmp_path):
        with pytest.raises(AsdError) as error:
            read_checkpoint(path)
        assert str(error.value) == f"{path}: checkpoint file not found"


def test_a_plain_pickle_of_data_is_not_a_torch_file(tmp_path):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(AsdError, match=r"data\.pkl: not a checkpoint: cannot read it as a PyTorch file \(.+\)$"):
        read_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04 truncated"], ids=["empty", "text", "bad-zip"])
def test_other_bytes_are_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(AsdError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a checkpoint: ") and "\n" not in message and len(message) < 400 + len(str(path))


def test_a_zip_archive_that_torch_did_not_write_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "z.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not weights")
    with pytest.raises(AsdError, match=r"z\.pt: not a checkpoint: cannot read it as a PyTorch file"):
        read_checkpoint(path)


# ----------------------------------------------------------------------------- found while testing


def test_a_self_referencing_container_in_a_zip_checkpoint_loads_or_is_refused_in_one_line(tmp_path):
    ckpt = {"model": {"w": torch.ones(2)}}
    ckpt["cfg"] = ckpt  # pickle keeps the cycle; the legacy path reads it fine
    path = _save(ckpt, tmp_path / "cycle.pt")
    try:
        got = read_checkpoint(path)
    except AsdError:
        return
    assert torch.equal(got["model"]["w"], torch.ones(2))


def test_a_self_referencing_container_in_a_legacy_checkpoint_loads(tmp_path):
    ckpt = {"model": {"w": torch.ones(2)}}
    ckpt["cfg"] = ckpt
    got = read_checkpoint(_save(ckpt, tmp_path / "cycle.pt", legacy=True))
    assert torch.equal(got["model"]["w"], torch.ones(2)) and got["cfg"]["cfg"] is got["cfg"]


def test_tensors_in_tuples_do_not_depend_on_the_file(tmp_path):
    path = _save({"pair": (torch.arange(4.0), torch.ones(2)), "w": torch.arange(3.0)}, tmp_path / "t.pt")
    got = read_checkpoint(path)
    path.write_bytes(bytes(path.stat().st_size))  # the same size, all zeros
    assert torch.equal(got["w"], torch.arange(3.0))  # a dict value: copied
    assert torch.equal(got["pair"][0], torch.arange(4.0)) and torch.equal(got["pair"][1], torch.ones(2))
