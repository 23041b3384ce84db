"""Shared test helpers: a tiny hand-made DCASE layout.

The suite runs on two pytest-xdist workers (pyproject.toml); each worker, and every process it
starts (DVC stages, torchrun), uses one compute thread, so two workers share two cores instead of
oversubscribing them. Set before torch is first imported.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

from asdtool.data.dcase import format_name, write_attribute_csv  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


HANG_SECONDS = 3600  # only a hang trips this: a loaded machine may take many minutes, never an hour


def run_asdtool(*args, cwd: Path | None = None, stdin: bytes | str | None = None, text: bool = True,
                timeout: float = HANG_SECONDS) -> subprocess.CompletedProcess:  # fmt: skip
    """Run `python -m asdtool ARGS...` in a subprocess, as a user would (warnings silenced)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "asdtool", *map(str, args)], capture_output=True, text=text, env=env,
                          input=stdin, cwd=cwd, timeout=timeout)  # fmt: skip


def write_wave(path: Path, seconds: float = 0.25, sr: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    data = (0.1 * rng.standard_normal((n, channels) if channels > 1 else n)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype="PCM_16")
    return path


def flac_bomb(path: Path, seconds: float = 1200.0, declared: int | None = None) -> Path:
    """Write a FLAC of `seconds` of silence (20 minutes pack into ~59 kB); `declared` patches the header's total samples."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), np.float32), 16000, format="FLAC", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    if declared is not None:  # STREAMINFO's 36-bit total samples: the low 4 bits of its byte 13, then bytes 14-17
        body = 8  # after "fLaC" and the metadata block header
        data[body + 13] = (data[body + 13] & 0xF0) | ((declared >> 32) & 0xF)
        data[body + 14 : body + 18] = (declared & 0xFFFFFFFF).to_bytes(4, "big")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def make_machine(root: Path, machine: str, attrs: list[dict[str, str]] | None = None, n_train: int = 3,
                 n_test: int = 2, csv: bool = True) -> list[Path]:
    """Write a tiny machine folder: n_train clips per attribute set (source), 1 target train clip,
    n_test normal + n_test anomalous test clips per domain."""
    attrs = attrs if attrs is not None else [{}]
    rows, paths, seed = [], [], 0
    for domain in ("source", "target"):
        idx = 0
        for a in attrs if domain == "source" else attrs[:1]:
            for _ in range(n_train if domain == "source" else 1):
                name = format_name(domain, "train", 0, idx, a)
                paths.append(write_wave(root / machine / "train" / name, seed=seed))
                rows.append((f"{machine}/train/{name}", a))
                idx += 1
                seed += 1
        for label in (0, 1):
            for i in range(n_test):
                name = format_name(domain, "test", label, i, attrs[0])
                paths.append(write_wave(root / machine / "test" / name, seed=seed))
                rows.append((f"{machine}/test/{name}", attrs[0]))
                seed += 1
    if csv:
        write_attribute_csv(root / machine / "attributes_00.csv", rows)
    return paths


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    root = tmp_path / "dev"
    make_machine(root, "fan", [{"m-n": "W"}, {"m-n": "X"}])
    make_machine(root, "gearbox")
    return root


_REFERENCE_RUN = """
import json, warnings, torch
warnings.simplefilter("ignore")
from asdtool.models.backbones import {module}
model = {module}.load({ckpt!r})
io = torch.load({io!r}, weights_only=True)
errors = {{"fbank": (model.preprocess(io["wave"]) - io["fbank"]).abs().max().item()}}
with torch.no_grad():
    for sdpa in (True, False):
        errors[f"features_sdpa_{{sdpa}}"] = (model.set_sdpa(sdpa)(io["wave"]) - io["features"]).abs().max().item()
print(json.dumps(errors))
"""


def reference_errors_on_reproducible_fft(module: str, ckpt: Path, io: Path) -> dict[str, float]:
    """Return max-abs errors of fbank and wave->features against the official vectors, computed with
    MKL's conditional-reproducibility mode (the FFT path the reference vectors were made on).

    The mode must be set before MKL starts, hence a fresh interpreter."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    code = _REFERENCE_RUN.format(module=module, ckpt=str(ckpt), io=str(io))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pytest_collection_modifyitems(items):
    """Start the longest file first (the reduced DVC pipeline), so the other worker runs the rest meanwhile."""
    items.sort(key=lambda item: item.path.name != "test_pipeline.py")  # stable: the order within files stays
