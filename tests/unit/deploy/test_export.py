"""`asdtool.deploy.export`: a frozen model as a member, and the inputs export refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from asdtool.core.errors import AsdError
from asdtool.deploy.export import export_bundle
from asdtool.deploy.load import load_bundle
from asdtool.deploy.scoring import score_recordings
from asdtool.detect.ensemble import ensemble_to_folder
from asdtool.detect.settings import DetectorSettings

from tests.unit.deploy.conftest import MACHINES, _detect_scores, _test_recordings


def test_a_frozen_model_is_a_member_too(fitted, tmp_path):
    """`--model frozen` takes the frozen model its store records (backbone, pre-trained file, layer, pooling)."""
    base = fitted["base"]
    alone, system = tmp_path / "frozen.asd", tmp_path / "system.asd"
    export_bundle(["frozen"], [base / "frozen.h5"], alone, settings=DetectorSettings(normalise="domain-z"))
    export_bundle([fitted["full"], "frozen"], [base / "full.h5", base / "frozen.h5"], system, weights=[0.5, 0.5],
                  settings=DetectorSettings(normalise="domain-z"))  # fmt: skip
    ensemble_to_folder([base / "scores-full-z", base / "scores-frozen-z"], tmp_path / "fused", weights=[0.5, 0.5])
    for path, folder in ((alone, base / "scores-frozen-z"), (system, tmp_path / "fused")):
        bundle = load_bundle(path)
        assert bundle.meta["members"][-1]["name"] == "frozen-eat" and bundle.meta["members"][-1]["build_args"]["frozen"]["layer"] == 1
        for machine in MACHINES:
            got = {Path(r.name).name: r.score for r in score_recordings(bundle, _test_recordings(bundle, fitted["data"], machine))}
            expected = _detect_scores(folder, machine)
            assert max(abs(got[n] - expected[n]) for n in expected) < 1e-5
    with pytest.raises(AsdError, match="records no frozen model"):
        export_bundle(["frozen"], [base / "full.h5"], tmp_path / "x.asd")


def test_export_refuses_mismatched_inputs(fitted, tmp_path):
    base = fitted["base"]
    with pytest.raises(AsdError, match="embedded with another checkpoint"):
        export_bundle([fitted["full"]], [base / "lora.h5"], tmp_path / "x.asd")
    with pytest.raises(AsdError, match="needs one --weights per --model"):
        export_bundle([fitted["full"], fitted["full2"]], [base / "full.h5", base / "full2.h5"], tmp_path / "x.asd")
    with pytest.raises(AsdError, match="2 weights for 1 --model members"):
        export_bundle([fitted["full"]], [base / "full.h5"], tmp_path / "x.asd", weights=[1, 2])
    assert not (tmp_path / "x.asd").exists()
