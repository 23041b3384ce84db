"""Tests for asdtool/detect/settings.py: the detector's settings, checked once when made."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from asdtool.core.errors import AsdError
from asdtool.detect.settings import FIELDS, DetectorSettings


def test_the_defaults_are_the_papers_detector():
    s = DetectorSettings()
    assert (s.k, s.smote_ratio, s.smote_k, s.seed, s.normalise, s.density_k) == (1, 1.0, 5, 0, "none", 2)
    assert tuple(s.as_dict()) == FIELDS


@pytest.mark.parametrize("field, value, message", [
    ("k", 0, "k must be 1 or more, got 0"),
    ("k", 2.0, "k must be 1 or more, got 2.0"),
    ("k", True, "k must be 1 or more, got True"),
    ("smote_k", 0, "SMOTE k must be 1 or more, got 0"),
    ("smote_ratio", -0.5, "SMOTE ratio must be 0 or more, got -0.5"),
    ("smote_ratio", float("nan"), "SMOTE ratio must be 0 or more, got nan"),
    ("smote_ratio", float("inf"), "SMOTE ratio must be 0 or more, got inf"),
    ("smote_ratio", "1", "SMOTE ratio must be 0 or more, got '1'"),
    ("seed", 1.5, "seed must be an integer, got 1.5"),
    ("normalise", "z", "normalise must be one of none, domain-z, local-density, got 'z'"),
    ("density_k", 0, "density k must be an integer of 1 or more, got 0"),
])  # fmt: skip
def test_a_bad_value_is_refused_in_one_line(field, value, message):
    with pytest.raises(AsdError) as info:
        DetectorSettings(**{field: value})
    assert str(info.value) == message


def test_numpy_numbers_become_plain_ones_and_the_document_round_trips():
    s = DetectorSettings(k=np.int64(3), smote_ratio=np.float32(0.5), smote_k=np.int32(2), seed=np.int64(7),
                         normalise="local-density", density_k=np.int64(4))  # fmt: skip
    doc = s.as_dict()
    assert [type(v) for v in doc.values()] == [int, float, int, int, str, int]
    assert json.loads(json.dumps(doc)) == {"k": 3, "smote_ratio": 0.5, "smote_k": 2, "seed": 7,
                                           "normalise": "local-density", "density_k": 4}  # fmt: skip
    assert DetectorSettings.from_dict(json.loads(json.dumps(doc))) == s
    assert DetectorSettings(smote_ratio=1).smote_ratio == 1.0 and isinstance(DetectorSettings(smote_ratio=1).smote_ratio, float)


def test_from_dict_wants_every_field_and_no_other():
    doc = DetectorSettings().as_dict()
    with pytest.raises(AsdError, match="missing density_k$"):
        DetectorSettings.from_dict({k: v for k, v in doc.items() if k != "density_k"})
    with pytest.raises(AsdError, match="unknown extra$"):
        DetectorSettings.from_dict({**doc, "extra": 1})
    with pytest.raises(AsdError, match="k must be 1 or more, got 0"):
        DetectorSettings.from_dict({**doc, "k": 0})


def test_of_reads_a_commands_options_and_the_settings_are_frozen():
    options = SimpleNamespace(k=2, smote_ratio=0.0, smote_k=3, seed=1, normalise="domain-z", density_k=2, out="x")
    s = DetectorSettings.of(options)
    assert s == DetectorSettings(2, 0.0, 3, 1, "domain-z", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.k = 5


def test_score_attrs_record_a_normalisation_and_nothing_for_none():
    assert DetectorSettings().score_attrs() == {}
    assert DetectorSettings(normalise="domain-z", density_k=9).score_attrs() == {"detect_normalise": "domain-z"}
    attrs = DetectorSettings(normalise="local-density", density_k=3).score_attrs()
    assert attrs == {"detect_normalise": "local-density", "detect_density_k": 3}
    assert isinstance(attrs["detect_density_k"], np.int64)
