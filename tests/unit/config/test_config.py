"""Stage configs: params sections are typed and checked; the command line overrides them."""

from __future__ import annotations

from pathlib import Path

import pytest

from asdtool.config import options, stages
from asdtool.config.options import build
from asdtool.config.stages import DetectConfig, FinetuneConfig
from asdtool.core.errors import AsdError
from tests import paths

ROOT = paths.ROOT


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_defaults_params_and_options_in_that_order(tmp_path):
    p = write(tmp_path, "detect:\n  k: 3\n  smote-ratio: 0.5\n  embeddings: e.h5\n  out: s\n")
    cfg = build(DetectConfig, p, None, {"smote_ratio": 2.0})
    assert (cfg.k, cfg.smote_ratio, cfg.smote_k, cfg.embeddings, cfg.out) == (3, 2.0, 5, Path("e.h5"), Path("s"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("detect:\n  kk: 1\n", "section 'detect' has unknown option 'kk'"),
        ("detect:\n  k: abc\n", "detect.k: expected an integer, got 'abc'"),
        ("detect:\n  k: 2.5\n", "detect.k: expected an integer, got 2.5"),
        ("detect:\n  k: true\n", "detect.k: expected an integer, got True"),
        ("detect:\n  smote_ratio: [1]\n", "detect.smote_ratio: expected a number, got [1]"),
        ("detect:\n  k: null\n", "detect.k: expected an integer, got null"),
        ("other: {}\n", "has no section 'detect'"),
        ("detect: 3\n", "section 'detect' is not a mapping"),
        ("detect: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_params_are_one_line_naming_file_and_key(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(AsdError) as err:
        build(DetectConfig, p, None, {"embeddings": Path("e"), "out": Path("o")})
    assert message in str(err.value) and str(p) in str(err.value) and "\n" not in str(err.value)


def test_choices_lists_and_named_sections(tmp_path):
    p = write(tmp_path, "models:\n  m:\n    backbone: eat\n    branch_weights: [1, 0.5]\n  bad:\n    backbone: wav2vec\n")
    cfg = build(FinetuneConfig, p, "m", {"data_root": Path("d"), "out": Path("o")})
    assert cfg.backbone == "eat" and cfg.branch_weights == [1.0, 0.5]
    with pytest.raises(AsdError, match="models.bad.backbone: 'wav2vec' is not one of beats, eat, dual"):
        build(FinetuneConfig, p, "bad", {"data_root": Path("d"), "out": Path("o")})
    with pytest.raises(AsdError, match="--params needs --name"):
        build(FinetuneConfig, p, None, {})


def test_missing_required_option_names_it():
    with pytest.raises(AsdError, match="missing option --embeddings, --out"):
        build(DetectConfig, None, None, {})


@pytest.mark.parametrize(
    "given, message",
    [
        ({"seed": -1}, "--seed must lie in 0..4294967295, got -1"),
        ({"seed": 2**32}, "--seed must lie in 0..4294967295"),
        ({"steps": 0}, "--steps must be at least 1, got 0"),
        ({"max_lr": 0.0}, "--max-lr must be a positive number"),
        ({"min_lr": 1.0}, "--min-lr 1.0 exceeds --max-lr"),
        ({"seconds": float("nan")}, "--seconds must be a finite number, got nan"),
        ({"max_lr": float("inf")}, "--max-lr must be a finite number, got inf"),
        ({"weight_decay": float("nan")}, "--weight-decay must be a finite number, got nan"),
        ({"branch_weights": [1.0]}, "--branch-weights takes two"),
        ({"labels": "pseudo"}, "--labels pseudo needs --pseudo-labels"),
    ],
)
def test_ranges_are_checked_before_any_work(given, message):
    with pytest.raises(AsdError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build(FinetuneConfig, None, None, {"data_root": Path("d"), "out": Path("o"), **given})


def test_every_params_file_section_fits_its_config():
    """The shipped params files hold only known keys of the right types, for every stage."""
    import yaml

    for name in ("params.yaml", "params-dcase2024.yaml", "params-dcase2025.yaml", "params-dcase2026.yaml"):
        path = ROOT / name
        doc = yaml.safe_load(path.read_text())
        for cls in (stages.SynthConfig, stages.FinetuneConfig, stages.PseudolabelConfig, stages.EmbedConfig,
                    stages.DetectConfig, stages.BaselineConfig, stages.EnsembleConfig, stages.EvaluateConfig,
                    stages.ReportConfig, stages.ExportConfig):  # fmt: skip
            entries = list(doc[cls.SECTION.key]) if cls.SECTION.named else [None]
            for entry in entries:
                assert isinstance(options.read_section(path, cls.SECTION, entry, cls), dict)


@pytest.mark.parametrize("name", ["params.yaml", "params-dcase2024.yaml", "params-dcase2025.yaml", "params-dcase2026.yaml"])
def test_the_exported_bundle_detects_as_the_pipeline_did(name):
    """The export stage's detector settings are detect's, so the bundle scores clips as the pipeline's detect did."""
    path = ROOT / name
    det = build(stages.DetectConfig, path, None, {"embeddings": Path("e.h5"), "out": Path("s")})
    exp = build(stages.ExportConfig, path, None, {"out": Path("b.asd")})
    assert [getattr(exp, k) for k in ("k", "smote_ratio", "smote_k", "seed", "normalise", "density_k")] == [
        getattr(det, k) for k in ("k", "smote_ratio", "smote_k", "seed", "normalise", "density_k")]
    # the members are search9's, in its order: fine-tuned model folders, then the frozen models' stores
    assert [p.name for p in exp.model] == ["beats-full", "beats-lora", "beats-pse", "eat-full", "eat-lora", "eat-pse", "dual",
                                           "frozen", "frozen"]
    assert [p.stem for p in exp.embeddings][-2:] == ["frozen-beats", "frozen-eat"]
