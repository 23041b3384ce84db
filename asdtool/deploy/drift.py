"""Score drift: the recent scores of a log folder against the bundle's own training scores.

`asdtool score --log DIR` and `asdtool serve --log DIR` append every scored window to
`DIR/scores.csv` and record the bundle once in `DIR/bundle.json`, with each section's decision
threshold and the training clips' own (leave-one-out) scores. `asdtool drift DIR` compares, per
machine type and section, the latest windows with those training scores:

- quantiles (50, 90, 99 %) of both;
- the share of windows above the threshold, recent versus training (about 10 % at the default
  0.9 gamma quantile of the decision threshold);
- the two-sample Kolmogorov-Smirnov statistic and p-value of recent versus training scores;
- a verdict (`RULE`): "drifting" when the recent share above the threshold exceeds the training
  share significantly (one-sided binomial test, p < 0.01), else "stable"; "no data" for a section
  of the bundle with no logged windows.

The PNG (`plot_drift`) shows, per section, the recent windows' scores over time against the
threshold and the training quantiles, and the share above the threshold in consecutive bins of
about `BIN_WINDOWS` windows against the training share.

Nothing here imports torch: the command reads a CSV and a JSON file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from asdtool.core import safeparse
from asdtool.core.errors import AsdError
from asdtool.core.outputs import from_spreadsheet_text
from asdtool.deploy.scorelog import LOG_BUNDLE, LOG_HEADER, LOG_SCORES

QUANTILES = (0.5, 0.9, 0.99)
SIGNIFICANCE = 0.01  # binomial p-value below which a section is drifting
BIN_WINDOWS = 20  # windows per bin of the share-over-time panel
DRIFTING, STABLE, NO_DATA = "drifting", "stable", "no data"
RULE = (
    f"drifting when the share of recent windows above the threshold exceeds the training share with a one-sided "
    f"binomial test p < {SIGNIFICANCE:g} (training share clipped to [1/(n_train+1), 1 - 1/(n_train+1)]); "
    f"else stable; no data without logged windows"
)


# ----------------------------------------------------------------------------- reading a log folder


@dataclass
class SectionLog:
    """One section's training reference and its logged windows, in the order of scores.csv."""

    machine: str
    section: str
    threshold: float  # the bundle's decision threshold of the section
    train: np.ndarray  # float64 [n_train]: the training clips' leave-one-out scores
    times: np.ndarray  # float64 [n]: POSIX seconds (UTC) of each window's scoring
    scores: np.ndarray  # float64 [n]
    decisions: np.ndarray  # int8 [n]: the logged decision (1 = above the threshold)
    lines: np.ndarray  # int64 [n]: the window's line in scores.csv

    def recent(self, last: int) -> np.ndarray:
        """Return the indices of the `last` latest windows, oldest first (by time, then order in the file)."""
        order = np.lexsort((self.lines, self.times))
        return order[max(len(order) - last, 0) :]


@dataclass
class Log:
    """A score log folder: the bundle's reference (bundle.json) and the windows of scores.csv by section."""

    folder: Path
    reference: dict  # bundle.json as written by asdtool.deploy.scorelog.log_reference
    sections: dict[tuple[str, str], SectionLog]  # (machine, section) -> its windows; every section of the bundle
    rows: int  # windows in scores.csv


def read_log(folder: str | Path) -> Log:
    """Read a log folder; one-line AsdErrors name the file (and the line of scores.csv) of any problem."""
    folder = Path(folder)
    if not folder.exists():
        raise AsdError("does not exist (give the folder of asdtool score --log or serve --log)", folder)
    if not folder.is_dir():
        raise AsdError("is not a folder (give the folder of asdtool score --log or serve --log)", folder)
    reference, sections = _read_reference(folder / LOG_BUNDLE)
    rows = _read_scores(folder / LOG_SCORES, sections)
    return Log(folder, reference, sections, rows)


