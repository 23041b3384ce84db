"""Tests for asdtool/models/device.py: the torch device of --device and the torchrun process group (Dist)."""

from __future__ import annotations

import pytest
import torch

from asdtool.core.errors import AsdError
from asdtool.models import device as device_module
from asdtool.models.device import Dist, init_distributed, resolve_device

UNKNOWN = "use cpu, cuda, cuda:N or auto"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Say CUDA is there: resolve_device only names the device, it never touches it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def no_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


# ----------------------------------------------------------------------------- resolve_device


def test_cpu_is_the_cpu():
    got = resolve_device("cpu")
    assert got == torch.device("cpu") and got.type == "cpu" and got.index is None
    assert torch.zeros(1, device=got).device.type == "cpu"


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", Dist(rank=1, world=2, local_rank=1)) == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_device_is_refused_without_cuda(no_cuda, name):
    with pytest.raises(AsdError) as error:
        resolve_device(name)
    assert str(error.value) == f"--device {name} asked for, but no CUDA device is available"


@pytest.mark.parametrize("name", ["gpu", "CPU", "", "mps", "cpu:0", "Auto", " cpu"])
def test_an_unknown_device_is_refused(name):
    with pytest.raises(AsdError) as error:
        resolve_device(name)
    assert str(error.value) == f"unknown device {name!r}; {UNKNOWN}"


@pytest.mark.parametrize("name", ["cuda:x", "cudafoo", "cuda:-1:2"])
def test_a_malformed_cuda_name_is_refused_as_unknown(fake_cuda, name):
    with pytest.raises(AsdError, match=rf"^unknown device {name!r}; use cpu, cuda, cuda:N or auto$"):
        resolve_device(name)


def test_cuda_names_resolve_with_cuda(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")  # cpu stays cpu when a GPU is there


def test_under_torchrun_each_process_takes_its_local_gpu(fake_cuda):
    d = Dist(rank=5, world=8, local_rank=1)
    assert resolve_device("cuda", d) == torch.device("cuda", 1)
    assert resolve_device("auto", d) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", d) == torch.device("cuda", 0)  # a named GPU is kept as named
    assert resolve_device("cuda", Dist(local_rank=1)) == torch.device("cuda")  # one process: plain cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_picks_a_real_gpu():
    got = resolve_device("auto")
    assert got.type == "cuda"
    assert torch.ones(2, device=got).sum().item() == 2.0
    assert resolve_device(f"cuda:{torch.cuda.device_count() - 1}").index == torch.cuda.device_count() - 1


# ----------------------------------------------------------------------------- Dist and init_distributed


def test_a_plain_run_is_rank_0_of_1(no_torchrun, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("no process group for one process")

    monkeypatch.setattr(device_module.dist, "init_process_group", never)
    monkeypatch.setattr(device_module.dist, "barrier", never)
    for device in ("cpu", "cuda"):
        d = init_distributed(device)
        assert d == Dist(rank=0, world=1, local_rank=0, joined_here=False)
        assert d.main
        d.close()  # nothing to wait for


@pytest.mark.parametrize("world", ["1", "0"])
def test_a_world_of_one_is_a_plain_run(no_torchrun, monkeypatch, world):
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert init_distributed("cpu") == Dist()


def test_only_rank_0_is_the_main_process():
    assert Dist().main and Dist(rank=0, world=4).main
    assert not Dist(rank=1, world=4).main and not Dist(rank=3, world=4, local_rank=3).main


class _FakeGroup:
    """Stands in for torch.distributed: records what init_distributed and close ask of it."""

    def __init__(self, initialized: bool, rank: int, world: int):
        self.initialized, self.rank, self.world, self.calls = initialized, rank, world, []

    def install(self, monkeypatch):
        d = device_module.dist
        monkeypatch.setattr(d, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(d, "init_process_group", lambda backend: self.calls.append(("init", backend)))
        monkeypatch.setattr(d, "get_rank", lambda: self.rank)
        monkeypatch.setattr(d, "get_world_size", lambda: self.world)
        monkeypatch.setattr(d, "barrier", lambda: self.calls.append(("barrier",)))
        monkeypatch.setattr(d, "destroy_process_group", lambda: self.calls.append(("destroy",)))
        return self


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), ("cuda", "nccl"), ("cuda:1", "nccl")])
def test_torchrun_joins_the_group_with_the_devices_backend_and_leaves_it(no_torchrun, monkeypatch, device, backend):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    group = _FakeGroup(initialized=False, rank=2, world=4).install(monkeypatch)
    d = init_distributed(device)
    assert d == Dist(rank=2, world=4, local_rank=2, joined_here=True) and not d.main
    assert group.calls == [("init", backend)]
    d.close()
    assert group.calls == [("init", backend), ("barrier",), ("destroy",)]


def test_a_group_joined_by_the_caller_is_waited_on_but_not_left(no_torchrun, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # LOCAL_RANK unset: 0
    group = _FakeGroup(initialized=True, rank=1, world=2).install(monkeypatch)
    d = init_distributed("cpu")
    assert d == Dist(rank=1, world=2, local_rank=0, joined_here=False)
    assert group.calls == []
    d.close()
    assert group.calls == [("barrier",)]
