"""Bounded reading of the user's YAML and JSON (asdtool.core.safeparse) and the range checks of score and serve.

A params file is read before anything else a command does, so a hostile one (a YAML bomb, 50,000
nested lists, a key given twice) must cost nothing and end in one line naming the file; a number
option must be finite and within sane bounds.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from asdtool.config import checks, options
from asdtool.core import safeparse
from asdtool.cli import app
from asdtool.config.options import build
from asdtool.config.stages import DetectConfig, ScoreConfig, ServeConfig
from asdtool.core.errors import AsdError, quote

from tests.conftest import HANG_SECONDS, run_asdtool

runner = CliRunner()
LOADERS = [pytest.param(safeparse._PyLoader, id="python")]
if hasattr(safeparse, "_CLoader"):
    LOADERS.append(pytest.param(safeparse._CLoader, id="libyaml"))
ALIASES = "anchors and aliases are not accepted, write the value out"
TOO_DEEP = "nests lists and mappings deeper than 64 levels"


def billion_laughs(levels: int = 9) -> str:
    """Return the YAML bomb: each level lists the previous one 9 times (9**levels strings once expanded)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    lines.append(f"score:\n  batch_size: *l{levels}")
    return "\n".join(lines) + "\n"


def nested_blocks(levels: int) -> str:
    """Return `levels` mappings nested by indentation, the innermost holding `a: 1`."""
    return "".join("  " * i + "a:\n" for i in range(levels - 1)) + "  " * (levels - 1) + "a: 1\n"


