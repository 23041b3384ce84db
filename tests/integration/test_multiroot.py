"""Training on several data roots at once (earlier years, eval additional training data), machine types kept apart."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from asdtool.models import checkpoint
from asdtool.config.stages import FinetuneConfig
from asdtool.data import dcase
from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.data.synth.layouts import synthesize_layout
from asdtool.detect.embed import embed_to_store
from asdtool.core.errors import AsdError
from asdtool.pretrain.audio import find_audio
from asdtool.data.store import read_store
from asdtool.train.finetune import finetune
from asdtool.train.trainset import training_set

from tests.conftest import run_asdtool
from tests import paths

ROOT = paths.ROOT
SIZES = SynthSizes(0.5, 4, 2, 2)


_asdtool = run_asdtool


@pytest.fixture(scope="module")
def years(tmp_path_factory) -> Path:
    """data/y2020 (machine IDs), data/y2024 (hidden attributes) and data/y2025 (trailing-underscore names)."""
    base = tmp_path_factory.mktemp("years")
    synthesize_layout(base / "data" / "y2020", "2020", seed=1, sizes=SIZES, machines=["fan", "slider"])
    synthesize(base / "data" / "y2024", seed=2, sizes=SIZES, machines=["fan", "gearbox"])
    synthesize_layout(base / "data" / "y2025", "2025", seed=3, sizes=SIZES, machines=["fan", "gearbox"])
    return base


def test_one_root_reads_as_before_and_several_keep_their_machine_types_apart(years):
    data = years / "data"
    alone = dcase.scan_roots([data / "y2025"])
    assert alone.clips == dcase.scan(data / "y2025").clips
    assert {c.machine for c in alone.clips} == {"fan", "gearbox"}

    both = dcase.scan_roots([data / "y2025", data / "y2020"])
    parts = [dcase.scan(data / "y2025"), dcase.scan(data / "y2020")]
    assert len(both.clips) == sum(len(p.clips) for p in parts)
    label25, label20 = dcase.root_label(data / "y2025"), dcase.root_label(data / "y2020")
    assert both.machines == sorted([f"{label25}:fan", f"{label25}:gearbox", f"{label20}:fan", f"{label20}:slider"], key=str.lower)
    # the 2020 fan and the 2025 fan: same name, different machines, different classes
    keys25 = {c.class_key for c in both.clips if c.machine.startswith(label25)}
    keys20 = {c.class_key for c in both.clips if c.machine.startswith(label20)}
    assert keys25 and keys20 and not keys25 & keys20
    assert keys25 == {f"{label25}:{c.class_key}" for c in parts[0].clips}
    # every clip keeps its own path, section, domain, label and attributes
    assert [(c.path, c.section, c.domain, c.label, c.attributes) for c in both.clips] == [
        (c.path, c.section, c.domain, c.label, c.attributes) for p in parts for c in p.clips]
    assert both.folder(f"{label20}:slider") == data / "y2020" / "slider"


def test_a_root_given_twice_is_refused(years):
    data = years / "data"
    with pytest.raises(AsdError, match="given twice as a data root"):
        dcase.scan_roots([data / "y2025", data / "y2020", data / "y2025" / "."])
    with pytest.raises(AsdError, match="at least one --data-root"):
        FinetuneConfig(data_root=[], out=Path("o"))


def test_finetune_on_two_roots_trains_the_classes_of_both(years, tmp_path):
    data = years / "data"
    cfg = FinetuneConfig(data_root=[data / "y2025", data / "y2020"], out=tmp_path / "m", steps=2, batch_size=4,
                         seconds=0.5, warmup=1, threads=1)  # fmt: skip
    result = finetune(cfg)
    both = training_set(dcase.scan_roots(cfg.data_root))
    saved = checkpoint.read_checkpoint(tmp_path / "m")
    assert saved["class_map"] == both.class_map and result.classes == len(both.class_map)
    n25 = len(dcase.scan(data / "y2025").select(split="train"))
    n20 = len(dcase.scan(data / "y2020").select(split="train"))
    assert result.clips == {dcase.root_label(data / "y2025"): n25, dcase.root_label(data / "y2020"): n20}
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["clips"] == n25 + n20 and list(summary["clips_per_root"].values()) == [n25, n20]
    # the checkpoint remembers both roots; a model trained on them embeds any one root
    assert checkpoint.load_finetuned(tmp_path / "m").config.data_root == [data / "y2025", data / "y2020"]
    embed_to_store(tmp_path / "m", data / "y2020", tmp_path / "y2020.h5")
    store = read_store(tmp_path / "y2020.h5")
    assert sorted({m for m, _ in store.groups}) == ["fan", "slider"]  # the scored root's own machine names
    assert store.get("fan", "test").values.shape == (len(dcase.scan(data / "y2020").select("fan", "test")), 128)


def test_pseudo_labels_cluster_each_roots_machine_types_and_feed_finetune(years):
    r = _asdtool("finetune", "--data-root", "data/y2024", "--data-root", "data/y2025", "--out", "stage1", "--steps", "2",
                 "--batch-size", "4", "--seconds", "0.5", "--warmup", "1", "--threads", "1", cwd=years)
    assert r.returncode == 0, r.stderr
    assert "training clips" in r.stdout
    r = _asdtool("pseudolabel", "--model", "stage1", "--data-root", "data/y2024", "--data-root", "data/y2025",
                 "--out", "labels.csv", "--clusters", "data/y2024:gearbox=2", cwd=years)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader((years / "labels.csv").open()))
    machines = {row[1] for row in rows[1:]}
    assert machines == {"data/y2024:gearbox", "data/y2025:gearbox"}  # the types without attributes, per root
    summary = json.loads((years / "labels.summary.json").read_text())
    assert summary["machines"]["data/y2024:gearbox"]["clusters"] == 2
    # the 2024 root's hidden_attributes.csv scores its own clusters; the 2025 root has none
    assert summary["machines"]["data/y2024:gearbox"]["ari"] is not None
    assert summary["machines"]["data/y2025:gearbox"]["ari"] is None
    assert (years / "labels_umap" / "data_y2024__gearbox.png").is_file()
    # a bare machine name is not one of these roots' machine types
    r = _asdtool("pseudolabel", "--model", "stage1", "--data-root", "data/y2024", "--data-root", "data/y2025",
                 "--out", "bad.csv", "--clusters", "gearbox=2", cwd=years)
    assert r.returncode == 1 and "--clusters names gearbox, which has no machine folder" in r.stderr
    assert not (years / "bad.csv").exists()
    # stage two on the same roots trains the pseudo classes; on another set of roots the file is refused
    r = _asdtool("finetune", "--data-root", "data/y2024", "--data-root", "data/y2025", "--out", "stage2", "--steps", "1",
                 "--batch-size", "4", "--seconds", "0.5", "--warmup", "1", "--threads", "1", "--labels", "pseudo",
                 "--pseudo-labels", "labels.csv", cwd=years)
    assert r.returncode == 0, r.stderr
    classes = checkpoint.read_checkpoint(years / "stage2")["class_map"]
    assert {k for k in classes if "/pseudo_" in k} == {f"data/y2024:gearbox/pseudo_{i}" for i in range(2)} | {
        f"data/y2025:gearbox/pseudo_{i}" for i in set(int(row[2]) for row in rows[1:] if row[1] == "data/y2025:gearbox")}
    r = _asdtool("finetune", "--data-root", "data/y2024", "--out", "stage2b", "--steps", "1", "--labels", "pseudo",
                 "--pseudo-labels", "labels.csv", cwd=years)
    assert r.returncode == 1 and "labels.csv: names" in r.stderr and "not training clips of data/y2024" in r.stderr


def test_pretraining_on_an_eval_root_of_any_year_reads_only_training_clips(tmp_path):
    for year in ("2020", "2021", "2025"):
        root = tmp_path / year
        synthesize_layout(root, year, eval_set=True, seed=4, sizes=SIZES, machines=["fan"])
        tests = {p for p in root.rglob("*.wav") if "test" in p.parent.name}
        train = {p for p in root.rglob("*.wav") if p.parent.name in ("train", "supplemental")}  # 2025: normal clips
        assert tests and train and find_audio([root]).files == sorted(train)
        assert find_audio([root]).skipped == len(tests)


@pytest.mark.parametrize("name", ["params.yaml", "params-dcase2024.yaml", "params-dcase2025.yaml", "params-dcase2026.yaml"])
def test_dvc_watches_every_training_root_of_every_params_file(name):
    """finetune, pseudolabel and pretrain depend on `data.train_deps`: it must hold each root they read."""
    doc = yaml.safe_load((ROOT / name).read_text())
    watched = Path(doc["data"]["train_deps"])
    roots = [Path(r) for r in doc["data"]["train"]["data-root"]]
    assert roots and roots[0] == Path(doc["data"]["root"])
    audio = [Path(a) for p in doc["pretrain"].values() for a in p["audio"]]
    corpus = Path(doc["corpus"]["out"])
    for path in roots + audio:
        assert path == watched or watched in path.parents or path == corpus, f"{name}: {path} lies outside {watched}"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("finetune", "finetune-pse", "finetune-scratch", "pseudolabel"):
        body = stages[stage]["do"]
        assert "${data.train}" in body["cmd"] and "${data.root}" not in body["cmd"]
        assert "${data.train_deps}" in body["deps"] and "data.train" in body["params"]
    assert "${data.train_deps}" in stages["pretrain"]["do"]["deps"]
