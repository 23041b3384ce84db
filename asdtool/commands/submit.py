"""`asdtool submit`: a DCASE Task 2 challenge submission folder, written and checked, or --check of one."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asdtool.config.stages import SubmitConfig

SHOWN_PROBLEMS = 20  # more would scroll the first ones out of sight


def run(cfg: SubmitConfig) -> None:
    """Write the submission folder of a score folder, or check one; print its sections, or its problems and exit 1."""
    import typer

    from asdtool.evaluate.submit import check_submission, write_submission

    console = Console()
    if cfg.check is not None:
        result = check_submission(cfg.check, cfg.data_root, cfg.reading)
        if result.problems:
            err = Console(stderr=True)
            for line in result.problems[:SHOWN_PROBLEMS]:
                err.print(line, soft_wrap=True, highlight=False, markup=False)
            if len(result.problems) > SHOWN_PROBLEMS:
                err.print(f"... and {len(result.problems) - SHOWN_PROBLEMS} more", highlight=False, markup=False)
            err.print(f"[bold red]error:[/] {escape(str(cfg.check))}: not a valid submission "
                      f"({len(result.problems)} problem(s))", soft_wrap=True, highlight=False)  # fmt: skip
            raise typer.Exit(1)
        console.print(sections_table(result.sections, f"{result.label}: a valid submission"))
        return
    done = write_submission(cfg.scores, cfg.data_root, cfg.out, cfg.label, cfg.decision_quantile, cfg.meta_params,
                            cfg.dev_metrics, cfg.force, cfg.reading)  # fmt: skip
    console.print(sections_table(done.sections, f"submission {done.label}"))
    n = len(done.sections)
    console.print(f"wrote {done.folder}: {n} score and {n} decision files, {done.label}.meta.yaml", soft_wrap=True)


def sections_table(sections, title: str) -> Table:
    """Return a rich table of machine type, section, clips, decision threshold and share decided anomalous."""
    table = Table(title=title, title_justify="left")
    table.add_column("machine")
    table.add_column("section")
    for col in ("clips", "threshold", "anomalous"):
        table.add_column(col, justify="right")
    for s in sections:
        table.add_row(s.machine, s.section, str(s.clips), _threshold(s), f"{100 * s.anomalous_share:.1f} %")
    if any(s.threshold is None for s in sections):
        table.caption = "threshold: [highest normal score, lowest anomalous score)"
    return table


def _threshold(s) -> str:
    if s.threshold is not None:
        return f"{s.threshold:.6g}"
    lo, hi = s.bounds
    if lo is not None and hi is not None:
        return f"[{lo:.4g}, {hi:.4g})" if lo < hi else "no single threshold"
    return f">= {lo:.4g}" if lo is not None else f"< {hi:.4g}"
