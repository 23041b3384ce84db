"""`asdtool score`: score recordings with a detector bundle."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asdtool.config.stages import ScoreConfig
from asdtool.core.errors import AsdError

CSV_HEADER = ("file", "machine", "section", "score", "threshold", "decision")
ANOMALY_EXIT = 2


def write_results(path: Path, results) -> None:
    """Write the results as CSV (one row per recording) or JSON (with every window), atomically."""
    from asdtool.core.atomic import atomic_path
    from asdtool.core.outputs import spreadsheet_text

    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(CSV_HEADER)
                for r in results:  # text cells made safe for spreadsheets
                    writer.writerow([*(spreadsheet_text(str(v)) for v in (r.name, r.machine, r.section)),
                                     repr(r.score), repr(r.threshold), r.decision])  # fmt: skip
        else:
            doc = [{**r.row(), "windows": [{"start": s, "score": v} for s, v in zip(r.window_starts, r.window_scores)]}
                   for r in results]  # fmt: skip
            Path(tmp).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def run(cfg: ScoreConfig) -> None:
    """Score recordings with a detector bundle; print a table, write --out, exit 2 on an anomaly with --fail-on-anomaly."""
    import torch

    from asdtool.core import outputs
    from asdtool.core.atomic import atomic_dir
    from asdtool.deploy.inputs import STDIN, expand_paths, read_audio_bytes, recording_of
    from asdtool.deploy.load import load_bundle
    from asdtool.deploy.scorelog import LOG_BUNDLE, LOG_SCORES, append_log, check_log, plot_name, plot_recording
    from asdtool.deploy.scoring import score_recordings
    from asdtool.data.audio import check_audio, read_channels

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    items = expand_paths(cfg.paths)
    inputs = [cfg.bundle, cfg.verify_key, *items]
    if cfg.log is not None:
        inputs += [cfg.log / LOG_SCORES, cfg.log / LOG_BUNDLE]  # the log is appended to, never replaced
    if cfg.out is not None:
        kind = outputs.SCORE_RESULTS_CSV if cfg.out.suffix.lower() == ".csv" else outputs.SCORE_RESULTS_JSON
        outputs.check_file(cfg.out, kind, inputs=inputs, force=cfg.force)
    if cfg.plot is not None:
        outputs.check_folder(cfg.plot, outputs.named(lambda name: name.endswith(".png"), outputs.PNG),
                             inputs=[*inputs, cfg.out])  # fmt: skip
    bundle = load_bundle(cfg.bundle, cfg.device, verify_key=cfg.verify_key)
    if cfg.log is not None:
        check_log(cfg.log, bundle)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    recordings, stdin_channels = [], None
    for item in items:
        if item == STDIN:
            data = sys.stdin.buffer.read()
            if not data:
                raise AsdError("no audio bytes on stdin", STDIN)
            stdin_channels = read_audio_bytes(data, STDIN, cfg.max_seconds)
            recordings.append(recording_of(bundle, Path(STDIN), STDIN, cfg.machine, cfg.section))
        else:
            recordings.append(recording_of(bundle, Path(item), str(item), cfg.machine, cfg.section))
    for rec in recordings:  # every header checked before any scoring (stdin's bytes were read and checked above)
        if rec.name != STDIN:
            try:
                check_audio(rec.path, max_seconds=cfg.max_seconds)
            except AsdError as exc:
                raise AsdError(exc.problem, rec.name) from None
    bar = Progress(TextColumn("[bold]score"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)  # fmt: skip

    def read_all():
        for rec in recordings:
            if rec.name == STDIN:
                yield rec, stdin_channels
                continue
            try:
                yield rec, read_channels(rec.path, seconds=None, max_seconds=cfg.max_seconds)
            except AsdError as exc:
                raise AsdError(exc.problem, rec.name) from None

    with bar:
        task = bar.add_task("recordings", total=len(recordings))
        results = score_recordings(bundle, read_all(), cfg.hop, cfg.aggregate, cfg.batch_size,
                                   progress=lambda: bar.advance(task))  # fmt: skip
    if cfg.out is not None:
        write_results(cfg.out, results)
    long = [(i, r) for i, r in enumerate(results) if len(r.window_scores) > 1]
    if cfg.plot is not None and long:
        with atomic_dir(cfg.plot) as tmp:
            for i, r in long:
                plot_recording(tmp / plot_name(i, r.name), r, bundle.seconds)
    logged = append_log(cfg.log, bundle, results, when) if cfg.log is not None else 0
    table = Table(title=f"score: {cfg.bundle.name} ({bundle.meta['kind']}, {bundle.seconds:g} s windows)", title_justify="left")
    for col in ("file", "machine", "section", "windows", "score", "threshold", "decision"):
        table.add_column(col, justify="left" if col in ("file", "machine", "decision") else "right")
    for r in results:
        decision = "[bold red]anomalous[/]" if r.decision else "normal"
        table.add_row(r.name, r.machine, r.section, str(len(r.window_scores)), f"{r.score:.4g}", f"{r.threshold:.4g}", decision)
    anomalous = sum(r.decision for r in results)
    table.caption = f"{anomalous} of {len(results)} anomalous ({cfg.aggregate} over windows)" + (
        f"; wrote {cfg.out}" if cfg.out is not None else "") + (
        f"; {len(long)} plot(s) in {cfg.plot}" if cfg.plot is not None and long else "") + (
        f"; logged {logged} window(s) to {cfg.log}" if cfg.log is not None else "")
    Console().print(table)
    if cfg.fail_on_anomaly and anomalous:
        raise typer.Exit(ANOMALY_EXIT)
