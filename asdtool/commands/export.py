"""`asdtool export`: one detector bundle file from a fine-tuned model or a system."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from asdtool.config.stages import ExportConfig
from asdtool.core.errors import AsdError, quote


def search_weights(path: Path, stores: list[Path]) -> list[float]:
    """Return the best weights of an `ensemble --search-out` JSON whose models are the stores' model names, in order."""
    from asdtool.core.safeparse import read_json
    from asdtool.data.store import read_store

    if not Path(path).exists():
        raise AsdError("search result does not exist", path)
    doc = read_json(path, what="search result")
    try:
        names, weights = doc["models"], doc["best"]["weights"]
        if not isinstance(names, list) or not isinstance(weights, list) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            raise TypeError
    except (KeyError, TypeError):
        raise AsdError("is not an ensemble --search-out file (models, best.weights)", path) from None
    given = [read_store(s).meta.model for s in stores]
    if names != given:
        raise AsdError(f"searched the weights of {quote(names)}; the --embeddings stores hold {quote(given)}", path)
    return [float(w) for w in weights]


def run(cfg: ExportConfig) -> None:
    """Write one detector bundle (.asd): a fine-tuned model, or a system of several with their weights."""
    from asdtool.deploy.export import export_bundle
    from asdtool.detect.settings import DetectorSettings

    weights = search_weights(cfg.search, cfg.embeddings) if cfg.search is not None else (cfg.weights or None)
    console = Console(stderr=True)
    with console.status("fitting the detectors") as status:
        result = export_bundle(cfg.model, cfg.embeddings, cfg.out, weights, DetectorSettings.of(cfg), cfg.decision_quantile,
                               progress=lambda text: status.update(text), quantize=cfg.quantize, force=cfg.force,
                               inputs=[cfg.search, cfg.sign_key], sign_key=cfg.sign_key)  # fmt: skip
    kind = "model " + result.members[0] if result.weights is None else (
        "system of " + ", ".join(f"{m} ({w:g})" for m, w in zip(result.members, result.weights)))
    table = Table(title=f"export -> {cfg.out}: {kind}", title_justify="left")
    for col in ("machine", "section", "training clips", "threshold"):
        table.add_column(col, justify="left" if col == "machine" else "right")
    for (machine, section), (n, thr) in result.sections.items():
        table.add_row(machine, section, str(n), f"{thr:.4g}")
    table.caption = f"{result.bytes / 1e6:.1f} MB; {cfg.normalise} scores, threshold at the {cfg.decision_quantile:g} gamma quantile"
    Console().print(table)
