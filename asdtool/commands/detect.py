"""`asdtool detect`: anomaly scores from an embedding store (SMOTE + k-NN cosine distance)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from asdtool.config.stages import DetectConfig


def run(cfg: DetectConfig) -> None:
    """Score every clip by its cosine distance to the nearest training embedding (source + SMOTE-balanced target)."""
    from asdtool.detect.knn import SOURCE, TARGET, detect_to_folder
    from asdtool.detect.settings import DetectorSettings

    emb, result = detect_to_folder(cfg.embeddings, cfg.out, DetectorSettings.of(cfg), cfg.data_root, cfg.reading)
    title = f"{emb.meta.model or cfg.embeddings.name}: k={cfg.k}, SMOTE ratio {cfg.smote_ratio:g}, k {cfg.smote_k}"
    if cfg.normalise != "none":
        title += f", {cfg.normalise}" + (f" (density k {cfg.density_k})" if cfg.normalise == "local-density" else "")
    table = Table(title=title, title_justify="left")
    notes = any(m.smote.skipped for m in result.machines.values())
    norms = [m.normalisation for m in result.machines.values() if m.normalisation is not None]
    if cfg.normalise == "domain-z":
        norm_cols = ("source μ±σ", "target μ±σ", "test NN target")
    elif cfg.normalise == "local-density":
        norm_cols = ("density k src/tgt", "test NN target")
    else:
        norm_cols = ()
    fallback = any(n.fallback for n in norms)
    columns = ("machine", "train source", "train target", "target after SMOTE", "bank", "test clips") + norm_cols
    columns += ("SMOTE",) * notes + ("normalisation",) * fallback
    for col in columns:
        table.add_column(col, justify="left" if col in ("machine", "SMOTE", "normalisation") else "right")
    for m in result.machines.values():
        row = [m.machine, str(m.n_source), str(m.n_target), str(m.smote.target_count), str(m.bank_size), str(m.n_test)]
        n = m.normalisation
        if n is not None and n.mode == "domain-z":
            row += [f"{n.stats[d][0]:.2g}±{n.stats[d][1]:.2g}" for d in (SOURCE, TARGET)] + [str(n.test_nn_target)]
        elif n is not None:
            row += ["/".join(str(n.density_k.get(d, "-")) for d in (SOURCE, TARGET)), str(n.test_nn_target)]
        row += [m.smote.skipped or f"k {m.smote.k}"] * notes
        row += [(n.fallback if n is not None else "") or "by domain"] * fallback
        table.add_row(*row)
    table.caption = f"wrote the score files of {len(result.machines)} machine types and scores.h5 to {cfg.out}"
    Console().print(table)