def nested_list(levels: int) -> list:
    """Return `levels` lists nested in one another: [[[...]]]."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _write(path: Path, content: str | bytes) -> tuple[Path, bytes]:
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    return path, data


def _one_error_line(r) -> str:
    """The single non-empty stderr line of a refused CLI run (exit 1, no traceback)."""
    stderr = r.stderr
    assert getattr(r, "returncode", getattr(r, "exit_code", None)) == 1, stderr
    assert "Traceback" not in stderr and "Traceback" not in (r.stdout or "")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# --- the YAML bomb ---------------------------------------------------------------------------------


def test_yaml_bomb_is_refused_at_its_first_anchor_in_little_memory(tmp_path):
    p, data = _write(tmp_path / "bomb.yaml", billion_laughs())
    tracemalloc.start()
    try:
        with pytest.raises(AsdError) as err:
            options.read_section(p, ScoreConfig.SECTION, None, ScoreConfig)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value) == f"{p}: defines the YAML anchor &l0 (line 1); {ALIASES}"
    assert peak < 5_000_000, peak  # expanded, the 9**9 strings would take gigabytes
    assert p.read_bytes() == data


def test_yaml_bomb_given_to_score_is_one_line_and_exit_1(tmp_path):
    bomb, data = _write(tmp_path / "bomb.yaml", billion_laughs())
    r = run_asdtool("score", tmp_path / "none.asd", tmp_path / "x.wav", "--params", bomb, timeout=HANG_SECONDS)
    assert _one_error_line(r) == f"error: {bomb}: defines the YAML anchor &l0 (line 1); {ALIASES}"
    assert bomb.read_bytes() == data


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    "text, problem",
    [
        ("a: &x 1\nb: 2\n", f"defines the YAML anchor &x (line 1); {ALIASES}"),
        ("a: 1\nb: *x\n", f"uses the YAML alias *x (line 2); {ALIASES}"),
        ("a: 1\nb: !!set {&k x: null}\n", f"defines the YAML anchor &k (line 2); {ALIASES}"),
        ("base: {x: 1}\nmore:\n  <<: *base\n", f"uses the YAML alias *base (line 3); {ALIASES}"),
    ],
)
def test_every_anchor_and_alias_is_refused(loader, text, problem):
    with pytest.raises(AsdError) as err:
        safeparse.loads_yaml(text, "f.yaml", loader=loader)
    assert str(err.value) == f"f.yaml: {problem}"


# --- nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", LOADERS)
def test_nesting_is_refused_beyond_64_levels(loader):
    assert safeparse.loads_yaml("[" * 64 + "]" * 64, loader=loader) == nested_list(64)
    inner = safeparse.loads_yaml(nested_blocks(64), loader=loader)
    for _ in range(63):
        inner = inner["a"]
    assert inner == {"a": 1}
    for text, line in (("[" * 65 + "]" * 65, 1), ("x: " + "{a: " * 65 + "1" + "}" * 65, 1), (nested_blocks(65), 65),
                       ("score: " + "[" * 50_000, 1)):  # fmt: skip
        with pytest.raises(AsdError) as err:
            safeparse.loads_yaml(text, "f.yaml", loader=loader)
        assert str(err.value) == f"f.yaml: {TOO_DEEP} (line {line})"


def test_deeply_nested_params_are_one_line_without_traceback(tmp_path):
    p, data = _write(tmp_path / "deep.yaml", "score:\n  batch_size: " + "[" * 50_000 + "\n")
    r = runner.invoke(app, ["score", str(tmp_path / "none.asd"), str(tmp_path / "x.wav"), "--params", str(p)])
    assert isinstance(r.exception, SystemExit), r.exception  # not a RecursionError caught by the runner
    assert _one_error_line(r) == f"error: {p}: {TOO_DEEP} (line 2)"
    assert p.read_bytes() == data


def test_json_nesting_and_duplicate_keys_are_refused(tmp_path):
    assert safeparse.loads_json("[" * 64 + "]" * 64) == nested_list(64)
    for text in ("[" * 65 + "]" * 65, '{"a": ' * 65 + "1" + "}" * 65, "[" * 50_000):
        with pytest.raises(AsdError) as err:
            safeparse.loads_json(text, "m.json")
        assert str(err.value) == "m.json: nests arrays and objects deeper than 64 levels"
    with pytest.raises(AsdError) as err:
        safeparse.loads_json('{"fan": {"auc": 1, "auc": 2}}', "m.json")
    assert str(err.value) == "m.json: has the key 'auc' twice in one object"
    p, data = _write(tmp_path / "m.json", '\ufeff{"a": [1, 2.5, null]}')
    assert safeparse.read_json(p, what="metrics file") == {"a": [1, 2.5, None]}  # a byte-order mark is dropped
    assert p.read_bytes() == data


# --- duplicate keys ---------------------------------------------------------------------------------


def test_duplicate_params_key_is_refused_naming_it(tmp_path):
    p, data = _write(tmp_path / "params.yaml", "score:\n  batch_size: 4\n  hop: 0.5\n  batch_size: 8\n")
    with pytest.raises(AsdError) as err:
        build(ScoreConfig, p, None, {"bundle": Path("b.asd"), "paths": ["x.wav"]})
    assert str(err.value) == f"{p}: has the key 'batch_size' twice in one mapping (lines 2 and 4)"
    assert p.read_bytes() == data
    _write(p, "score: {}\nscore: {batch_size: 8}\n")
    with pytest.raises(AsdError, match=r"has the key 'score' twice in one mapping \(lines 1 and 2\)"):
        build(ScoreConfig, p, None, {"bundle": Path("b.asd"), "paths": ["x.wav"]})


@pytest.mark.parametrize("loader", LOADERS)
def test_keys_equal_as_values_are_duplicates_and_merge_keys_still_work(loader):
    with pytest.raises(AsdError) as err:
        safeparse.loads_yaml("1: a\ntrue: b\n", "f.yaml", loader=loader)  # 1 == True: one dict key
    assert str(err.value) == "f.yaml: has the key True twice in one mapping (lines 1 and 2)"
    assert safeparse.loads_yaml("<<: {a: 1, b: 2}\na: 3\n", loader=loader) == {"a": 3, "b": 2}
    assert safeparse.loads_yaml("'1': a\n1: b\n", loader=loader) == {"1": "a", 1: "b"}


# --- the file itself ---------------------------------------------------------------------------------


def test_file_problems_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(AsdError) as err:
        safeparse.read_yaml(tmp_path / "none.yaml", what="params file")
    assert str(err.value) == f"{tmp_path / 'none.yaml'}: params file does not exist"
    with pytest.raises(AsdError) as err:
        safeparse.read_yaml(tmp_path, what="params file")
    assert str(err.value) == f"{tmp_path}: params file is a folder, not a file"
    big, data = _write(tmp_path / "big.yaml", "a: 1\n" + "#" * 1_000_000)
    with pytest.raises(AsdError) as err:
        safeparse.read_yaml(big, what="params file")
    assert str(err.value) == f"{big}: params file is larger than the 1,000,000 bytes accepted"
    assert big.read_bytes() == data
    with pytest.raises(AsdError) as err:
        safeparse.read_json(big, what="meta file", max_bytes=100)
    assert str(err.value) == f"{big}: meta file is larger than the 100 bytes accepted"
    latin, _ = _write(tmp_path / "latin.yaml", b"name: M\xfcller\n")
    with pytest.raises(AsdError) as err:
        safeparse.read_yaml(latin, what="meta params file")
    assert str(err.value) == f"{latin}: meta params file is not UTF-8 text (byte 7 cannot be decoded)"


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    "text, python, libyaml",
    [
        ("score: [unclosed\n", "expected ',' or ']', but got '<stream end>' (line 2, column 1)",
         "did not find expected ',' or ']' (line 2, column 1)"),
        ("a: 1\n---\nb: 2\n", "but found another document (line 2, column 1)",
         "but found another document (line 2, column 1)"),
        ("when: 2024-13-40\n", "month must be in 1..12", "month must be in 1..12"),
        ("n: " + "9" * 5000 + "\n", "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; use sys.set...",
         "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; use sys.set..."),
    ],
)  # fmt: skip
def test_syntax_errors_are_the_parsers_problem_in_one_short_line(loader, text, python, libyaml):
    with pytest.raises(AsdError) as err:
        safeparse.loads_yaml(text, "f.yaml", loader=loader)
    expected = python if loader is safeparse._PyLoader else libyaml
    assert str(err.value) == f"f.yaml: is not valid YAML ({expected})"


def test_a_type_error_quotes_only_the_start_of_a_huge_value(tmp_path):
    p, data = _write(tmp_path / "params.yaml", "detect:\n  k: '" + "x" * 100_000 + "'\n  out: s\n")
    with pytest.raises(AsdError) as err:
        build(DetectConfig, p, None, {"embeddings": Path("e.h5")})
    assert str(err.value) == f"{p}: detect.k: expected an integer, got {quote('x' * 100_000)}"
    assert len(str(err.value)) < len(str(p)) + 120
    assert p.read_bytes() == data
    _write(p, "detect:\n  smote_ratio: [" + ", ".join(["1"] * 10_000) + "]\n")
    with pytest.raises(AsdError) as err:
        build(DetectConfig, p, None, {"embeddings": Path("e.h5"), "out": Path("s")})
    assert str(err.value) == f"{p}: detect.smote_ratio: expected a number, got [1, 1, 1, 1, 1, 1, ...]"
    _write(p, "detect:\n  ? " + "k" * 10_000 + "\n  : 1\n")  # an explicit key: a plain one ends at 1024 characters
    with pytest.raises(AsdError) as err:
        build(DetectConfig, p, None, {"embeddings": Path("e.h5"), "out": Path("s")})
    assert str(err.value) == f"{p}: section 'detect' has unknown option {quote('k' * 10_000)}"


# --- range checks ---------------------------------------------------------------------------------------

SERVE = {"bundle": Path("b.asd")}
SCORE = {"bundle": Path("b.asd"), "paths": ["x.wav"]}
ONE_SAMPLE = "is shorter than one sample at 16 kHz (6.25e-05 s)"


@pytest.mark.parametrize(
    "cls, given, message",
    [
        (ServeConfig, {"max_wait_ms": float("inf")}, "--max-wait-ms must be a finite number, got inf"),
        (ServeConfig, {"max_wait_ms": float("nan")}, "--max-wait-ms must be a finite number, got nan"),
        (ServeConfig, {"max_wait_ms": -1.0}, "--max-wait-ms must lie in [0, 10000] milliseconds, got -1.0"),
        (ServeConfig, {"max_wait_ms": 10_001.0}, "--max-wait-ms must lie in [0, 10000] milliseconds, got 10001.0"),
        (ServeConfig, {"batch_size": 0}, "--batch-size must lie in 1..4096, got 0"),
        (ServeConfig, {"batch_size": 4097}, "--batch-size must lie in 1..4096, got 4097"),
        (ServeConfig, {"max_bytes": 0}, "--max-bytes must lie in 1..2147483648, got 0"),
        (ServeConfig, {"max_bytes": 2**31 + 1}, "--max-bytes must lie in 1..2147483648, got 2147483649"),
        (ServeConfig, {"threads": 0}, "--threads must lie in 1..1024, got 0"),
        (ServeConfig, {"threads": 1025}, "--threads must lie in 1..1024, got 1025"),
        (ServeConfig, {"port": 0}, "--port must lie in 1..65535, got 0"),
        (ServeConfig, {"port": 65_536}, "--port must lie in 1..65535, got 65536"),
        (ServeConfig, {"hop": float("inf")}, "--hop must be a finite number, got inf"),
        (ServeConfig, {"hop": float("nan")}, "--hop must be a finite number, got nan"),
        (ServeConfig, {"hop": 0.0}, "--hop must lie in (0, 3600] seconds, got 0.0"),
        (ServeConfig, {"hop": 3601.0}, "--hop must lie in (0, 3600] seconds, got 3601.0"),
        (ServeConfig, {"hop": 0.00001}, f"--hop 1e-05 s {ONE_SAMPLE}"),
        (ServeConfig, {"max_seconds": float("inf")}, "--max-seconds must be a finite number, got inf"),
        (ServeConfig, {"max_seconds": 0.0}, "--max-seconds must lie in (0, 86400] seconds, got 0.0"),
        (ServeConfig, {"max_seconds": 86_401.0}, "--max-seconds must lie in (0, 86400] seconds, got 86401.0"),
        (ScoreConfig, {"batch_size": 4097}, "--batch-size must lie in 1..4096, got 4097"),
        (ScoreConfig, {"batch_size": 0}, "--batch-size must lie in 1..4096, got 0"),
        (ScoreConfig, {"threads": 2000}, "--threads must lie in 1..1024, got 2000"),
        (ScoreConfig, {"hop": -0.5}, "--hop must lie in (0, 3600] seconds, got -0.5"),
        (ScoreConfig, {"hop": 0.00001}, f"--hop 1e-05 s {ONE_SAMPLE}"),
        (ScoreConfig, {"hop": float("nan")}, "--hop must be a finite number, got nan"),
        (ScoreConfig, {"max_seconds": float("nan")}, "--max-seconds must be a finite number, got nan"),
        (ScoreConfig, {"max_seconds": -1.0}, "--max-seconds must lie in (0, 86400] seconds, got -1.0"),
        (ScoreConfig, {"max_seconds": 1e6}, "--max-seconds must lie in (0, 86400] seconds, got 1000000.0"),
        (DetectConfig, {"smote_ratio": float("inf")}, "--smote-ratio must be a finite number, got inf"),
        (DetectConfig, {"smote_ratio": float("nan")}, "--smote-ratio must be a finite number, got nan"),
        (DetectConfig, {"smote_ratio": -1.0}, "--smote-ratio must be at least 0, got -1.0"),
    ],
)  # fmt: skip
def test_options_out_of_range_or_not_finite_are_refused(cls, given, message):
    base = {ServeConfig: SERVE, ScoreConfig: SCORE, DetectConfig: {"embeddings": Path("e.h5"), "out": Path("s")}}[cls]
    with pytest.raises(AsdError) as err:
        build(cls, None, None, {**base, **given})
    assert str(err.value) == message


def test_the_bounds_themselves_are_accepted():
    cfg = build(ServeConfig, None, None, {**SERVE, "max_wait_ms": 10_000.0, "batch_size": 4096, "max_bytes": 2**31,
                                          "threads": 1024, "port": 65_535, "hop": 1 / 16_000, "max_seconds": 86_400.0})  # fmt: skip
    assert (cfg.max_wait_ms, cfg.batch_size, cfg.hop) == (10_000.0, 4096, 1 / 16_000)
    cfg = build(ServeConfig, None, None, {**SERVE, "max_wait_ms": 0.0, "batch_size": 1, "max_bytes": 1, "threads": 1,
                                          "port": 1, "hop": 3600.0})  # fmt: skip
    assert (cfg.max_wait_ms, cfg.port, cfg.hop) == (0.0, 1, 3600.0)
    cfg = build(ScoreConfig, None, None, {**SCORE, "batch_size": 4096, "hop": 3600.0, "max_seconds": 86_400.0})
    assert (cfg.batch_size, cfg.hop, cfg.max_seconds) == (4096, 3600.0, 86_400.0)


def test_the_configs_sample_rate_is_the_readers():
    from asdtool.data.audio import SAMPLE_RATE

    assert checks.SAMPLE_RATE == SAMPLE_RATE == 16_000


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_serve_max_wait_ms_not_finite_is_one_line_and_exit_1(tmp_path, value):
    r = runner.invoke(app, ["serve", str(tmp_path / "none.asd"), "--max-wait-ms", value])
    assert isinstance(r.exception, SystemExit)
    assert _one_error_line(r) == f"error: --max-wait-ms must be a finite number, got {value}"


def test_score_hop_shorter_than_a_sample_names_the_sample(tmp_path):
    params, data = _write(tmp_path / "params.yaml", "score:\n  hop: 0.00001\n")
    r = runner.invoke(app, ["score", str(tmp_path / "none.asd"), str(tmp_path / "x.wav"), "--params", str(params)])
    assert _one_error_line(r) == f"error: --hop 1e-05 s {ONE_SAMPLE}"
    assert params.read_bytes() == data
    r = runner.invoke(app, ["score", str(tmp_path / "none.asd"), str(tmp_path / "x.wav"), "--hop", "0.00002"])
    assert _one_error_line(r) == f"error: --hop 2e-05 s {ONE_SAMPLE}"


def test_score_recordings_names_the_sample_too():
    from asdtool.deploy.scoring import score_recordings

    with pytest.raises(AsdError) as err:
        score_recordings(SimpleNamespace(seconds=1.0), [], hop=0.00002)  # rounds to 0 samples
    assert str(err.value) == f"--hop 2e-05 s {ONE_SAMPLE}"
