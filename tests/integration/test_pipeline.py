"""dvc.yaml + params.yaml: the whole pipeline on a reduced copy of the embedded default, stage caching.

The copy keeps dvc.yaml and the code as they are and shrinks only the numbers in params.yaml
(clip counts, steps), so it exercises every stage, every command and the caching in about a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests import paths

from tests.conftest import HANG_SECONDS

ROOT = paths.ROOT
DVC = [sys.executable, "-m", "dvc"]


def _run(args, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONWARNINGS": "ignore", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_SECONDS)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def reduced_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synth"].update(seconds=0.5, source_train=8, target_train=2, test_per_domain=2)
    params["corpus"].update(clips=6, seconds=0.5)
    for p in params["pretrain"].values():
        p.update(steps=2, batch_size=4, warmup=1, seconds=0.5)
    params["pretrain"]["eat"]["clones"] = 2
    for model in params["models"].values():
        model.update(steps=2, batch_size=4, warmup=1, seconds=0.5, checkpoint_every=1)
        model.pop("cycle_steps", None)
    for p in params["pseudolabel"].values():
        p["clusters"] = ["gearbox=2", "slider=2", "ToyTrain=2"]
    params["ensemble"]["search7"]["step"] = 0.5
    params["ensemble"]["search9"]["step"] = 0.5
    params["baseline"]["epochs"] = 2
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC project holding this repo's dvc.yaml and a reduced params.yaml, reproduced once."""
    proj = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(ROOT / "asdtool", proj / "asdtool", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    shutil.copy(ROOT / ".dvcignore", proj / ".dvcignore")
    (proj / "params.yaml").write_text(yaml.safe_dump(reduced_params(), sort_keys=False))
    _run(["git", "init", "-q"], proj)
    _run(DVC + ["init", "-q"], proj)
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    proj.joinpath("first_run.log").write_text(_run(DVC + ["repro"], proj))
    return proj


PAPER = ("beats-full", "beats-lora", "beats-pse", "eat-full", "eat-lora", "eat-pse", "dual")
SCRATCH = ("beats-full-scratch", "eat-full-scratch")
FROZEN = ("frozen-beats", "frozen-eat", "frozen-beats-scratch", "frozen-eat-scratch")
NORMALISED = ("beats-full", "beats-lora", "eat-full", "eat-lora", "dual", "frozen-beats", "frozen-eat")
SYSTEMS = ("system1", "system2", "system3", "system4", "search3", "search7", "search9")
ALL_STAGES = {
    "synth", "corpus", "pretrain@beats", "pretrain@eat", "report", "export",
    *(f"baseline@{m}" for m in ("logmel", "logmel-meanstd", "autoencoder")),
    *(f"finetune@{m}" for m in ("beats-full", "beats-lora", "eat-full", "eat-lora", "dual")),
    "finetune-pse@beats-pse", "finetune-pse@eat-pse", "pseudolabel@beats", "pseudolabel@eat",
    *(f"finetune-scratch@{m}" for m in SCRATCH), *(f"embed-scratch@{m}" for m in SCRATCH),
    *(f"embed@{m}" for m in PAPER), "embed-frozen@beats", "embed-frozen@eat",
    "embed-frozen-scratch@beats", "embed-frozen-scratch@eat",
    *(f"detect@{m}" for m in (*PAPER, *SCRATCH, *FROZEN)),
    *(f"detect-normalise@{m}-{n}" for m in NORMALISED for n in ("none", "local-density")),
    *(f"ensemble-{s}" for s in SYSTEMS),
    *(f"evaluate@{n}" for n in ("logmel", "logmel-meanstd", "autoencoder", *PAPER, *SCRATCH, *FROZEN, *SYSTEMS)),
    *(f"evaluate@{m}+{n}" for m in NORMALISED for n in ("none", "local-density")),
}  # fmt: skip


def test_first_run_runs_every_stage_and_writes_the_tables(project):
    ran = _ran(project.joinpath("first_run.log").read_text())
    assert ran == ALL_STAGES
    for name in ("beats-lora", "dual", "system3", "search7", "logmel"):
        m = json.loads((project / "metrics" / f"{name}.json").read_text())
        assert 0.0 <= m["official_score"] <= 1.0 and len(m["machines"]) == 7
    weights = json.loads((project / "metrics" / "search7_weights.json").read_text())
    assert len(weights["best"]["weights"]) == 7 and abs(sum(weights["best"]["weights"]) - 1) < 1e-9
    assert (project / "reports" / "single_models.md").read_text().count("\n| ") == 1 + 30  # header, 3 references + 27 models
    for name in ("beats", "eat"):  # the pre-trained backbones, in the official format, start every fine-tuning
        summary = json.loads((project / "pretrained" / name / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["backbone"] == name
    assert not (project / "pretrained" / "beats" / "resume.pt").exists()
    assert "| hmean | hmean |" in (project / "reports" / "systems.md").read_text()
    assert sorted(p.name for p in (project / "plots" / "umap" / "beats").iterdir())[0].endswith(".png")
    assert (project / "plots" / "roc" / "dual" / "roc_fan.csv").read_text().startswith("fpr,tpr\n")


def test_rerun_with_nothing_changed_recomputes_nothing(project):
    out = _run(DVC + ["repro"], project)
    assert _ran(out) == set()
    assert "up to date" in out


def _downstream(project: Path, stage: str) -> set[str]:
    """Return `stage` and every stage that depends on it, from `dvc dag --dot`."""
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', _run(DVC + ["dag", "--dot"], project))
    found, frontier = {stage}, [stage]
    while frontier:
        node = frontier.pop()
        for a, b in edges:
            if a == node and b not in found:
                found.add(b)
                frontier.append(b)
    return found


def test_changing_one_model_reruns_its_chain_and_nothing_else(project):
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["models"]["eat-lora"]["steps"] = 3
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        stale = _stale(project)
    finally:
        params_file.write_text(original)
    assert stale == {"finetune@eat-lora"}  # only the changed stage; the others follow if its outputs change
    readers = set(SYSTEMS)  # every system uses eat-lora
    assert _downstream(project, "finetune@eat-lora") == {
        "finetune@eat-lora", "embed@eat-lora", "detect@eat-lora", "evaluate@eat-lora", "report", "export",
        *(f"detect-normalise@eat-lora-{n}" for n in ("none", "local-density")),
        *(f"evaluate@eat-lora+{n}" for n in ("none", "local-density")),
        *(f"ensemble-{s}" for s in readers), *(f"evaluate@{s}" for s in readers)}  # fmt: skip


def test_changing_a_model_no_system_reads_leaves_the_systems_alone(project):
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["models"]["beats-pse"]["steps"] = 3
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        stale = _stale(project)
    finally:
        params_file.write_text(original)
    assert stale == {"finetune-pse@beats-pse"}
    assert _downstream(project, "finetune-pse@beats-pse") == {
        "finetune-pse@beats-pse", "embed@beats-pse", "detect@beats-pse", "evaluate@beats-pse",
        "ensemble-search7", "evaluate@search7", "ensemble-search9", "evaluate@search9", "report",
        "export"}  # fmt: skip  (the bundle of search9 holds it)


def test_changing_one_system_reruns_only_that_system(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ensemble"]["system1"]["weights"] = [0.5, 0.25, 0.25]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = _ran(_run(DVC + ["repro"], project))
    assert ran == {"ensemble-system1", "evaluate@system1", "report"}
    assert _ran(_run(DVC + ["repro"], project)) == set()


def _stale(project: Path) -> set[str]:
    """Return the stages `dvc status` reports as changed."""
    out = _run(DVC + ["status", "--json"], project)
    return set(json.loads(out[out.index("{"):]) if "{" in out else {})


def test_editing_a_backbone_file_makes_exactly_its_models_stale(project):
    eat = project / "asdtool" / "models" / "backbones" / "eat.py"
    original = eat.read_text()
    assert _stale(project) == set()
    try:
        eat.write_text(original + "\n# an edit of the EAT code\n")
        stale = _stale(project)
    finally:
        eat.write_text(original)
    eat_models = {"eat-full", "eat-lora", "dual"}
    assert {f"embed@{m}" for m in eat_models | {"eat-pse"}} <= stale
    assert {f"finetune@{m}" for m in eat_models} | {"finetune-pse@eat-pse", "pseudolabel@eat"} <= stale
    assert {"pretrain@eat", "embed-frozen@eat", "embed-frozen-scratch@eat", "finetune-scratch@eat-full-scratch",
            "embed-scratch@eat-full-scratch"} <= stale  # fmt: skip
    assert not {s for s in stale if "beats" in s}, sorted(stale)  # BEATs-only stages do not depend on eat.py
    assert _stale(project) == set()


def test_editing_a_pretraining_objective_makes_only_its_backbone_stale(project):
    objective = project / "asdtool" / "pretrain" / "eat.py"
    original = objective.read_text()
    try:
        objective.write_text(original + "\n# an edit of the EAT objective\n")
        stale = _stale(project)
    finally:
        objective.write_text(original)
    assert stale == {"pretrain@eat"}


def test_a_fresh_clone_regenerates_the_data_but_keeps_the_committed_pretrained_backbones(project):
    """pretrained/ is committed (cache: false); a clone has no data and no DVC cache. `dvc repro` writes
    the (byte-identical) synthetic data and corpus again and finds the pre-training up to date."""
    kept = {n: (project / "pretrained" / n / "backbone.pt").read_bytes() for n in ("beats", "eat")}
    cache, aside = project / ".dvc" / "cache", project / ".dvc" / "cache-aside"
    shutil.rmtree(project / "data")
    cache.rename(aside)
    try:
        ran = _ran(_run(DVC + ["repro", "pretrain@beats", "pretrain@eat"], project))
        stale = _stale(project)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        aside.rename(cache)
    assert ran == {"synth", "corpus"}
    assert {n: (project / "pretrained" / n / "backbone.pt").read_bytes() for n in kept} == kept
    assert not stale & {"synth", "corpus", "pretrain@beats", "pretrain@eat"}  # the rest lack their cache here
    assert _stale(project) == set()


@pytest.mark.parametrize("year", ["2024", "2025", "2026"])
def test_the_paper_params_file_fits_the_pipeline(tmp_path, year):
    """`cp params-dcase<year>.yaml params.yaml && dvc repro` must at least resolve every stage."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / f"params-dcase{year}.yaml", tmp_path / "params.yaml")
    _run(["git", "init", "-q"], tmp_path)
    _run(DVC + ["init", "-q"], tmp_path)
    shutil.copy(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    out = _run(DVC + ["stage", "list"], tmp_path)
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert listed == ALL_STAGES
    paper = yaml.safe_load((ROOT / f"params-dcase{year}.yaml").read_text())
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(paper) == set(default) and set(paper["models"]) == set(default["models"])
    assert paper["data"]["root"] == f"data/dcase{year}t2/dev_data/raw"
    clusters = {"2024": ["gearbox=20", "slider=20", "ToyTrain=25"], "2025": [], "2026": []}[year]  # else: by silhouette
    assert paper["pseudolabel"]["beats"]["clusters"] == clusters
    roots = paper["data"]["train"]["data-root"]
    assert roots[0] == paper["data"]["root"]
    if year == "2025":  # every year's dev and eval training clips, 2020-2025
        assert roots == [f"data/dcase{y}t2/{part}_data/raw" for y in range(2025, 2019, -1) for part in ("dev", "eval")]
