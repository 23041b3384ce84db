"""The evaluate stage: official metrics of a score folder, with decision files and ROC curves."""

from __future__ import annotations

from pathlib import Path

from asdtool.evaluate import metrics
from asdtool.core.atomic import atomic_dir, write_json
from asdtool.data import dcase


def evaluate_folder(
    scores: Path, data_root: Path | None = None, ground_truth: Path | None = None, out: Path | None = None,
    decisions: bool = False, decisions_dir: Path | None = None, decision_quantile: float = metrics.DECISION_QUANTILE,
    roc: Path | None = None, reading=None, force: bool = False,
) -> dict:  # fmt: skip
    """Return the official metrics of the score folder `scores` and write what was asked for.

    Ground truth comes from dev clip names (`data_root`) or the organisers' folder (`ground_truth`).
    `out`: metrics JSON; `decisions`: decision_result_*.csv files (in `decisions_dir` or the score
    folder) by the gamma rule on the training-clip scores; `roc`: roc_<machine>.csv curves.
    Every output is checked before any work and written only once everything is computed.
    """
    from asdtool.core import outputs
    from asdtool.evaluate.scorefolder import DECISION_ENTRY

    scores = Path(scores)
    inputs = [*sorted(scores.glob("anomaly_score_*.csv")), data_root, ground_truth]  # decisions go beside the scores
    if out is not None:
        outputs.check_file(out, outputs.METRICS_JSON, inputs=inputs, force=force)
    if decisions:
        if decisions_dir is not None:
            outputs.check_folder(decisions_dir, DECISION_ENTRY, inputs=inputs)
        else:
            for path in sorted(scores.glob("decision_result_*.csv")):
                outputs.check_file(path, outputs.DECISION_LINES, inputs=inputs)
            from asdtool.core.atomic import check_writable

            check_writable(scores / "decision_result_x_section_00_test.csv")
    if roc is not None:
        outputs.check_folder(roc, outputs.named(lambda name: name.startswith("roc_") and name.endswith(".csv"), outputs.ROC_CSV),
                             inputs=inputs)  # fmt: skip
    truths = metrics.truth_from_dataset(dcase.scan(data_root, reading=reading or dcase.Reading())) if data_root else metrics.truth_from_folder(ground_truth)
    summary = metrics.summarize(metrics.evaluate_sections(truths, scores))

    decided: list[tuple[Path, dict[str, int]]] = []
    if decisions:
        for t in truths:
            test = metrics.read_score_csv(scores / metrics.score_file_name(t.machine, t.section))
            train_path = scores / metrics.score_file_name(t.machine, t.section, "train")
            threshold = metrics.decision_threshold(list(metrics.read_score_csv(train_path).values()), decision_quantile)
            decided.append(((decisions_dir or scores) / metrics.decision_file_name(t.machine, t.section), metrics.decide(test, threshold)))
    curves = metrics.roc_points(truths, scores) if roc is not None else {}

    if decisions_dir is not None and decisions:
        with atomic_dir(decisions_dir) as tmp:
            for path, rows in decided:
                metrics.write_score_csv(tmp / path.name, rows)
    else:
        for path, rows in decided:
            metrics.write_score_csv(path, rows)
    if roc is not None:
        with atomic_dir(roc) as tmp:
            for machine, points in curves.items():
                lines = ["fpr,tpr"] + [f"{f!r},{t!r}" for f, t in points.tolist()]
                (tmp / f"roc_{machine}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if out is not None:
        write_json(out, summary)
    return summary
