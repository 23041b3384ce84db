"""`asdtool drift`: recent logged scores against the bundle's training scores (no torch anywhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, ks_2samp

from asdtool.deploy.bundle import Bundle, RecordingScore
from asdtool.deploy.scorelog import LOG_BUNDLE, LOG_HEADER, LOG_SCORES, append_log
from asdtool.deploy.drift import (BIN_WINDOWS, DRIFTING, NO_DATA, QUANTILES, STABLE, drift_report, iso_time, plot_drift,
                           read_log, report_json, share_bins)  # fmt: skip
from asdtool.core.errors import AsdError

from tests.conftest import HANG_SECONDS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = "2026-12-02T04:10:00Z"


def make_bundle(train: dict[tuple[str, str], list[float]], thresholds: dict[tuple[str, str], float] | None = None) -> Bundle:
    """Return a torch-free Bundle holding only what the log records: thresholds and training scores."""
    if thresholds is None:
        thresholds = {key: float(np.quantile(v, 0.9)) for key, v in train.items()}
    nested_thr: dict[str, dict[str, float]] = {}
    nested_train: dict[str, dict[str, list[float]]] = {}
    for (machine, section), thr in thresholds.items():
        nested_thr.setdefault(machine, {})[section] = thr
        nested_train.setdefault(machine, {})[section] = [float(v) for v in train[(machine, section)]]
    meta = {"content_sha256": "0" * 64, "kind": "model", "members": [{"name": "m"}], "thresholds": nested_thr,
            "train_scores": nested_train}  # fmt: skip
    return Bundle(Path("detector.asd"), meta, [], None, dict(thresholds))


def log_scores(folder: Path, bundle: Bundle, when: str, machine: str, section: str, scores, per_file: int = 5) -> None:
    """Append `scores` as windows of recordings of `per_file` windows each, all scored at `when`."""
    scores = [float(v) for v in scores]
    results = [
        RecordingScore(f"{machine}_{section}_{when}_{i}.wav", machine, section, [float(j) for j in range(len(chunk))],
                       chunk, max(chunk), bundle.thresholds[(machine, section)])  # fmt: skip
        for i, chunk in enumerate(scores[k : k + per_file] for k in range(0, len(scores), per_file))
    ]
    append_log(folder, bundle, results, when)


def one(report, machine: str = "fan", section: str = "00"):
    return next(r for r in report if (r.machine, r.section) == (machine, section))


@pytest.fixture
def train() -> np.ndarray:
    return np.random.default_rng(0).gamma(4.0, 0.05, 400)


# ----------------------------------------------------------------------------- the report


def test_log_format_is_the_bundles(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train})
    log_scores(tmp_path / "log", bundle, T0, "fan", "00", train[:7])
    lines = (tmp_path / "log" / LOG_SCORES).read_text().splitlines()
    assert lines[0] == ",".join(LOG_HEADER)
    assert len(lines) == 8
    ref = json.loads((tmp_path / "log" / LOG_BUNDLE).read_text())
    assert ref["train_scores"]["fan"]["00"] == [float(v) for v in train]
    log = read_log(tmp_path / "log")
    assert log.rows == 7
    s = log.sections[("fan", "00")]
    np.testing.assert_array_equal(s.scores, train[:7])  # repr in the CSV: exact round trip
    np.testing.assert_array_equal(s.lines, np.arange(2, 9))
    assert iso_time(float(s.times[0])) == T0


def test_recent_from_the_training_distribution_is_stable(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train})
    recent = np.random.default_rng(1).gamma(4.0, 0.05, 300)
    log_scores(tmp_path, bundle, T0, "fan", "00", recent)
    r = one(drift_report(read_log(tmp_path), 500))
    thr = bundle.thresholds[("fan", "00")]
    assert r.verdict == STABLE
    assert (r.train_n, r.recent_n) == (400, 300)
    assert r.train_quantiles == tuple(np.quantile(train, QUANTILES))
    assert r.recent_quantiles == tuple(np.quantile(recent, QUANTILES))
    assert r.train_share == pytest.approx(0.1) and r.train_share == np.mean(train > thr)
    assert r.above == int(np.sum(recent > thr)) and r.recent_share == r.above / 300
    ks = ks_2samp(recent, train)
    assert (r.ks, r.ks_p) == (pytest.approx(ks.statistic), pytest.approx(ks.pvalue))
    assert r.ks_p > 0.01
    assert r.binom_p == pytest.approx(binomtest(r.above, 300, r.train_share, alternative="greater").pvalue)
    assert r.binom_p >= 0.01
    assert (r.first, r.last) == (T0, T0)


def test_the_training_scores_themselves_are_stable(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train})
    log_scores(tmp_path, bundle, T0, "fan", "00", train)
    r = one(drift_report(read_log(tmp_path), 1000))
    assert r.verdict == STABLE and r.ks == 0.0 and r.recent_share == r.train_share == 0.1


def test_half_above_the_threshold_is_drifting(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train})
    thr = bundle.thresholds[("fan", "00")]
    below = np.sort(train)[:50]
    above = thr + 0.05 + np.random.default_rng(2).random(50)
    recent = np.concatenate([below, above])
    np.random.default_rng(3).shuffle(recent)
    log_scores(tmp_path, bundle, T0, "fan", "00", recent)
    r = one(drift_report(read_log(tmp_path), 500))
    assert r.verdict == DRIFTING
    assert (r.recent_n, r.above, r.recent_share) == (100, 50, 0.5)
    assert r.expected_share == 0.1
    assert r.binom_p == pytest.approx(binomtest(50, 100, 0.1, alternative="greater").pvalue)
    assert r.binom_p < 1e-10
    assert r.recent_quantiles == tuple(np.quantile(recent, QUANTILES))


def test_training_share_is_clipped_away_from_zero(tmp_path):
    train = np.linspace(0.1, 0.5, 9)
    bundle = make_bundle({("fan", "00"): train}, {("fan", "00"): 1.0})  # no training score above the threshold
    log_scores(tmp_path, bundle, T0, "fan", "00", [0.2] * 9 + [1.5])
    r = one(drift_report(read_log(tmp_path), 500))
    assert r.train_share == 0.0 and r.expected_share == pytest.approx(0.1)  # 1 / (9 + 1)
    assert r.binom_p == pytest.approx(1 - 0.9**10)  # one window of ten above: P(X >= 1)
    assert r.verdict == STABLE


def test_last_keeps_the_latest_windows_by_time(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train})
    late, early = "2026-12-02T06:00:00Z", "2026-12-02T05:00:00Z"
    normal = np.sort(train)[:40]
    high = np.full(60, 2.0)
    log_scores(tmp_path, bundle, late, "fan", "00", normal)  # written first, scored later
    log_scores(tmp_path, bundle, early, "fan", "00", high)  # appended after, scored earlier (another writer)
    log = read_log(tmp_path)
    r = one(drift_report(log, 40))
    assert (r.recent_n, r.first, r.last) == (40, late, late)
    assert r.recent_quantiles == tuple(np.quantile(normal, QUANTILES))
    assert r.verdict == STABLE and r.above == 0
    r = one(drift_report(log, 50))  # ten of the early high ones join: 20 % above is not yet significant
    assert (r.recent_n, r.above, r.first, r.last) == (50, 10, early, late)
    assert r.binom_p == pytest.approx(binomtest(10, 50, 0.1, alternative="greater").pvalue) and r.binom_p > 0.01
    assert r.verdict == STABLE
    r = one(drift_report(log, 60))  # 20 of 60 above is
    assert (r.recent_n, r.above, r.verdict) == (60, 20, DRIFTING)
    r = one(drift_report(log, 10_000))
    assert (r.recent_n, r.above) == (100, 60)


def test_ties_in_time_keep_the_later_rows(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train})
    log_scores(tmp_path, bundle, T0, "fan", "00", [0.1, 0.2, 0.3])
    log_scores(tmp_path, bundle, T0, "fan", "00", [0.4, 0.5, 0.6, 0.7])
    log = read_log(tmp_path)
    s = log.sections[("fan", "00")]
    np.testing.assert_array_equal(s.scores[s.recent(4)], [0.4, 0.5, 0.6, 0.7])
    r = one(drift_report(log, 4))
    assert r.recent_quantiles == tuple(np.quantile([0.4, 0.5, 0.6, 0.7], QUANTILES))


def test_fractional_seconds_and_offsets(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train})
    log_scores(tmp_path, bundle, "2026-12-02T04:10:00.250000Z", "fan", "00", [0.1])
    log_scores(tmp_path, bundle, "2026-12-02T05:10:00+02:00", "fan", "00", [0.2])  # 03:10 UTC: older
    r = one(drift_report(read_log(tmp_path), 10))
    assert (r.first, r.last) == ("2026-12-02T03:10:00Z", "2026-12-02T04:10:00.250000Z")


def test_section_without_rows_has_no_data(tmp_path, train):
    other = np.random.default_rng(5).gamma(3.0, 0.1, 100)
    bundle = make_bundle({("fan", "00"): train, ("fan", "01"): other, ("Pump", "00"): other})
    log_scores(tmp_path, bundle, T0, "fan", "00", train[:30])
    report = drift_report(read_log(tmp_path), 500)
    assert [(r.machine, r.section) for r in report] == [("fan", "00"), ("fan", "01"), ("Pump", "00")]
    for key in (("fan", "01"), ("Pump", "00")):
        r = one(report, *key)
        assert r.verdict == NO_DATA
        assert (r.recent_n, r.recent_quantiles, r.recent_share, r.above) == (0, None, None, 0)
        assert (r.ks, r.ks_p, r.binom_p, r.first, r.last) == (None,) * 5
        assert r.train_n == 100 and r.train_quantiles == tuple(np.quantile(other, QUANTILES))
    assert one(report).verdict == STABLE
    doc = json.loads(json.dumps(report_json(read_log(tmp_path), report, 500)))
    assert [s["verdict"] for s in doc["sections"]] == [STABLE, NO_DATA, NO_DATA]
    assert doc["sections"][1]["recent_q50"] is None and doc["sections"][1]["train_q99"] == np.quantile(other, 0.99)
    assert doc["span"] == {"first": T0, "last": T0}


def test_plot_is_a_png_written_atomically(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train, ("fan", "01"): train})
    for h in range(3):
        log_scores(tmp_path / "log", bundle, f"2026-12-02T0{h}:00:00Z", "fan", "00", train[h * 30 : h * 30 + 30] + 0.1 * h)
    log = read_log(tmp_path / "log")
    out = tmp_path / "plots" / "drift.png"
    plot_drift(log, drift_report(log, 500), out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in out.parent.iterdir()) == ["drift.png"]


def test_share_bins_are_consecutive_and_nearly_equal():
    bins = share_bins(45)
    assert [len(b) for b in bins] == [15, 15, 15]
    assert np.concatenate(bins).tolist() == list(range(45))
    assert [len(b) for b in share_bins(7)] == [7]
    assert [len(b) for b in share_bins(BIN_WINDOWS * 4 + 1)] == [17, 16, 16, 16, 16]
    assert share_bins(0) == []


# ----------------------------------------------------------------------------- malformed logs


def _valid(folder: Path) -> Bundle:
    bundle = make_bundle({("fan", "00"): [0.1, 0.2, 0.3]}, {("fan", "00"): 0.25})
    log_scores(folder, bundle, T0, "fan", "00", [0.1, 0.2, 0.3])
    return bundle


ROW = "2026-12-02T04:10:00Z,a.wav,fan,00,0,0,0.1,0.25,0"


@pytest.mark.parametrize("case, file, expected", [
    ("missing folder", None, "does not exist"),
    ("folder is a file", None, "is not a folder"),
    ("no bundle.json", LOG_BUNDLE, "is missing"),
    ("bundle.json not JSON", LOG_BUNDLE, "is not valid JSON (Expecting property name"),
    ("bundle.json without train_scores", LOG_BUNDLE, "no train_scores"),
    ("bundle.json section without train scores", LOG_BUNDLE, "no training scores of fan section 00"),
    ("no scores.csv", LOG_SCORES, "is missing"),
    ("empty scores.csv", LOG_SCORES, "is empty"),
    ("wrong header", LOG_SCORES, "is not a score log (its header is not time,file,"),
    ("too few fields", LOG_SCORES, "line 3: 8 fields instead of 9"),
    ("score not a number", LOG_SCORES, "line 3: score 'abc' is not a number"),
    ("score nan", LOG_SCORES, "line 4: score nan is not finite"),
    ("score inf", LOG_SCORES, "line 2: score inf is not finite"),
    ("bad time", LOG_SCORES, "line 3: time 'yesterday' is not ISO 8601"),
    ("bad decision", LOG_SCORES, "line 2: decision '2' is not 0 or 1"),
    ("bad window", LOG_SCORES, "line 2: window 'x' is not an integer"),
    ("unknown section", LOG_SCORES, "line 3: pump section 00 is not a section of the bundle"),
    ("not utf-8", LOG_SCORES, "line 3: not UTF-8 text"),
])  # fmt: skip
def test_malformed_logs_are_one_line_errors_naming_the_file(tmp_path, case, file, expected):
    folder = tmp_path / "log"
    scores = folder / LOG_SCORES
    header = ",".join(LOG_HEADER)
    if case == "folder is a file":
        folder.write_text("x")
    elif case != "missing folder":
        _valid(folder)
    ref = folder / LOG_BUNDLE
    edits = {
        "no bundle.json": lambda: ref.unlink(),
        "bundle.json not JSON": lambda: ref.write_text("{not json"),
        "bundle.json without train_scores": lambda: ref.write_text(json.dumps({"thresholds": {"fan": {"00": 0.25}}})),
        "bundle.json section without train scores": lambda: ref.write_text(json.dumps(
            {"thresholds": {"fan": {"00": 0.25}}, "train_scores": {"fan": {}}})),
        "no scores.csv": lambda: scores.unlink(),
        "empty scores.csv": lambda: scores.write_text(""),
        "wrong header": lambda: scores.write_text("time,file,score\n" + ROW + "\n"),
        "too few fields": lambda: scores.write_text(f"{header}\n{ROW}\n{ROW.rsplit(',', 1)[0]}\n"),
        "score not a number": lambda: scores.write_text(f"{header}\n{ROW}\n{ROW.replace(',0.1,', ',abc,')}\n"),
        "score nan": lambda: scores.write_text(f"{header}\n{ROW}\n{ROW}\n{ROW.replace(',0.1,', ',nan,')}\n"),
        "score inf": lambda: scores.write_text(f"{header}\n{ROW.replace(',0.1,', ',inf,')}\n"),
        "bad time": lambda: scores.write_text(f"{header}\n\n{ROW.replace(T0, 'yesterday')}\n"),  # a blank line counts
        "bad decision": lambda: scores.write_text(f"{header}\n{ROW[:-1]}2\n"),
        "bad window": lambda: scores.write_text(f"{header}\n{ROW.replace(',00,0,', ',00,x,')}\n"),
        "unknown section": lambda: scores.write_text(f"{header}\n{ROW}\n{ROW.replace(',fan,', ',pump,')}\n"),
        "not utf-8": lambda: scores.write_bytes(f"{header}\n{ROW}\n".encode() + b"\xff\xfe,x\n"),
    }
    if case in edits:
        edits[case]()
    with pytest.raises(AsdError) as info:
        read_log(folder)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message
    named = folder if file is None else folder / file
    assert message.startswith(f"{named}: ")


def test_last_below_one_is_refused(tmp_path):
    _valid(tmp_path)
    with pytest.raises(AsdError, match="--last must be at least 1"):
        drift_report(read_log(tmp_path), 0)


# ----------------------------------------------------------------------------- the command


def _asdtool(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "asdtool", "drift", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=HANG_SECONDS)  # fmt: skip


def _imported(stderr: str) -> list[str]:
    return [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]


def test_cli_writes_png_and_json_without_torch(tmp_path, train):
    bundle = make_bundle({("fan", "00"): train, ("fan", "01"): train, ("valve", "00"): train})
    folder = tmp_path / "log"
    log_scores(folder, bundle, "2026-12-02T04:00:00Z", "fan", "00", np.sort(train)[:50])
    log_scores(folder, bundle, "2026-12-02T05:00:00Z", "fan", "00", np.full(50, 3.0))
    log_scores(folder, bundle, "2026-12-02T04:30:00Z", "valve", "00", train[:100])
    r = _asdtool(folder, "--out", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not [m for m in _imported(r.stderr) if m.split(".")[0] == "torch"]
    assert "drifting" in r.stdout and "no data" in r.stdout
    assert "recent windows from 2026-12-02T04:00:00Z to 2026-12-02T05:00:00Z" in r.stdout
    assert (folder / "drift.png").read_bytes()[:8] == PNG_MAGIC
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(s["machine"], s["section"], s["verdict"]) for s in doc["sections"]] == [
        ("fan", "00", DRIFTING), ("fan", "01", NO_DATA), ("valve", "00", STABLE)]  # fmt: skip
    fan = doc["sections"][0]
    assert (fan["recent_n"], fan["above"], fan["recent_share"]) == (100, 50, 0.5)
    assert doc["rows"] == 200 and doc["last"] == 500

    r = _asdtool(folder, "--last", "50", "--plot", tmp_path / "p" / "d.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p" / "d.png").read_bytes()[:8] == PNG_MAGIC
    assert "recent windows from 2026-12-02T04:30:00Z to 2026-12-02T05:00:00Z" in r.stdout


def test_cli_missing_folder_is_one_line(tmp_path):
    r = _asdtool(tmp_path / "nowhere", cwd=tmp_path)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "nowhere" in errors[0] and "does not exist" in errors[0]
    assert not (tmp_path / "nowhere").exists()


def test_drift_help_imports_no_torch(tmp_path):
    r = _asdtool("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch" not in " ".join(_imported(r.stderr))


# ----------------------------------------------------------------------------- logs that cannot mix


def _two_bundles() -> tuple[Bundle, Bundle]:
    """Two bundles of the same sections with other thresholds and other content hashes."""
    a = make_bundle({("fan", "00"): [0.1, 0.2, 0.3]}, {("fan", "00"): 0.25})
    b = make_bundle({("fan", "00"): [0.1, 0.2, 0.3]}, {("fan", "00"): 0.5})
    b.meta["content_sha256"] = "1" * 64
    return a, b


@pytest.mark.parametrize("rows_of, record_of, line", [("b", "a", 3), ("a", "b", 2)])
def test_a_log_mixing_two_bundles_is_refused_in_one_line(tmp_path, rows_of, record_of, line):
    bundles = dict(zip("ab", _two_bundles()))
    folder = tmp_path / "log"
    log_scores(folder, bundles[record_of], T0, "fan", "00", [0.1])  # the folder's record and one row
    scores = folder / LOG_SCORES
    other = tmp_path / "other"
    log_scores(other, bundles[rows_of], T0, "fan", "00", [0.3, 0.4])
    rows = (other / LOG_SCORES).read_text().splitlines()[1:]
    if rows_of == "a":  # the record of b with a's rows only
        scores.write_text("\n".join([",".join(LOG_HEADER), *rows]) + "\n")
    else:  # a's log with b's rows appended
        scores.write_text(scores.read_text() + "\n".join(rows) + "\n")
    thr, ref = bundles[rows_of].thresholds[("fan", "00")], bundles[record_of].thresholds[("fan", "00")]
    with pytest.raises(AsdError) as info:
        read_log(folder)
    assert str(info.value) == (f"{scores}: line {line}: fan section 00 was scored with the threshold {thr!r}, the bundle "
                               f"in bundle.json has {ref!r}: the log mixes the rows of two bundles")  # fmt: skip


def test_a_decision_that_does_not_follow_from_its_score_is_refused(tmp_path):
    bundle, _ = _two_bundles()
    folder = tmp_path / "log"
    log_scores(folder, bundle, T0, "fan", "00", [0.1, 0.3])
    scores = folder / LOG_SCORES
    scores.write_text(scores.read_text().replace(",0.3,0.25,1", ",0.3,0.25,0"))
    with pytest.raises(AsdError) as info:
        read_log(folder)
    assert str(info.value) == f"{scores}: line 3: decision 0 does not follow from score 0.3 and threshold 0.25"


def test_text_cells_are_safe_in_a_spreadsheet_and_read_back(tmp_path):
    from asdtool.core.outputs import from_spreadsheet_text, spreadsheet_text

    texts = ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "''+x", "'plain", "plain", "", "a=b",
             "'-", "--x"]  # fmt: skip
    for text in texts:
        safe = spreadsheet_text(text)
        assert not safe.startswith(("=", "+", "-", "@", "\t", "\r")) and from_spreadsheet_text(safe) == text
    assert spreadsheet_text("-") == "-" == from_spreadsheet_text("-")  # standard input's name is no formula
    assert spreadsheet_text("=1+1") == "'=1+1" and spreadsheet_text("a=b") == "a=b" and spreadsheet_text("'=x") == "''=x"
    bundle = make_bundle({("=fan", "00"): [0.1, 0.2, 0.3]}, {("=fan", "00"): 0.25})
    folder = tmp_path / "log"
    append_log(folder, bundle, [RecordingScore("=cmd|' /C calc'!A0.wav", "=fan", "00", [0.0], [0.3], 0.3, 0.25)], T0)
    row = (folder / LOG_SCORES).read_text().splitlines()[1]
    assert row == f"{T0},'=cmd|' /C calc'!A0.wav,'=fan,00,0,0,0.3,0.25,1"
    log = read_log(folder)  # the machine type reads back as the bundle's
    assert list(log.sections) == [("=fan", "00")] and log.sections[("=fan", "00")].scores.tolist() == [0.3]


def _append_after(barrier, results, folder: str, which: int) -> None:
    """In a child process: wait for the other writer, then log one row of bundle `which`; put what happened."""
    bundle = _two_bundles()[which]
    barrier.wait()
    try:
        append_log(Path(folder), bundle, [RecordingScore("a.wav", "fan", "00", [0.0], [0.3], 0.3,
                                                         bundle.thresholds[("fan", "00")])], T0)  # fmt: skip
        results.put((which, "logged"))
    except AsdError as exc:
        results.put((which, exc.problem))


def test_two_writers_starting_one_fresh_folder_never_mix(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for i in range(20):
        folder = tmp_path / f"log{i}"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_append_after, args=(barrier, results, str(folder), w)) for w in (0, 1)]
        for p in procs:
            p.start()
        outcomes = dict(results.get(timeout=HANG_SECONDS) for _ in procs)
        for p in procs:
            p.join()
        assert sorted(outcomes.values()) == ["logged", "logs the scores of another bundle; give another --log folder"], (
            i, outcomes)
        winner = next(w for w, what in outcomes.items() if what == "logged")
        log = read_log(folder)  # one bundle's record and rows only
        assert log.reference["content_sha256"] == _two_bundles()[winner].meta["content_sha256"] and log.rows == 1
