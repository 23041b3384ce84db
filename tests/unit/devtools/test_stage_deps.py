"""asdtool.devtools.stage_deps: import closures, and dvc.yaml code deps that match them (checked with DVC)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asdtool.devtools import stage_deps as sd
from tests import paths

from tests.conftest import HANG_SECONDS

ROOT = paths.ROOT
DVC = [sys.executable, "-m", "dvc"]
needs_dvc = pytest.mark.skipif(importlib.util.find_spec("dvc") is None, reason="dvc is not installed")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _names(paths) -> set[str]:
    return {Path(p).as_posix() for p in paths}


def _run(args, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONWARNINGS": "ignore", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_SECONDS)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


# ------------------------------------------------------------------------------------------------ import_closure


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    return _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/top.py": "import os\nimport pkg.plain\nfrom pkg import sub\nfrom pkg.attr import VALUE\n",
        "pkg/plain.py": "",
        "pkg/attr.py": "VALUE = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "",
        "pkg/lazy.py": "def f():\n    import pkg.late\n    return pkg.late\n\n\nclass A:\n    def m(self):\n"
                       "        from pkg.sub import leaf\n        return leaf\n",
        "pkg/late.py": "",
        "pkg/rel/__init__.py": "from . import one\n",
        "pkg/rel/one.py": "from .two import X\nfrom .. import plain\nfrom ..sub.leaf import *\n",
        "pkg/rel/two.py": "X = 2\n",
        "pkg/dyn.py": "import importlib\nfrom importlib import import_module\n\n\ndef f(name):\n"
                      "    importlib.import_module('pkg.late')\n    import_module('.two', 'pkg.rel')\n"
                      "    return importlib.import_module(f'pkg.{name}')\n",
        "pkg/typed.py": "from __future__ import annotations\nimport typing\nfrom typing import TYPE_CHECKING\n\n"
                        "if TYPE_CHECKING:\n    from pkg import late\nelse:\n    import pkg.plain\n"
                        "if typing.TYPE_CHECKING:\n    import pkg.attr\n",
        "pkg/cyc_a.py": "import pkg.cyc_b\n",
        "pkg/cyc_b.py": "def f():\n    from pkg import cyc_a\n",
        "pkg/stops.py": "import pkg.plain\n\n\ndef f():\n    from pkg.sub import leaf\n",
        "other/__init__.py": "",
    })  # fmt: skip


def test_module_level_imports_count_with_submodules_and_parent_packages(pkg):
    assert _names(sd.import_closure("pkg.top", pkg)) == {
        "pkg/__init__.py", "pkg/top.py", "pkg/plain.py", "pkg/attr.py", "pkg/sub/__init__.py"}  # fmt: skip


def test_a_submodule_counts_every_parent_init(pkg):
    assert _names(sd.import_closure("pkg.sub.leaf", pkg)) == {"pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py"}


def test_lazy_imports_inside_functions_and_methods_count(pkg):
    assert _names(sd.import_closure("pkg.lazy", pkg)) == {
        "pkg/__init__.py", "pkg/lazy.py", "pkg/late.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py"}  # fmt: skip


def test_relative_imports_resolve_against_the_package(pkg):
    assert _names(sd.import_closure("pkg.rel", pkg)) == {
        "pkg/__init__.py", "pkg/rel/__init__.py", "pkg/rel/one.py", "pkg/rel/two.py", "pkg/plain.py",
        "pkg/sub/__init__.py", "pkg/sub/leaf.py"}  # fmt: skip


def test_importlib_with_a_literal_counts_and_a_computed_name_does_not(pkg):
    assert _names(sd.import_closure("pkg.dyn", pkg)) == {
        "pkg/__init__.py", "pkg/dyn.py", "pkg/late.py", "pkg/rel/__init__.py", "pkg/rel/one.py", "pkg/rel/two.py",
        "pkg/plain.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py"}  # fmt: skip


def test_type_checking_blocks_are_left_out_but_their_else_is_not(pkg):
    assert _names(sd.import_closure("pkg.typed", pkg)) == {"pkg/__init__.py", "pkg/typed.py", "pkg/plain.py"}


def test_an_import_cycle_terminates(pkg):
    want = {"pkg/__init__.py", "pkg/cyc_a.py", "pkg/cyc_b.py"}
    assert _names(sd.import_closure("pkg.cyc_a", pkg)) == want
    assert _names(sd.import_closure("pkg.cyc_b", pkg)) == want


def test_stop_modules_are_neither_counted_nor_followed(pkg):
    assert _names(sd.import_closure("pkg.stops", pkg, stop={"pkg.sub.leaf"})) == {
        "pkg/__init__.py", "pkg/stops.py", "pkg/plain.py", "pkg/sub/__init__.py"}  # fmt: skip


def test_an_unknown_module_is_an_error(pkg):
    with pytest.raises(ValueError, match="no module"):
        sd.import_closure("pkg.nothing", pkg)


def test_closures_of_the_real_package_honour_the_backbone_exception():
    common = _names(sd.import_closure("asdtool.commands.embed", ROOT, stop=sd.backbone_modules(ROOT).values()))
    assert "asdtool/commands/embed.py" in common and "asdtool/models/__init__.py" in common
    assert not {"asdtool/models/backbones/beats.py", "asdtool/models/backbones/eat.py"} & common
    # read from the project's own table (asdtool/models/backbones/registry.py), not hard-coded in stage_deps
    assert sd.backbone_modules(ROOT) == {"beats": "asdtool.models.backbones.beats", "eat": "asdtool.models.backbones.eat"}


# ------------------------------------------------------------------------------------------------ a small project

PROJECT = {
    "pyproject.toml": '[project]\nname = "asdtool"\n\n[project.scripts]\nasdtool = "asdtool.cli:main"\n',
    "asdtool/__init__.py": "",
    "asdtool/__main__.py": "from asdtool.cli import main\n\nmain()\n",
    "asdtool/cli.py": "import importlib\n\nfrom asdtool import errors\n\n\ndef main(stage='show'):\n"
                      "    importlib.import_module(f'asdtool.commands.{stage}').run()\n",
    "asdtool/errors.py": "",
    "asdtool/unused.py": "",
    "asdtool/commands/__init__.py": "",
    "asdtool/commands/show.py": "from asdtool import errors\n\n\ndef run():\n    pass\n",
    "asdtool/commands/train.py": "from asdtool import models\n\n\ndef run():\n    from asdtool.models import heads\n",
    "asdtool/models/__init__.py": "import importlib\n\nBACKBONE_MODULES = {'beats': 'asdtool.models.beats', "
                                  "'eat': 'asdtool.models.eat'}\n\n\ndef load(name):\n"
                                  "    return importlib.import_module(BACKBONE_MODULES[name])\n",
    "asdtool/models/heads.py": "",
    "asdtool/models/beats.py": "from asdtool import errors\n",
    "asdtool/models/eat.py": "from asdtool import errors\n",
    "params.yaml": "models:\n  b1: {backbone: beats}\n  e1: {backbone: eat}\n  d: {backbone: dual}\n"
                   "  b1p: {backbone: beats}\n  e1p: {backbone: eat}\npl:\n  beats: {k: 1}\n  eat: {k: 2}\n",
    "dvc.yaml": """\
