"""The layer rule of docs/architecture.md, checked by import-linter's contract in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests import paths


def _lint(package_parent, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
        cwd=cwd, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_the_package_keeps_its_layers():
    r = _lint(paths.ROOT, paths.ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 kept, 0 broken" in r.stdout


def test_an_import_running_up_the_layers_breaks_the_contract(tmp_path):
    shutil.copytree(paths.ROOT / "asdtool", tmp_path / "asdtool", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(paths.ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "asdtool" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom asdtool.deploy import drift  # noqa\n")
    r = _lint(tmp_path, tmp_path)
    assert r.returncode == 1, r.stdout[-3000:]
    assert "0 kept, 1 broken" in r.stdout and "asdtool.core.errors -> asdtool.deploy.drift" in r.stdout
