"""The `asdtool` command line: one subcommand per pipeline stage, generated from the stage configs.

Each subcommand's options come from its dataclass in `asdtool.config` (plus `--params FILE` and,
for named sections, `--name X`); the command module `asdtool.commands.<stage>` is imported only
when that subcommand runs, so `asdtool --help` and the light commands never import torch.
Every user-facing failure is one line on stderr and exit code 1; an interrupt is exit code 130.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from asdtool import __version__
from asdtool.config import options, stages
from asdtool.core.errors import AsdError

# in pipeline order
STAGES: dict[str, type] = {
    "synth": stages.SynthConfig,
    "corpus": stages.CorpusConfig,
    "pretrain": stages.PretrainConfig,
    "finetune": stages.FinetuneConfig,
    "pseudolabel": stages.PseudolabelConfig,
    "embed": stages.EmbedConfig,
    "detect": stages.DetectConfig,
    "ensemble": stages.EnsembleConfig,
    "evaluate": stages.EvaluateConfig,
    "submit": stages.SubmitConfig,
    "export": stages.ExportConfig,
    "score": stages.ScoreConfig,
    "serve": stages.ServeConfig,
    "drift": stages.DriftConfig,
    "report": stages.ReportConfig,
    "baseline": stages.BaselineConfig,
}

app = typer.Typer(
    name="asdtool",
    help=(
        "First-shot unsupervised anomalous sound detection of machines (the AITHU DCASE 2024 Task 2 system). "
        "Each subcommand is one pipeline stage; dvc.yaml chains them."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def error_line(message: str) -> None:
    """Print one red `error:` line on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"asdtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """First-shot unsupervised anomalous sound detection of machines."""


def _parameter(cls, f) -> inspect.Parameter:
    """Return the Typer parameter of one config field: always optional (None = not given here)."""
    tp, _ = options.split_optional(options.field_type(cls, f))
    listed = typing.get_origin(tp) is list
    item = typing.get_args(tp)[0] if listed else tp
    if f.metadata.get("choices"):
        item = f.metadata["choices"]  # a Choice Enum: Typer lists and checks its values
    flag = options.flag_name(f)
    required = f.default is options.REQUIRED and f.default_factory is options.REQUIRED
    default = f.default_factory() if f.default_factory is not options.REQUIRED else f.default
    if required:
        note = " [required: here or in the params section]"
    elif default is None or default == [] or item is bool:
        note = ""
    else:
        note = f" (default: {', '.join(map(str, default)) if isinstance(default, list) else default})"
    decls = [f"{flag}/--no-{flag[2:]}"] if item is bool else [flag]
    if f.metadata.get("positional"):
        opt = typer.Argument(help=f.metadata["help"], metavar=flag, show_default=False)
    else:
        opt = typer.Option(*decls, help=f.metadata["help"] + note, metavar=f.metadata.get("metavar"), show_default=False)
    annotation = Optional[list[item]] if listed else Optional[item]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[annotation, opt])


def _plain(value: Any) -> Any:
    """Return an option's value with choice enums as their strings and tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _interrupted(module, cfg) -> str:
    """Return what an interrupted command kept and how to continue it (commands that checkpoint define `kept`)."""
    kept = getattr(module, "kept", None)
    if kept is None:
        return "interrupted; nothing was written (outputs appear only when complete)"
    where, step = kept(cfg)
    if not step:
        return (f"interrupted before the first checkpoint (every {cfg.checkpoint_every} steps); nothing usable was kept "
                f"in {cfg.out}")  # fmt: skip
    return f"interrupted; {where} holds step {step} of {cfg.steps}: run the same command with --resume to continue"


def make_command(stage: str, cls) -> typing.Callable:
    """Return the Typer command of `stage`: parse options, build the config, run the command module."""
    section: options.Section = cls.SECTION
    params = [
        inspect.Parameter("params", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option("--params", dir_okay=False, help=(
                f"Read options from this params YAML, section {section.key}" + (".<NAME> (see --name)" if section.named else "")
                + "; options given here win."))])]  # fmt: skip
    if section.named:
        params.append(inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option("--name", help=f"Entry of the params file to read: {section.key}.<NAME>.")]))  # fmt: skip
    params += [_parameter(cls, f) for f in options.fields(cls)]

    def command(**kwargs: Any) -> None:
        """Build the config from the params file and the given options, then run the command module."""
        params_file, name = kwargs.pop("params"), kwargs.pop("name", None)
        given = {k: _plain(v) for k, v in kwargs.items() if v not in (None, [], ())}  # None: not given here
        module, cfg = None, None
        try:
            cfg = options.build(cls, params_file, name, given)
            module = importlib.import_module(f"asdtool.commands.{stage}")
            module.run(cfg)
        except AsdError as exc:
            error_line(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error_line(_interrupted(module, cfg) if module and cfg else "interrupted")
            raise typer.Exit(130) from None

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = cls.__doc__.split(":", 1)[-1].split("\n\n")[0].strip()
    command.__name__ = stage
    return command


for _stage, _cls in STAGES.items():
    app.command(_stage)(make_command(_stage, _cls))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors are one line and exit code 1 (not click's box and code 2)."""
    try:
        code = app(args=argv, prog_name="asdtool", standalone_mode=False)
    except typer.TyperException as exc:  # click's exceptions as typer ships them: their one public base class
        if type(exc).__name__ == "NoArgsIsHelpError":
            return 0  # the help was printed
        message = exc.format_message()
        if hasattr(exc, "ctx"):  # a usage error: the command's --help says more
            ctx = exc.ctx
            command = f" (see asdtool {ctx.info_name} --help)" if ctx and ctx.parent else ""
            message = f"{message.replace('Value error, ', '')}{command}"
        error_line(message)
        return 1
    except (typer.Abort, KeyboardInterrupt):
        error_line("interrupted")
        return 130
    return code if isinstance(code, int) else 0


def entry() -> None:
    """Console-script entry point: exit with `main()`'s code."""
    sys.exit(main())
