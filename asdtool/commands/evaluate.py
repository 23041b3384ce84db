"""`asdtool evaluate`: the official DCASE 2024 Task 2 metrics of a folder of submission files."""

from __future__ import annotations

from rich.console import Console

from asdtool.commands.tables import results_table
from asdtool.config.stages import EvaluateConfig


def run(cfg: EvaluateConfig) -> None:
    """Compute AUC (source), AUC (target), pAUC and their harmonic means exactly as the official evaluator does."""
    from asdtool.evaluate.evaluation import evaluate_folder

    summary = evaluate_folder(cfg.scores, cfg.data_root, cfg.ground_truth, cfg.out, cfg.decisions, cfg.decisions_dir,
                              cfg.decision_quantile, cfg.roc, cfg.reading, force=cfg.force)  # fmt: skip
    Console().print(results_table(summary, cfg.name or cfg.scores.name))