# a comment on top
stages:
  show:  # a plain stage
    cmd: asdtool show --x 1
    deps: [data.txt, asdtool/commands/show.py,
           asdtool/unused.py]
    outs: [out/show]

  train:
    foreach: [b1, e1, d]  # one per model
    do:
      cmd: asdtool train --model ${item} --out out/${item}
      deps:
        - data.txt
        - asdtool/models
      outs:
        - out/${item}

  pse:
    foreach:
      b1p: b1
      e1p: e1
    do:
      cmd: asdtool train --model ${key} --from labels/${item}.csv
      deps:
        - labels/${item}.csv
      outs:
        - out/${key}

  pl:
    foreach: ${pl}
    do:
      cmd: python -m asdtool train --model models/${key} ${item}
      outs:
        - out/pl-${key}
""",
}  # fmt: skip

COMMON = {"asdtool/__init__.py", "asdtool/cli.py", "asdtool/errors.py", "asdtool/commands/__init__.py"}
TRAIN = COMMON | {"asdtool/commands/train.py", "asdtool/models/__init__.py", "asdtool/models/heads.py"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return _tree(tmp_path, PROJECT)


def _check(proj: Path) -> list[str]:
    return sd.check(proj / "dvc.yaml", proj / "params.yaml", proj)


def test_stage_code_deps_per_stage(project):
    deps = sd.stage_code_deps(project / "dvc.yaml", project / "params.yaml", project)
    assert deps == {
        "show": COMMON | {"asdtool/commands/show.py"},
        "train@b1": TRAIN | {"asdtool/models/beats.py"},
        "train@e1": TRAIN | {"asdtool/models/eat.py"},
        "train@d": TRAIN | {"asdtool/models/beats.py", "asdtool/models/eat.py"},
        "pse@b1p": TRAIN | {"asdtool/models/beats.py"},
        "pse@e1p": TRAIN | {"asdtool/models/eat.py"},
        "pl@beats": TRAIN | {"asdtool/__main__.py", "asdtool/models/beats.py"},  # python -m asdtool
        "pl@eat": TRAIN | {"asdtool/__main__.py", "asdtool/models/eat.py"},
    }


def test_check_names_missing_extra_and_absent_code_deps(project):
    text = (project / "dvc.yaml").read_text().replace("asdtool/unused.py", "asdtool/gone.py")
    (project / "dvc.yaml").write_text(text.replace("- data.txt\n        - asdtool/models", "- data.txt\n        - asdtool/models\n        - asdtool/unused.py"))
    problems = _check(project)
    assert "show: missing asdtool/cli.py (imported by 'asdtool show')" in problems
    assert "show: code dep asdtool/gone.py does not exist" in problems
    assert "train@b1: extra asdtool/models (covers asdtool/models/eat.py) (not imported by 'asdtool train' with backbone beats)" in problems
    assert "train@e1: extra asdtool/unused.py (not imported by 'asdtool train' with backbone eat)" in problems
    assert "train@d: missing asdtool/models/beats.py (imported by 'asdtool train' with backbone beats+eat)" not in problems
    assert "pl@eat: missing asdtool/__main__.py (imported by 'asdtool train' with backbone eat)" in problems
    assert any(p.startswith(".dvcignore: folder deps (asdtool/models)") for p in problems)
    assert sd.main(["--check", "--dvc-yaml", str(project / "dvc.yaml")]) == 1


def test_write_renders_the_code_deps_and_keeps_the_rest(project):
    assert sd.write(project / "dvc.yaml", project / "params.yaml", project) is True
    text = (project / "dvc.yaml").read_text()
    assert text.startswith("# a comment on top\nstages:\n  show:  # a plain stage\n    cmd: asdtool show --x 1\n")
    assert """\
    deps:
      - data.txt
      - asdtool/__init__.py
      - asdtool/cli.py
      - asdtool/commands/__init__.py
      - asdtool/commands/show.py
      - asdtool/errors.py
    outs: [out/show]
