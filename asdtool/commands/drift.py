"""`asdtool drift`: the recent scores of a --log folder against the bundle's training scores (table, PNG, JSON)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from asdtool.config.stages import DriftConfig

VERDICT_STYLE = {"drifting": "bold red", "stable": "green", "no data": "dim"}  # asdtool.deploy.drift's DRIFTING, STABLE, NO_DATA


def _quantiles(values: tuple[float, ...] | None) -> str:
    return "-" if values is None else " ".join(f"{v:.3g}" for v in values)


def drift_table(report, title: str) -> Table:
    """Return a rich table of a drift report: one row per machine type and section.

    Quantiles are shown as q50 q90 q99, the share above the threshold as training -> recent,
    KS is the two-sample Kolmogorov-Smirnov statistic (its p-value is in the JSON).
    """
    from asdtool.deploy.drift import QUANTILES, quantile_label

    label = " ".join(f"q{quantile_label(q)}" for q in QUANTILES)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("machine", min_width=7)
    table.add_column("section", min_width=7)
    for col in ("train\nn", "recent\nn", f"train\n{label}", f"recent\n{label}", "above thr\ntrain→now", "KS"):
        table.add_column(col, justify="right")
    table.add_column("verdict")
    for r in report:
        share = f"{r.train_share:.0%}→" + ("-" if r.recent_share is None else f"{r.recent_share:.0%}")
        table.add_row(r.machine, r.section, str(r.train_n), str(r.recent_n), _quantiles(r.train_quantiles),
                      _quantiles(r.recent_quantiles), share, "-" if r.ks is None else f"{r.ks:.2f}",
                      f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]")  # fmt: skip
    return table


def run(cfg: DriftConfig) -> None:
    """Compare the latest --last windows of each section with the training scores; print, plot and write JSON."""
    from asdtool.core import outputs
    from asdtool.core.atomic import write_json
    from asdtool.deploy.scorelog import LOG_BUNDLE, LOG_DRIFT_PLOT, LOG_SCORES
    from asdtool.deploy.drift import DRIFTING, SIGNIFICANCE, drift_report, plot_drift, read_log, report_json, time_span

    plot = cfg.plot if cfg.plot is not None else cfg.log / LOG_DRIFT_PLOT
    inputs = [cfg.log / LOG_SCORES, cfg.log / LOG_BUNDLE]
    outputs.check_file(plot, outputs.PNG, inputs=inputs, force=cfg.force)
    if cfg.out is not None:
        outputs.check_file(cfg.out, outputs.DRIFT_JSON, inputs=[*inputs, plot], force=cfg.force)
    log = read_log(cfg.log)
    report = drift_report(log, cfg.last)
    plot_drift(log, report, plot)
    if cfg.out is not None:
        write_json(cfg.out, report_json(log, report, cfg.last))
    span = time_span(report)
    drifting = sum(r.verdict == DRIFTING for r in report)
    title = f"drift of {log.reference.get('bundle') or cfg.log}: the latest {cfg.last} windows per section"
    table = drift_table(report, title)
    covered = f"recent windows from {span[0]} to {span[1]}" if span else "no windows logged yet"
    wrote = f"plot {plot}" + (f", JSON {cfg.out}" if cfg.out is not None else "")
    table.caption = (f"{covered} ({log.rows} in the log); {drifting} of {len(report)} sections drifting; {wrote}\n"
                     f"drifting: more recent windows above the threshold than the training share, one-sided binomial "
                     f"p < {SIGNIFICANCE:g}")  # fmt: skip
    Console().print(table)
