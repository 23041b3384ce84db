"""The option machinery of the stage configs: declaring an option, reading a params section, building a config.

Each stage's options are the fields of one dataclass (`asdtool.config.stages`). From it come the
Typer options of the subcommand (`asdtool.cli`), the params.yaml section it reads (`--params FILE
[--name X]`), the validation of that section (an unknown key or a wrong type is one line naming the
file and the key) and the defaults. Precedence: field default < params section < options given on
the command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from asdtool.config.choices import Choice
from asdtool.core.errors import AsdError, quote

# ----------------------------------------------------------------------------- declaring options

REQUIRED: Any = dataclasses.MISSING


def option(default: Any = REQUIRED, help: str = "", *, choices: type[Choice] | None = None, recipe: bool = True,
           flag: str | None = None, metavar: str | None = None, positional: bool = False) -> Any:  # fmt: skip
    """Return a dataclass field carrying the option's help, choices (a `Choice` Enum) and flags.

    `recipe=False` marks where-to options (data roots, outputs, --resume, devices) that say where
    or how a run happens, not what it computes; a resumed fine-tuning run may change them.
    `positional=True` makes it a command-line argument (named by `flag`, e.g. "BUNDLE"), not an option.
    """
    meta = {"help": help, "choices": choices, "recipe": recipe, "flag": flag, "metavar": metavar, "positional": positional}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    if default is REQUIRED:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Section:
    """Where a stage's options live in a params file: `key` or, with a name, `key.<name>`."""

    key: str
    named: bool = False  # the section holds one entry per name (models.<name>, ensemble.<name>)


def fields(cls) -> list[dataclasses.Field]:
    """Return a config's fields, its own first and then those it inherits (shared option groups such as ReadsData)."""
    own = getattr(cls, "__annotations__", {}) if "__annotations__" in vars(cls) else {}
    every = list(dataclasses.fields(cls))
    return [f for f in every if f.name in own] + [f for f in every if f.name not in own]


def flag_name(f: dataclasses.Field) -> str:
    """Return a field's command-line flag: its `flag` metadata, else `--` and the name with dashes."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_type(cls, f: dataclasses.Field) -> Any:
    """Return the resolved annotation of a field (the module uses postponed annotations)."""
    return typing.get_type_hints(cls)[f.name]


def split_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, whether None is allowed) of `X | None`."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _describe(tp: Any) -> str:
    tp, _ = split_optional(tp)
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, where: str, path: Path | None) -> Any:
    """Return `value` (from YAML) as type `tp`; AsdError naming `where` and the file otherwise."""
    inner, nullable = split_optional(tp)
    if value is None:
        if nullable:
            return None
        raise AsdError(f"{where}: expected {_describe(tp)}, got null", path)
    if typing.get_origin(inner) is list:
        item = typing.get_args(inner)[0]
        items = value if isinstance(value, list) else [value]
        return [coerce(v, item, f"{where}[{i}]", path) for i, v in enumerate(items)]
    bad = AsdError(f"{where}: expected {_describe(inner)}, got {quote(value)}", path)
    if inner is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if inner is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad
        return str(value)
    if inner is Path:
        if not isinstance(value, str) or not value:
            raise bad
        return Path(value)
    raise bad


def read_section(path: Path, section: Section, name: str | None, cls) -> dict[str, Any]:
    """Return the typed options of `section` (or `section.name`) of a params YAML file, checked against `cls`.

    The file is read by `asdtool.core.safeparse` (bounded size and nesting, no aliases, no duplicate keys).
    """
    from asdtool.core.safeparse import read_yaml

    path = Path(path)
    if section.named and not name:
        raise AsdError(f"--params needs --name: which entry of {section.key!r} to read")
    doc = read_yaml(path, what="params file") or {}
    dotted = f"{section.key}.{name}" if section.named else section.key
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise AsdError(f"has no section {quote(dotted)}", path)
        node = node[part]
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise AsdError(f"section {quote(dotted)} is not a mapping of options", path)
    by_name = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in node.items():
        attr = str(key).replace("-", "_")
        if attr not in by_name:
            raise AsdError(f"section {quote(dotted)} has unknown option {quote(key)}", path)
        f = by_name[attr]
        value = coerce(value, field_type(cls, f), f"{dotted}.{key}", path)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices.values():
            raise AsdError(f"{dotted}.{key}: {quote(value)} is not one of {choices.listed()}", path)
        values[attr] = value
    return values


def build(cls, params: Path | None, name: str | None, given: dict[str, Any]):
    """Return a validated config: defaults < params section < options given on the command line."""
    section: Section | None = getattr(cls, "SECTION", None)
    values: dict[str, Any] = {}
    if params is not None:
        if section is None:
            raise AsdError("this command reads no params section")
        values.update(read_section(params, section, name, cls))
    elif name is not None:
        raise AsdError("--name picks an entry of the --params file; give --params too")
    values.update({k: v for k, v in given.items() if v is not None})
    missing = [flag_name(f) for f in fields(cls) if f.default is REQUIRED and f.default_factory is REQUIRED
               and f.name not in values]  # fmt: skip
    if missing:
        where = f" or in the params section {section.key!r}" if section else ""
        raise AsdError(f"missing option {', '.join(missing)} (give it on the command line{where})")
    cfg = cls(**values)
    cfg.validate()
    return cfg