""" in text
    assert """\
  train:
    foreach:  # one per model
      b1: {code: asdtool/models/beats.py}
      e1: {code: asdtool/models/eat.py}
      d: {code: asdtool/models}
    do:
      cmd: asdtool train --model ${key} --out out/${key}
      deps:
        - data.txt
        - asdtool/__init__.py
        - asdtool/cli.py
        - asdtool/commands/__init__.py
        - asdtool/commands/train.py
        - asdtool/errors.py
        - asdtool/models/__init__.py
        - asdtool/models/heads.py
        - ${item.code}
      outs:
        - out/${key}
""" in text
    assert "      b1p: {value: b1, code: asdtool/models/beats.py}\n      e1p: {value: e1, code: asdtool/models/eat.py}\n" in text
    assert "--from labels/${item.value}.csv" in text and "        - labels/${item.value}.csv\n" in text
    assert "    foreach: ${pl}\n" in text and "        - asdtool/__main__.py\n" in text
    assert text.endswith("        - out/pl-${key}\n      deps:\n        - asdtool/__init__.py\n        - asdtool/__main__.py\n"
                         "        - asdtool/cli.py\n        - asdtool/commands/__init__.py\n        - asdtool/commands/train.py\n"
                         "        - asdtool/errors.py\n        - asdtool/models/__init__.py\n        - asdtool/models/heads.py\n"
                         "        - asdtool/models/${key}.py\n")  # a stage without deps gets them at its end
    (project / ".dvcignore").write_text("__pycache__/\n")
    assert _check(project) == []


def test_write_is_idempotent(project):
    assert sd.write(project / "dvc.yaml") is True
    first = (project / "dvc.yaml").read_text()
    assert sd.write(project / "dvc.yaml") is False
    assert (project / "dvc.yaml").read_text() == first
    assert sd.main(["--write", "--dvc-yaml", str(project / "dvc.yaml")]) == 1  # unchanged, but no .dvcignore yet
    (project / ".dvcignore").write_text("__pycache__/\n")
    assert sd.main(["--write", "--dvc-yaml", str(project / "dvc.yaml")]) == 0
    assert (project / "dvc.yaml").read_text() == first


def test_write_follows_a_changed_import(project):
    sd.write(project / "dvc.yaml")
    (project / "asdtool/models/eat.py").write_text("from asdtool import unused\n")
    assert "train@e1: missing asdtool/unused.py (imported by 'asdtool train' with backbone eat)" in _check(project)
    with pytest.raises(sd.WriteError, match="its items' own code is not the same number of paths"):
        sd.write(project / "dvc.yaml")  # e1: eat.py + unused.py (two packages), b1: beats.py alone
    (project / "asdtool/models/eat.py").write_text("from asdtool.models import heads\n")
    assert sd.write(project / "dvc.yaml") is False  # heads was already common


# ------------------------------------------------------------------------------------------------ the repository


def _grouped(problems: list[str]) -> str:
    """One line per stage: `stage: missing a, b; extra c`; other problems as they are."""
    by_stage: dict[str, dict[str, list[str]]] = {}
    for p in problems:
        stage, _, rest = p.partition(": ")
        kind, _, what = rest.partition(" ")
        if kind in ("missing", "extra"):
            by_stage.setdefault(stage, {}).setdefault(kind, []).append(what.split(" (")[0])
        else:
            by_stage.setdefault(p, {})
    return "\n".join(f"{stage}: " + "; ".join(f"{kind} {', '.join(items)}" for kind, items in kinds.items())
                     if kinds else stage for stage, kinds in by_stage.items())


def test_the_repository_dvc_yaml_depends_on_exactly_the_code_each_stage_imports():
    problems = sd.check(ROOT / "dvc.yaml", ROOT / "params.yaml", ROOT)
    if problems:
        pytest.fail(
        "dvc.yaml code deps differ from what each stage's subcommand imports; run "
        "`python -m asdtool.devtools.stage_deps --write` (see --check for the reasons):\n" + _grouped(problems),
        pytrace=False)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A git + DVC copy of the repository's dvc.yaml, params.yaml and code, after `write`."""
    proj = tmp_path_factory.mktemp("stage_deps")
    shutil.copytree(ROOT / "asdtool", proj / "asdtool", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, proj / name)
    _run(["git", "init", "-q"], proj)
    _run(DVC + ["init", "-q"], proj)
    ignore = proj / ".dvcignore"
    if not sd._dvcignores_pycache(proj):
        ignore.write_text(ignore.read_text() + "\n__pycache__/\n" if ignore.exists() else "__pycache__/\n")
    sd.write(proj / "dvc.yaml", proj / "params.yaml", proj)
    return proj


