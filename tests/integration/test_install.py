"""The installed set is the tested one: torch and torchaudio load together, at the pinned versions."""

from __future__ import annotations

import re
from importlib.metadata import version
from tests import paths

ROOT = paths.ROOT


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {m[1].lower(): m[2] for line in lines if (m := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line.strip()))}


def test_torch_and_torchaudio_match_the_constraints_and_pyproject():
    pins = _pins()
    assert version("torch") == pins["torch"] and version("torchaudio") == pins["torchaudio"]
    project = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={pins["torch"]}"' in project and f'"torchaudio=={pins["torchaudio"]}"' in project
    assert pins["torch"].split("+")[0].rsplit(".", 1)[0] == pins["torchaudio"].split("+")[0].rsplit(".", 1)[0]


def test_torchaudio_compiled_part_loads_and_runs():
    import torch
    import torchaudio
    from torchaudio import _extension

    assert _extension._IS_TORCHAUDIO_EXT_AVAILABLE  # libtorchaudio loaded beside this torch
    x = torch.zeros(1, 64)
    x[0, 0] = 1.0
    y = torchaudio.functional.lfilter(x, torch.tensor([1.0, -0.5]), torch.tensor([1.0, 0.0]), clamp=False)  # compiled kernel
    assert torch.allclose(y[0, :4], torch.tensor([1.0, 0.5, 0.25, 0.125]))


def test_only_features_imports_torchaudio():
    users = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "asdtool").rglob("*.py")
                   if re.search(r"^\s*(import|from) torchaudio", p.read_text(), re.M))  # fmt: skip
    assert users == ["asdtool/models/features.py"]
