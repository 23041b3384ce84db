"""Pseudo labels: AHC of a stage-one model's embeddings, UMAP plots, silhouette, ARI, bad input, stage two."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from asdtool.train import pseudolabel as pl
from asdtool.models import checkpoint
from asdtool.train import finetune as train, trainset
from asdtool.cli import app
from asdtool.data import dcase
from asdtool.data.synth.dev import SynthSizes, synthesize
from asdtool.core.errors import AsdError
from asdtool.config.stages import FinetuneConfig
from asdtool.train.finetune import finetune

from tests.conftest import make_machine

runner = CliRunner()
HIDDEN = ("gearbox", "slider", "ToyTrain")  # the synthetic types without attributes
COUNTS = {"gearbox": 4, "slider": 4, "ToyTrain": 4}  # 4 hidden conditions each (3 source, 1 target)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "dev"
    synthesize(root, seed=0, sizes=SynthSizes(2.0, 24, 4, 2), machines=["fan", *HIDDEN])  # 2 s: a slider cycle fits
    return root


@pytest.fixture(scope="module")
def stage_one(data, tmp_path_factory) -> Path:
    """A 3-step tiny BEATs trained on the real attributes (the -full model); its embeddings already
    separate the hidden conditions well (the random-init tiny encoder's fbank features do most of it)."""
    out = tmp_path_factory.mktemp("models") / "beats-full"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finetune(FinetuneConfig(backbone="beats", size="tiny", steps=3, batch_size=4, warmup=1, max_lr=1e-3, seconds=2.0,
                                 data_root=data, out=out))
    return out


@pytest.fixture(scope="module")
def cli_run(data, stage_one, tmp_path_factory) -> tuple[Path, str]:
    """One CLI run with counts for every hidden type and --suggest (the module's only UMAP calls)."""
    out = tmp_path_factory.mktemp("labels") / "beats.csv"
    args = ["pseudolabel", "--model", str(stage_one), "--data-root", str(data), "--out", str(out), "--suggest", "--suggest-range", "2-6"]
    for m, k in COUNTS.items():
        args += ["--clusters", f"{m}={k}"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return out, r.output


# ----------------------------------------------------------------------------- the command


def test_labels_cover_exactly_the_training_clips_without_attributes(data, cli_run):
    out, output = cli_run
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["file_name", "machine", "pseudo_label"]
    ds = dcase.scan(data)
    assert pl.unattributed_machines(ds) == sorted(HIDDEN, key=str.lower)
    expected = {(c.machine, c.file_name) for m in HIDDEN for c in ds.select(m, "train")}
    got = [(r[1], r[0]) for r in rows[1:]]
    assert len(got) == len(expected) == 3 * 28 and set(got) == expected
    for m in HIDDEN:
        assert sorted({int(r[2]) for r in rows[1:] if r[1] == m}) == list(range(COUNTS[m]))
    for m in (*HIDDEN, "silhouette", "ARI"):
        assert m in output


def test_labels_round_trip_into_training_classes(data, cli_run):
    out, _ = cli_run
    rows = list(csv.reader(out.open(newline="")))[1:]
    assert trainset.read_pseudo_labels(out) == {(m, f): k for f, m, k in rows}
    ds = dcase.scan(data)
    tset = trainset.training_set(ds, out)
    pseudo = {f"{m}/pseudo_{k}" for m in HIDDEN for k in range(COUNTS[m])}
    fan = {c.class_key for c in ds.select("fan", "train")}
    assert set(tset.class_map) == pseudo | fan
    by_clip = {(m, f): k for f, m, k in rows}
    inverse = {i: key for key, i in tset.class_map.items()}
    for clip, target in zip(tset.clips, tset.targets):
        if clip.machine in HIDDEN:
            assert inverse[int(target)] == f"{clip.machine}/pseudo_{by_clip[(clip.machine, clip.file_name)]}"


def test_umap_plots_are_pngs(cli_run):
    out, _ = cli_run
    plots = out.with_name("beats_umap")
    assert sorted(p.name for p in plots.iterdir()) == sorted(f"{m}.png" for m in HIDDEN)
    for m in HIDDEN:
        blob = (plots / f"{m}.png").read_bytes()
        assert blob[:8] == PNG_MAGIC and len(blob) > 5_000
        width, height = int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")
        assert (width, height) == (640, 560)


def test_summary_reports_sizes_silhouette_and_ari(cli_run, stage_one):
    out, _ = cli_run
    s = json.loads(out.with_name("beats.summary.json").read_text())
    assert s["model"] == str(stage_one)
    assert s["checkpoint_sha256"] == checkpoint.file_sha256(stage_one / checkpoint.CHECKPOINT)
    assert s["linkage"] == "ward" and s["seconds"] == 2.0 and s["suggest_range"] == [2, 6] and s["hidden_truth"]
    assert s["labels"] == str(out) and s["plots"] == str(out.with_name("beats_umap"))
    assert list(s["machines"]) == list(HIDDEN)
    for m in HIDDEN:
        e = s["machines"][m]
        assert e["clips"] == 28 and e["clusters"] == 4 and e["k_from"] == "given"
        assert sum(e["cluster_sizes"]) == 28 and e["cluster_sizes"] == sorted(e["cluster_sizes"], reverse=True)
        assert -1.0 <= e["silhouette"] <= 1.0
        assert set(e["silhouette_by_k"]) == {"2", "3", "4", "5", "6"}
        assert str(e["suggested_k"]) == max(e["silhouette_by_k"], key=e["silhouette_by_k"].get)
        assert e["silhouette_by_k"]["4"] == pytest.approx(e["silhouette"], abs=1e-9)
        if m != "slider":
            assert e["ari"] > 0.15, (m, e["ari"])  # chance is 0
    # measured on these seeds: gearbox 0.56, slider 0.28, ToyTrain 0.39; over data seeds 0-1 and model seeds
    # 0-1, gearbox 0.54-0.58, ToyTrain 0.39-0.44, slider 0.23-0.28 but once -0.00 (its 2 s clips hold one or two
    # strokes at a 6 % period spread, so a 3-step model sometimes clusters them at chance; the pipeline's
    # pre-trained models reach 0.90-1.00 there), and the mean of the three 0.32-0.42
    assert np.mean([s["machines"][m]["ari"] for m in HIDDEN]) > 0.3


def test_library_matches_cli_and_defaults_to_best_silhouette(data, stage_one, cli_run):
    out, _ = cli_run
    r = pl.pseudo_label(stage_one, data, {"gearbox": 4}, k_range=range(2, 7), plots=False)
    assert r.machines["gearbox"].k_from == "given"
    written = {(m, f): k for f, m, k in list(csv.reader(out.open(newline="")))[1:]}
    assert [k for f, m, k in r.rows() if m == "gearbox"] == [written[("gearbox", f)] for f, m, _ in r.rows() if m == "gearbox"]
    for m in ("slider", "ToyTrain"):
        mc = r.machines[m]
        assert mc.k_from == "silhouette" and mc.suggestion is not None
        assert set(mc.suggestion.silhouette) == set(range(2, 7))
        assert mc.k == mc.suggestion.best_k == max(mc.suggestion.silhouette, key=mc.suggestion.silhouette.get)
        assert mc.umap is None
    assert r.summary()["suggest_range"] == [2, 6]


# ----------------------------------------------------------------------------- clustering pieces


def _blobs(centres: int, per: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim)) * 3
    truth = np.repeat(np.arange(centres), per)
    return means[truth] + 0.1 * rng.standard_normal((len(truth), dim)), truth


def test_suggest_clusters_finds_the_blob_count():
    x, truth = _blobs(5, 8)
    s = pl.suggest_clusters(x, range(2, 10))
    assert sorted(s.silhouette) == list(range(2, 10))
    assert s.best_k == 5 and s.silhouette[5] > 0.8
    labels = pl.cluster(pl.l2_normalise(x), 5)
    assert pl.adjusted_rand(labels, [str(t) for t in truth]) == pytest.approx(1.0)
    # counts above N-1 have no silhouette and are skipped
    assert sorted(pl.suggest_clusters(x[:4], range(2, 10)).silhouette) == [2, 3]


def test_cluster_ids_are_numbered_largest_first():
    x = np.concatenate([_blobs(1, 3, seed=1)[0], _blobs(1, 9, seed=2)[0], _blobs(1, 5, seed=3)[0]])
    labels = pl.cluster(pl.l2_normalise(x), 3)
    assert labels.tolist() == [2] * 3 + [0] * 9 + [1] * 5
    assert np.allclose(np.linalg.norm(pl.l2_normalise(x), axis=1), 1.0)


def test_option_parsing():
    assert pl.parse_cluster_counts(["gearbox=20", "slider = 20", "ToyTrain=25", "gearbox=20"]) == {"gearbox": 20, "slider": 20, "ToyTrain": 25}
    assert pl.parse_k_range("2-30") == range(2, 31)
    for bad in (["gearbox"], ["gearbox=x"], ["gearbox=3", "gearbox=4"]):
        with pytest.raises(AsdError):
            pl.parse_cluster_counts(bad)
    for bad in ("1-5", "5-2", "7", "a-b"):
        with pytest.raises(AsdError):
            pl.parse_k_range(bad)
    paths = pl.output_paths(Path("labels/beats.csv"))
    assert paths.plots == Path("labels/beats_umap") and paths.summary == Path("labels/beats.summary.json")


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def attributed_only(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("attributed") / "dev"
    make_machine(root, "fan", [{"m-n": "W"}, {"m-n": "X"}])
    return root


@pytest.fixture(scope="module")
def unfinished(stage_one, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unfinished") / "beats-full"
    folder.mkdir()
    payload = torch.load(stage_one / checkpoint.CHECKPOINT, map_location="cpu", weights_only=True)
    payload["complete"] = False
    torch.save(payload, folder / checkpoint.CHECKPOINT)
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown machine", "pump, which has no machine folder"),
        ("attributed machine", "fan, whose training clips carry attributes"),
        ("too many clusters", "gearbox=29: more clusters than its 28 training clips"),
        ("one cluster", "gearbox=1: need at least 2 clusters"),
        ("malformed count", "is not MACHINE=COUNT"),
        ("bad range", "must satisfy 2 <= LO <= HI"),
        ("no model", "no fine-tuned checkpoint here"),
        ("unfinished model", "training did not finish"),
        ("nothing to label", "no machine type without attributes"),
    ],
)
def test_bad_input_one_line_nothing_written(case, message, data, stage_one, unfinished, attributed_only, tmp_path):
    model, root, extra = stage_one, data, ["--clusters", "gearbox=4"]
    if case == "unknown machine":
        extra = ["--clusters", "pump=4"]
    elif case == "attributed machine":
        extra = ["--clusters", "fan=3"]
    elif case == "too many clusters":
        extra = ["--clusters", "gearbox=29"]
    elif case == "one cluster":
        extra = ["--clusters", "gearbox=1"]
    elif case == "malformed count":
        extra = ["--clusters", "gearbox:4"]
    elif case == "bad range":
        extra = ["--suggest", "--suggest-range", "6-2"]
    elif case == "no model":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "unfinished model":
        model = unfinished
    elif case == "nothing to label":
        root, extra = attributed_only, []
    out = tmp_path / "labels" / "beats.csv"
    plots = tmp_path / "plots"
    r = runner.invoke(app, ["pseudolabel", "--model", str(model), "--data-root", str(root), "--out", str(out), "--plots", str(plots), *extra])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.output
    assert not out.parent.exists() and not plots.exists()


# ----------------------------------------------------------------------------- stage two


def test_finetune_consumes_the_pseudo_labels(data, cli_run, tmp_path):
    out, _ = cli_run
    model = tmp_path / "beats-pse"
    cfg = FinetuneConfig(backbone="beats", size="tiny", steps=2, batch_size=4, warmup=1, max_lr=1e-3, seconds=1.0,
                         labels="pseudo", pseudo_labels=str(out), data_root=data, out=model)  # fmt: skip
    result = finetune(cfg)
    summary = json.loads((model / train.SUMMARY).read_text())
    fan_classes = len({c.class_key for c in dcase.scan(data).select("fan", "train")})
    assert fan_classes == 4  # 3 source + 1 target attribute sets
    assert summary["classes"] == result.classes == fan_classes + sum(COUNTS.values())
    assert summary["labels"] == "pseudo"


def test_ari_against_the_organisers_correspondence_files_equals_the_one_against_hidden_attributes(data, stage_one, tmp_path):
    # the organisers ship <machine>/attributes_00_train_correspondence.csv: the true-attribute name beside the
    # distributed noAttribute name; written here from the synthetic set's own hidden_attributes.csv
    from asdtool.data.hidden import read_correspondence_folder, read_hidden_rows

    truth = tmp_path / "ground_truth_attributes"
    by_machine: dict[str, list[str]] = {}
    for machine, rel, hidden in read_hidden_rows(data / "hidden_attributes.csv"):
        given = rel.rsplit("/", 1)[-1]
        if "_train_" in given:
            by_machine.setdefault(machine, []).append(f"{given.replace('noAttribute', hidden)},{given}")
    for machine, rows in by_machine.items():
        (truth / machine).mkdir(parents=True)
        (truth / machine / "attributes_00_train_correspondence.csv").write_text(
            "source_file_name,target_file_name\n" + "\n".join(rows) + "\n")
    mapping = read_correspondence_folder(truth)
    assert len(mapping) == sum(len(r) for r in by_machine.values()) and set(by_machine) == set(HIDDEN)
    own = pl.pseudo_label(stage_one, data, COUNTS, plots=False)
    theirs = pl.pseudo_label(stage_one, data, COUNTS, plots=False, attribute_truth=truth)
    for m in HIDDEN:
        assert theirs.machines[m].ari is not None and theirs.machines[m].ari == pytest.approx(own.machines[m].ari)
    (truth / "gearbox" / "attributes_00_train_correspondence.csv").write_text("file,attrs\n")
    with pytest.raises(AsdError, match="has no 'source_file_name,target_file_name' header"):
        read_correspondence_folder(truth)