@needs_dvc
def test_written_dvc_yaml_resolves_in_dvc_and_checks_clean(written):
    names = _run(DVC + ["stage", "list", "--name-only"], written).split()
    expected = sd.stage_code_deps(written / "dvc.yaml", written / "params.yaml", written)
    assert sorted(names) == sorted(expected)
    assert sd.check(written / "dvc.yaml", written / "params.yaml", written) == []
    # what DVC itself resolves as each stage's asdtool deps is what the checker read
    script = ("import json\nfrom dvc.repo import Repo\nprint(json.dumps({s.addressing: sorted(d.def_path for d in s.deps "
              "if d.def_path.startswith('asdtool')) for s in Repo('.').index.stages}))")  # fmt: skip
    resolved = json.loads(_run([sys.executable, "-c", script], written))
    infos = sd._analyse(written / "dvc.yaml", written / "params.yaml", written)
    assert resolved == {info.name: sorted(info.declared) for info in infos}
    for name, code in resolved.items():
        if "beats" in name:  # a beats-only stage never depends on the EAT code
            assert not {"asdtool/models/backbones/eat.py", "asdtool/models/backbones", "asdtool/models", "asdtool"} & set(code), name


@needs_dvc
def test_written_dvc_yaml_is_idempotent(written, tmp_path):
    shutil.copy(written / "dvc.yaml", tmp_path / "dvc.yaml")
    assert sd.write(tmp_path / "dvc.yaml", written / "params.yaml", written) is False
    assert (tmp_path / "dvc.yaml").read_text() == (written / "dvc.yaml").read_text()


