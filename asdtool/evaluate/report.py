"""Paper-style tables from metrics.json files: single models by machine type (Table 1 layout) and
systems by machine type and metric (Table 4 layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asdtool.core.errors import AsdError

_KEYS = ("official_score", "arithmetic_mean", "hmean_auc_source", "hmean_auc_target", "hmean_pauc", "machines")
_METRICS = (("auc_source", "AUC_s"), ("auc_target", "AUC_t"), ("pauc", "pAUC"), ("hmean", "hmean"))
_TOTALS = {"auc_source": "hmean_auc_source", "auc_target": "hmean_auc_target", "pauc": "hmean_pauc", "hmean": "official_score"}


def read_metrics(path: str | Path) -> dict:
    """Return a metrics.json written by `asdtool evaluate`, checked for its keys."""
    from asdtool.core.safeparse import read_json

    path = Path(path)
    if not path.exists():
        raise AsdError("metrics file does not exist (run asdtool evaluate --out first)", path)
    data = read_json(path, what="metrics file")
    if not isinstance(data, dict) or any(k not in data for k in _KEYS):
        raise AsdError("is not a metrics.json of asdtool evaluate (missing keys)", path)
    return data


def _machines(results: dict[str, dict]) -> list[str]:
    machines = list(dict.fromkeys(m for r in results.values() for m in r["machines"]))
    for name, r in results.items():
        if list(r["machines"]) != machines:
            raise AsdError(f"{name} was evaluated on other machine types ({', '.join(r['machines'])})")
    return machines


def percent(value: float | None, style: str = "") -> str:
    """Return a fraction as a percentage with two decimals ("-" for a figure that does not exist)."""
    return "-" if value is None else f"{style}{100 * value:.2f}"


def single_model_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows): per model the hmean of each machine type and the official score, in percent."""
    machines = _machines(results)
    header = ["model", *machines, "hmean"]
    rows = [[name, *(f"{100 * r['machines'][m]['hmean']:.2f}" for m in machines), f"{100 * r['official_score']:.2f}"]
            for name, r in results.items()]  # fmt: skip
    return header, rows


def system_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows): per machine type and metric the value of each system, in percent."""
    machines = _machines(results)
    header = ["machine", "metric", *results]
    rows = []
    for m in [*machines, "hmean"]:
        for key, label in _METRICS:
            if m == "hmean":
                values = [results[s][_TOTALS[key]] for s in results]
            else:
                values = [results[s]["machines"][m][key] for s in results]
            rows.append([m, label, *(percent(v) for v in values)])
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return a GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 1 else "---:" for i, _ in enumerate(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


SINGLE_TITLE = "Single models: hmean per machine type (%)"
SYSTEM_TITLE = "Systems: AUC (source), AUC (target), pAUC and hmean (%)"
TITLES = (SINGLE_TITLE, SYSTEM_TITLE)  # each table file's first line is "# <title>" (how report knows its own files)


def write_tables(metrics_dir: str | Path, out: str | Path, models: Sequence[str], systems: Sequence[str]) -> list[tuple]:
    """Write single_models.md and/or systems.md into `out`; return their (title, header, rows)."""
    from asdtool.core.atomic import atomic_path

    metrics_dir, out = Path(metrics_dir), Path(out)
    by_model = {m: read_metrics(metrics_dir / f"{m}.json") for m in models}
    by_system = {s: read_metrics(metrics_dir / f"{s}.json") for s in systems}
    tables = []
    if by_model:
        tables.append(("single_models.md", SINGLE_TITLE, *single_model_rows(by_model)))
    if by_system:
        tables.append(("systems.md", SYSTEM_TITLE, *system_rows(by_system)))
    out.mkdir(parents=True, exist_ok=True)
    for file_name, title, header, rows in tables:
        with atomic_path(out / file_name) as tmp:
            tmp.write_text(f"# {title}\n\n" + markdown(header, rows), encoding="utf-8")
    return [t[1:] for t in tables]
