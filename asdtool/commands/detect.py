"""`asdtool detect`: anomaly scores from an embedding store (SMOTE + k-NN cosine distance)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from asdtool.config import DetectConfig


def run(cfg: DetectConfig) -> None:
    """Score every clip by its cosine distance to the nearest training embedding (source + SMOTE-balanced target)."""
    from asdtool.detect import detect_to_folder

    emb, result = detect_to_folder(cfg.embeddings, cfg.out, cfg.k, cfg.smote_ratio, cfg.smote_k, cfg.seed, cfg.data_root)
    table = Table(title=f"{emb.meta.model or cfg.embeddings.name}: k={cfg.k}, SMOTE ratio {cfg.smote_ratio:g}, k {cfg.smote_k}",
                  title_justify="left")  # fmt: skip
    notes = any(m.smote.skipped for m in result.machines.values())
    for col in ("machine", "train source", "train target", "target after SMOTE", "bank", "test clips") + (("SMOTE",) * notes):
        table.add_column(col, justify="right" if col not in ("machine", "SMOTE") else "left")
    for m in result.machines.values():
        row = [m.machine, str(m.n_source), str(m.n_target), str(m.smote.target_count), str(m.bank_size), str(m.n_test)]
        table.add_row(*row, *((m.smote.skipped or f"k {m.smote.k}",) * notes))
    table.caption = f"wrote the score files of {len(result.machines)} machine types and scores.h5 to {cfg.out}"
    Console().print(table)