@needs_dvc
def test_editing_eat_makes_only_the_eat_and_dual_model_stages_stale(written, tmp_path):
    """The written model stages, with trivial commands, reproduced; then asdtool/models/backbones/eat.py changes."""
    proj = tmp_path / "p"
    shutil.copytree(written / "asdtool", proj / "asdtool")
    stages = yaml.safe_load((written / "dvc.yaml").read_text())["stages"]
    fake = {"stages": {}}
    for group in ("finetune", "pseudolabel", "finetune-pse", "embed"):
        body = stages[group]
        code = [d for d in body["do"]["deps"] if isinstance(d, str) and (d.startswith("asdtool") or d == "${item.code}")]
        fake["stages"][group] = {"foreach": body["foreach"], "do": {
            "cmd": f"mkdir -p out && echo ${{key}} > out/{group}-${{key}}.txt",
            "deps": code, "outs": [f"out/{group}-${{key}}.txt"]}}  # fmt: skip
    (proj / "dvc.yaml").write_text(yaml.safe_dump(fake, sort_keys=False))
    shutil.copy(written / "params.yaml", proj / "params.yaml")
    _run(["git", "init", "-q"], proj)
    _run(DVC + ["init", "-q"], proj)
    _run(DVC + ["repro", "-q"], proj)
    assert json.loads(_run(DVC + ["status", "--json"], proj) or "{}") == {}
    with open(proj / "asdtool/models/backbones/eat.py", "a") as f:
        f.write("\n# changed\n")
    stale = set(json.loads(_run(DVC + ["status", "--json"], proj)))
    assert stale == {
        "finetune@eat-full", "finetune@eat-lora", "finetune@dual", "pseudolabel@eat", "finetune-pse@eat-pse",
        "embed@eat-full", "embed@eat-lora", "embed@eat-pse", "embed@dual"}  # fmt: skip
    assert not {s for s in stale if "beats" in s}


def test_pretraining_objectives_and_frozen_backbones_count_as_their_backbones_code(project):
    """`pretrain` imports its objective by name (OBJECTIVES), `embed --backbone X` builds backbone X."""
    _tree(project, {
        "asdtool/pretrain/__init__.py": "OBJECTIVES = {'beats': 'asdtool.pretrain.beats', 'eat': 'asdtool.pretrain.eat'}\n",
        "asdtool/pretrain/loop.py": "import importlib\n\nfrom asdtool import models\nfrom asdtool.pretrain import OBJECTIVES\n",
        "asdtool/pretrain/beats.py": "from asdtool.models import beats\n",
        "asdtool/pretrain/eat.py": "from asdtool.models import eat\n",
        "asdtool/commands/pretrain.py": "def run():\n    from asdtool.pretrain import loop\n",
        "asdtool/commands/embed.py": "from asdtool import models\n",
        "dvc.yaml": """\
stages:
  pretrain:
    foreach: [beats, eat]
    do:
      cmd: asdtool pretrain --name ${item}
      outs:
        - out/${item}
  frozen:
    cmd: asdtool embed --backbone eat --out out/frozen
    outs:
      - out/frozen
""",
    })
    problems = _check(project)
    assert "pretrain@beats: missing asdtool/pretrain/beats.py (imported by 'asdtool pretrain' with backbone beats)" in problems
    assert "pretrain@eat: missing asdtool/models/eat.py (imported by 'asdtool pretrain' with backbone eat)" in problems
    assert not any("pretrain@beats" in p and "eat.py" in p for p in problems)
    assert "frozen: missing asdtool/models/eat.py (imported by 'asdtool embed' with backbone eat)" in problems
    assert not any(p.startswith("frozen:") and "beats" in p for p in problems)
    assert sd.write(project / "dvc.yaml") is True and _check(project) == []
    doc = yaml.safe_load((project / "dvc.yaml").read_text())
    assert doc["stages"]["pretrain"]["foreach"] == {
        "beats": {"code": "asdtool/models/beats.py", "code_2": "asdtool/pretrain/beats.py"},
        "eat": {"code": "asdtool/models/eat.py", "code_2": "asdtool/pretrain/eat.py"},
    }
    assert doc["stages"]["pretrain"]["do"]["deps"][-2:] == ["${item.code}", "${item.code_2}"]
    assert sd.write(project / "dvc.yaml") is False  # idempotent
