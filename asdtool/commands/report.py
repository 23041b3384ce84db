"""`asdtool report`: the paper's tables for everything that has been evaluated."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from asdtool.config.stages import ReportConfig


def _table(title: str, header, rows) -> Table:
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 or h == "metric" else "right")
    for r in rows:
        t.add_row(*r)
    return t


def run(cfg: ReportConfig) -> None:
    """Print and write the paper-style tables: single models by machine type, systems by machine type and metric."""
    from asdtool.core import outputs
    from asdtool.evaluate import report

    tables = outputs.Kind("a report table", lambda p: outputs.first_line(p) in {f"# {t}" for t in report.TITLES})
    outputs.check_folder(cfg.out, outputs.named(lambda name: name.endswith(".md"), tables),
                         inputs=[cfg.metrics_dir / f"{name}.json" for name in (*cfg.model, *cfg.system)])  # fmt: skip
    tables = report.write_tables(cfg.metrics_dir, cfg.out, cfg.model, cfg.system)
    console = Console()
    for title, header, rows in tables:
        console.print(_table(title, header, rows))
