"""`asdtool synth`: write the embedded synthetic DCASE 2024 dev set, or any year's dev or eval layout (`--layout`)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asdtool.config.stages import SynthConfig

_COUNTS = ("train_source", "train_target", "test_normal", "test_anomaly")


def run(cfg: SynthConfig) -> None:
    """Write a synthetic DCASE Task 2 set: the 2024 dev layout, or the layout of --layout YEAR (dev or --eval)."""
    from asdtool.data.dcase import DEV_MACHINES
    from asdtool.data.synth.dev import SynthSizes, paper_sizes

    from asdtool.core.outputs import check_into

    check_into(cfg.out)  # machine folders inside are checked against --overwrite by the writer
    base = paper_sizes() if cfg.paper_sizes else SynthSizes()
    sizes = SynthSizes(
        seconds=base.seconds if cfg.seconds is None else cfg.seconds,
        source_train=base.source_train if cfg.source_train is None else cfg.source_train,
        target_train=base.target_train if cfg.target_train is None else cfg.target_train,
        test_per_domain=base.test_per_domain if cfg.test_per_domain is None else cfg.test_per_domain,
    )
    machines = cfg.machine or DEV_MACHINES
    console = Console()
    with Progress(
        TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("clips", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if cfg.layout is None:
            from asdtool.data.synth.dev import synthesize

            summary = synthesize(cfg.out, seed=cfg.seed, sizes=sizes, machines=machines, progress=progress,
                                 overwrite=cfg.overwrite)  # fmt: skip
        else:
            from asdtool.data.synth.layouts import default_ground_truth_folder, synthesize_layout

            gt = cfg.ground_truth_out or default_ground_truth_folder(cfg.out)
            check_into(gt, inputs=[cfg.out])
            layout_summary = synthesize_layout(
                cfg.out, cfg.layout, eval_set=cfg.eval, seed=cfg.seed, sizes=sizes, machines=machines,
                ground_truth=gt, supplemental=cfg.supplemental, progress=progress, overwrite=cfg.overwrite,
            )  # fmt: skip
    if cfg.layout is None:
        _print_default(console, summary, sizes)
    else:
        _print_layout(console, layout_summary, sizes)


def _print_default(console: Console, summary, sizes) -> None:
    from asdtool.data.synth.dev import MACHINES

    table = Table(title=f"{summary.out} (seed {summary.seed}, {sizes.seconds:g} s clips)")
    table.add_column("machine")
    table.add_column("attributes")
    for column in _COUNTS:
        table.add_column(column.replace("_", " "), justify="right")
    for name, counts in summary.counts.items():
        spec = MACHINES[name]
        keys = ", ".join(spec.keys)
        table.add_row(name, f"noAttribute (hidden: {keys})" if spec.hidden else keys, *(str(counts[k]) for k in _COUNTS))
    console.print(table)
    console.print(f"{summary.total} clips written to {summary.out}")


def _print_layout(console: Console, summary, sizes) -> None:
    from asdtool.data.synth.dev import MACHINES
    from asdtool.data.synth.layouts import YEAR_LAYOUTS

    layout = YEAR_LAYOUTS[summary.year]
    kind = "eval" if summary.eval_set else "dev"
    channels = "stereo (near, far)" if layout.stereo else "mono"
    title = f"{summary.out}: DCASE {summary.year} {kind} layout (seed {summary.seed}, {sizes.seconds:g} s {channels} clips)"
    table = Table(title=title)
    table.add_column("machine")
    table.add_column("section")
    table.add_column("attributes")
    columns = _COUNTS + (("supplemental",) if layout.supplemental else ())
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for name, sections in summary.counts.items():
        spec = MACHINES[name]
        keys = ", ".join(spec.keys + (("noise",) if layout.stereo else ()))
        if layout.grammar == "ids":
            attributes = "none (machine IDs)"
        elif layout.grammar == "domain-folders":
            attributes = f"free text: {keys}"
        elif spec.hidden and layout.hidden is not None:
            attributes = f"{layout.hidden or 'empty'} (hidden: {keys})"
        else:
            attributes = keys
        for section, counts in sections.items():
            table.add_row(name, f"id_{section}" if layout.grammar == "ids" else section, attributes,
                          *(str(counts[k]) for k in columns))  # fmt: skip
    console.print(table)
    console.print(f"{summary.total} clips written to {summary.out}")
    if summary.ground_truth is not None:
        console.print(f"ground truth written to {summary.ground_truth}")
    else:
        console.print("no ground truth to write (dev test names carry labels and domains)")