def _read_reference(path: Path) -> tuple[dict, dict[tuple[str, str], SectionLog]]:
    """Return bundle.json and an empty SectionLog per section of it (machine types case-insensitively sorted)."""
    if not path.is_file():
        raise AsdError("is missing: not a score log folder (asdtool score --log writes it)", path)
    ref = safeparse.read_json(path, what="score log record")

    def invalid(what: str) -> AsdError:
        return AsdError(f"is not a score log's bundle.json ({what})", path)

    if not isinstance(ref, dict):
        raise invalid("not a JSON object")
    for key in ("thresholds", "train_scores"):
        if not isinstance(ref.get(key), dict) or not all(isinstance(v, dict) for v in ref[key].values()):
            hint = "; log with a bundle exported by this asdtool version" if key == "train_scores" else ""
            raise invalid(f"no {key} by machine type and section{hint}")
    sections: dict[tuple[str, str], SectionLog] = {}
    empty = np.zeros(0)
    for machine in sorted(ref["thresholds"], key=str.lower):
        for section in sorted(ref["thresholds"][machine]):
            thr = ref["thresholds"][machine][section]
            if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
                raise invalid(f"the threshold of {machine} section {section} is not a finite number")
            train = ref["train_scores"].get(machine, {}).get(section)
            if not isinstance(train, list) or not train:
                raise invalid(f"no training scores of {machine} section {section}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in train):
                raise invalid(f"the training scores of {machine} section {section} are not all numbers")
            train_arr = np.asarray(train, dtype=np.float64)
            if not np.isfinite(train_arr).all():
                raise invalid(f"the training scores of {machine} section {section} are not all finite")
            sections[(machine, section)] = SectionLog(machine, section, float(thr), train_arr, empty, empty,
                                                      empty.astype(np.int8), empty.astype(np.int64))  # fmt: skip
    if not sections:
        raise invalid("no sections")
    return ref, sections


def _parse_time(text: str) -> float:
    """Return POSIX seconds of an ISO 8601 time (a time without an offset is UTC); ValueError if it is not one."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _read_scores(path: Path, sections: dict[tuple[str, str], SectionLog]) -> int:
    """Fill `sections` with the windows of scores.csv; return how many there are."""
    import csv
    import fcntl
    import io

    if not path.is_file():
        raise AsdError("is missing: nothing has been logged in this folder yet", path)
    try:
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # writers append under an exclusive lock: whole rows only
            data = f.read()
    except OSError as exc:
        raise AsdError(f"cannot be read ({exc.strerror or exc.__class__.__name__})", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AsdError(f"line {line}: not UTF-8 text", path) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise AsdError(f"is empty (a score log starts with the header {','.join(LOG_HEADER)})", path)
    if header != list(LOG_HEADER):
        raise AsdError(f"is not a score log (its header is not {','.join(LOG_HEADER)})", path)
    columns: dict[tuple[str, str], tuple[list, list, list, list]] = {key: ([], [], [], []) for key in sections}
    times: dict[str, float] = {}  # the windows of one scoring share its time: parse each once
    rows = 0
    try:
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            key, when, score, threshold, decision = _parse_row(row, line, path, times)
            if key not in columns:
                raise AsdError(f"line {line}: {key[0]} section {key[1]} is not a section of the bundle in {LOG_BUNDLE}",
                               path)  # fmt: skip
            if threshold != sections[key].threshold:
                raise AsdError(f"line {line}: {key[0]} section {key[1]} was scored with the threshold {threshold!r}, "
                               f"the bundle in {LOG_BUNDLE} has {sections[key].threshold!r}: the log mixes the rows "
                               "of two bundles", path)  # fmt: skip
            for column, value in zip(columns[key], (when, score, decision, line)):
                column.append(value)
            rows += 1
    except csv.Error as exc:
        raise AsdError(f"line {reader.line_num}: {exc}", path) from None
    for key, (t, s, d, n) in columns.items():
        log = sections[key]
        log.times = np.asarray(t, dtype=np.float64)
        log.scores = np.asarray(s, dtype=np.float64)
        log.decisions = np.asarray(d, dtype=np.int8)
        log.lines = np.asarray(n, dtype=np.int64)
    return rows


def _parse_row(row: list[str], line: int, path: Path,
               times: dict[str, float]) -> tuple[tuple[str, str], float, float, float, int]:  # fmt: skip
    """Return ((machine, section), POSIX time, score, threshold, decision) of one row of scores.csv, or raise naming its line."""
    if len(row) != len(LOG_HEADER):
        raise AsdError(f"line {line}: {len(row)} fields instead of {len(LOG_HEADER)} ({','.join(LOG_HEADER)})", path)
    when, _file, machine, section, window, start, score, threshold, decision = row
    if when not in times:
        try:
            times[when] = _parse_time(when)
        except ValueError:
            raise AsdError(f"line {line}: time {when!r} is not ISO 8601 (like 2026-12-02T04:10:00Z)", path) from None
    for name, value in (("window", window), ("start", start), ("score", score), ("threshold", threshold)):
        try:
            int(value) if name == "window" else float(value)
        except ValueError:
            kind = "an integer" if name == "window" else "a number"
            raise AsdError(f"line {line}: {name} {value!r} is not {kind}", path) from None
    value = float(score)
    if not math.isfinite(value):
        raise AsdError(f"line {line}: score {score} is not finite", path)
    if decision not in ("0", "1"):
        raise AsdError(f"line {line}: decision {decision!r} is not 0 or 1", path)
    limit = float(threshold)
    if int(decision) != int(value > limit):
        raise AsdError(f"line {line}: decision {decision} does not follow from score {score} and threshold {threshold}", path)
    key = (from_spreadsheet_text(machine), from_spreadsheet_text(section))
    return key, times[when], value, limit, int(decision)


# ----------------------------------------------------------------------------- the report


@dataclass
class SectionDrift:
    """One section's recent scores against its training scores (None: no recent windows)."""

    machine: str
    section: str
    threshold: float
    train_n: int
    train_quantiles: tuple[float, ...]  # at QUANTILES
    train_share: float  # share of training scores above the threshold
    expected_share: float  # train_share clipped to [1/(n_train+1), 1 - 1/(n_train+1)]: the binomial test's p
    recent_n: int
    recent_quantiles: tuple[float, ...] | None
    recent_share: float | None  # share of recent windows above the threshold
    above: int  # recent windows above the threshold
    ks: float | None  # two-sample Kolmogorov-Smirnov statistic, recent vs training
    ks_p: float | None
    binom_p: float | None  # one-sided binomial test of `above` out of `recent_n` against expected_share
    first: str | None  # ISO 8601 UTC time of the oldest recent window
    last: str | None  # ... and of the latest
    verdict: str  # DRIFTING, STABLE or NO_DATA

    def to_dict(self) -> dict:
        """Return the section as a JSON-ready dict (quantiles as q50, q90, q99)."""
        out = {"machine": self.machine, "section": self.section, "threshold": self.threshold, "train_n": self.train_n}
        out.update({f"train_q{quantile_label(q)}": v for q, v in zip(QUANTILES, self.train_quantiles)})
        out.update(train_share=self.train_share, expected_share=self.expected_share, recent_n=self.recent_n)
        recent_q = self.recent_quantiles or (None,) * len(QUANTILES)
        out.update({f"recent_q{quantile_label(q)}": v for q, v in zip(QUANTILES, recent_q)})
        out.update(recent_share=self.recent_share, above=self.above, ks=self.ks, ks_p=self.ks_p, binom_p=self.binom_p,
                   first=self.first, last=self.last, verdict=self.verdict)  # fmt: skip
        return out


def quantile_label(q: float) -> str:
    """Return a quantile as its percentage label: 0.9 -> "90"."""
    return f"{q * 100:g}"


def iso_time(seconds: float) -> str:
    """Return POSIX seconds as ISO 8601 UTC (`2026-12-02T04:10:00Z`; microseconds only when there are some)."""
    when = datetime.fromtimestamp(seconds, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S" + (".%f" if when.microsecond else "") + "Z")


def drift_report(log: Log, last: int) -> list[SectionDrift]:
    """Compare, per section of the bundle, the `last` latest windows with the training scores.

    Recent windows are the `last` latest of the section by time (ties: the later in scores.csv).
    Shares above the threshold count scores strictly above the section's threshold in bundle.json,
    as the logged decisions do. Quantiles are numpy's (linear interpolation) at QUANTILES.

    Verdict rule: with k of the n recent windows above the threshold and p the training share
    above it, clipped to [1/(n_train+1), 1 - 1/(n_train+1)] (a training share of 0 or 1 would make
    any window decisive), a section is "drifting" when the one-sided binomial test of k out of n
    against p (scipy.stats.binomtest, alternative "greater") gives a p-value below SIGNIFICANCE
    (0.01), "stable" otherwise, and "no data" when no window of it is logged.
    """
    from scipy.stats import binomtest, ks_2samp

    if last < 1:
        raise AsdError(f"--last must be at least 1 (got {last})")
    report = []
    for (machine, section), s in log.sections.items():
        n_train = len(s.train)
        train_q = tuple(float(v) for v in np.quantile(s.train, QUANTILES))
        train_share = float(np.mean(s.train > s.threshold))
        floor = 1.0 / (n_train + 1)
        expected = min(max(train_share, floor), 1.0 - floor)
        idx = s.recent(last)
        if len(idx) == 0:
            report.append(SectionDrift(machine, section, s.threshold, n_train, train_q, train_share, expected, 0, None,
                                       None, 0, None, None, None, None, None, NO_DATA))  # fmt: skip
            continue
        recent = s.scores[idx]
        above = int(np.sum(recent > s.threshold))
        ks = ks_2samp(recent, s.train)
        binom_p = float(binomtest(above, len(recent), expected, alternative="greater").pvalue)
        report.append(SectionDrift(
            machine, section, s.threshold, n_train, train_q, train_share, expected, len(recent),
            tuple(float(v) for v in np.quantile(recent, QUANTILES)), above / len(recent), above,
            float(ks.statistic), float(ks.pvalue), binom_p, iso_time(s.times[idx[0]]), iso_time(s.times[idx[-1]]),
            DRIFTING if binom_p < SIGNIFICANCE else STABLE,
        ))  # fmt: skip
    return report


def time_span(report: list[SectionDrift]) -> tuple[str, str] | None:
    """Return the first and last time of the recent windows over all sections (None: none logged)."""
    firsts = [r.first for r in report if r.first is not None]
    lasts = [r.last for r in report if r.last is not None]
    if not firsts:
        return None
    return min(firsts, key=_parse_time), max(lasts, key=_parse_time)


def report_json(log: Log, report: list[SectionDrift], last: int) -> dict:
    """Return the report as a JSON document: the log, its bundle, the rule, the time span and the sections."""
    span = time_span(report)
    return {
        "log": str(log.folder),
        "bundle": log.reference.get("bundle"),
        "content_sha256": log.reference.get("content_sha256"),
        "rows": log.rows,
        "last": last,
        "quantiles": list(QUANTILES),
        "rule": RULE,
        "span": {"first": span[0], "last": span[1]} if span else None,
        "sections": [r.to_dict() for r in report],
    }


# ----------------------------------------------------------------------------- the plot


def share_bins(n: int, size: int = BIN_WINDOWS) -> list[np.ndarray]:
    """Split chronological window indices 0..n-1 into ceil(n / size) consecutive bins of nearly equal size.

    Every bin holds between size/2 and size windows once n >= size (fewer than `size`: one bin).
    """
    return [b for b in np.array_split(np.arange(n), max(math.ceil(n / size), 1)) if len(b)]


def plot_drift(log: Log, report: list[SectionDrift], path: str | Path) -> None:
    """Write the drift PNG atomically: one row of two panels per section of the report.

    Left: the recent windows' scores over time (blue: logged decision normal, red: anomalous),
    the threshold (solid) and the training 50/90/99 % quantiles (dashed). Right: the share of
    windows above the threshold in consecutive bins of about BIN_WINDOWS (20) recent windows, each
    at the time of its latest window, against the training share (dashed) and the share a bin of
    20 windows exceeds with probability at most 1 % when nothing drifts (dotted; binomial 99 %
    quantile at the clipped training share).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from scipy.stats import binom

    from asdtool.core.atomic import atomic_path

    rows = max(len(report), 1)
    fig = Figure(figsize=(12, 2.8 * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2, squeeze=False)
    colours = {DRIFTING: "tab:red", STABLE: "tab:green", NO_DATA: "0.4"}
    for (left, right), r in zip(axes, report):
        s = log.sections[(r.machine, r.section)]
        idx = s.recent(r.recent_n) if r.recent_n else np.zeros(0, dtype=np.int64)
        when = [datetime.fromtimestamp(t, timezone.utc) for t in s.times[idx]]
        scores, decided = s.scores[idx], s.decisions[idx] == 1
        share = "" if r.recent_share is None else f": {r.recent_share:.0%} above vs {r.train_share:.0%} in training"
        left.set_title(f"{r.machine} section {r.section} - {r.verdict}{share}", fontsize=9, color=colours[r.verdict],
                       loc="left")  # fmt: skip
        for q, v in zip(QUANTILES, r.train_quantiles):
            left.axhline(v, color="0.55", linestyle="--", linewidth=0.9, label=f"train q{quantile_label(q)} {v:.3g}")
        left.axhline(r.threshold, color="tab:red", linewidth=1.1, label=f"threshold {r.threshold:.3g}")
        if len(idx):
            left.scatter([w for w, d in zip(when, decided) if not d], scores[~decided], s=9, color="tab:blue",
                         label="normal", zorder=3)  # fmt: skip
            left.scatter([w for w, d in zip(when, decided) if d], scores[decided], s=9, color="tab:red",
                         label="anomalous", zorder=3)  # fmt: skip
            for ax in (left, right):
                locator = AutoDateLocator()
                ax.xaxis.set_major_locator(locator)
                ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
            above = scores > r.threshold
            bins = share_bins(len(above))
            right.plot([when[b[-1]] for b in bins], [float(np.mean(above[b])) for b in bins], marker="o", markersize=3,
                       color="tab:purple", linewidth=1, label=f"recent, bins of ~{BIN_WINDOWS} windows")  # fmt: skip
        else:
            for ax in (left, right):
                ax.text(0.5, 0.5, "no logged windows", ha="center", va="center", transform=ax.transAxes, color="0.4")
                ax.set_xticks([])
        right.axhline(r.train_share, color="0.55", linestyle="--", linewidth=0.9,
                      label=f"training share {r.train_share:.0%}")  # fmt: skip
        limit = float(binom.ppf(1 - SIGNIFICANCE, BIN_WINDOWS, r.expected_share)) / BIN_WINDOWS
        right.axhline(limit, color="tab:red", linestyle=":", linewidth=0.9, label=f"1 % limit of a bin {limit:.0%}")
        right.set_ylim(-0.03, 1.03)
        right.set_ylabel("share above threshold", fontsize=8)
        right.set_title("share of windows above the threshold over time (UTC)", fontsize=9, loc="left")
        left.set_ylabel("anomaly score", fontsize=8)
        for ax in (left, right):
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="upper left", framealpha=0.7)
    if not report:
        axes[0][0].text(0.5, 0.5, "no sections", ha="center", va="center", transform=axes[0][0].transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        from asdtool.core.outputs import PNG_METADATA

        fig.savefig(tmp, format="png", metadata=PNG_METADATA)
