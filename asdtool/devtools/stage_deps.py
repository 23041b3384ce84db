"""Which asdtool source files each dvc.yaml stage must depend on, found by reading the imports.

A stage that runs `asdtool <subcommand>` depends on every asdtool file that subcommand can import,
transitively, lazy imports inside functions included (`if TYPE_CHECKING:` blocks excluded), so that
`dvc repro` reruns it when any of them changes, and on no other asdtool file, so that it is not rerun
for code it never runs. The rules:

* the subcommand `NAME` lives in `asdtool.commands.NAME` (`-` read as `_`); its whole import closure
  counts, and so does the CLI entry (`[project.scripts]` of pyproject.toml, `asdtool.__main__` for
  `python -m asdtool`) with what it imports, except the other subcommands' modules (an entry that
  imported them all to register them would still run only the invoked one);
* the backbones (`BACKBONE_MODULES`) are imported by name (in `asdtool.models`) when a model is
  built; a stage that runs a model depends on the backbone(s) of that model only: the one its
  command names with `--backbone NAME` (a frozen model, pre-training), else the model it names with
  `--model NAME` or `--model models/NAME` (else `--name`, else the foreach key) as
  `models.<NAME>.backbone` in params.yaml, where `dual` is both;
* files under a folder dep count as covered; a folder dep is extra when any .py under it is unneeded;
  a folder dep needs `__pycache__/` in .dvcignore, or the bytecode Python writes there changes its hash.

In dvc.yaml a foreach stage whose items need different backbones carries the backbone code in an item
field `code`, e.g. `beats-full: {code: asdtool/models/beats.py}` ... `dual: {code: asdtool/models}`,
and lists `${item.code}` as a dep (see `write`).

    python -m asdtool.devtools.stage_deps            # per-stage table
    python -m asdtool.devtools.stage_deps --check    # problems, exit 1 if any
    python -m asdtool.devtools.stage_deps --write    # rewrite the code deps of dvc.yaml

Standard library and PyYAML only (no torch): the code is read, never imported.
"""

from __future__ import annotations

import argparse
import ast
import functools
import itertools
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import yaml

PACKAGE = "asdtool"
COMMANDS_PACKAGE = "asdtool.commands"
# Imported lazily by name when a backbone is built (asdtool.models.load_backbone).
BACKBONE_MODULES = {"beats": "asdtool.models.beats", "eat": "asdtool.models.eat"}
# Imported lazily by name when a backbone is pre-trained (asdtool.pretrain.loop): its objective.
OBJECTIVE_MODULES = {"beats": "asdtool.pretrain.beats", "eat": "asdtool.pretrain.eat"}
# Backbone names (models.<name>.backbone in params.yaml) that run several backbones.
COMPOSITE_BACKBONES = {"dual": ("beats", "eat")}
CODE_FIELD = "code"  # the foreach item field that carries an item's own code dep
VALUE_FIELD = "value"  # where a scalar foreach item goes when `write` turns it into a mapping


# --------------------------------------------------------------------------------------------------
# import closure


def _module_file(module: str, root: Path) -> Path | None:
    parts = module.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    single = base.parent / f"{parts[-1]}.py"
    return single if single.is_file() else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node of the tree except those under `if TYPE_CHECKING:` (its `else:` is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.append(node.test)
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_relative(name: str, level: int, package: str) -> str | None:
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or (level - 1 == len(parts) and not name):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, name] if name else base) or None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Names of the modules (and candidate submodules) that `path`, the module `module`, imports."""
    stat = path.stat()
    return set(_imported_modules_cached(str(path), module, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4096)
def _imported_modules_cached(path_str: str, module: str, _mtime: int, _size: int) -> frozenset[str]:
    path = Path(path_str)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module or "", node.level, package) if node.level else node.module
            if not base:
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            is_import_module = (isinstance(func, ast.Attribute) and func.attr == "import_module"
                                and isinstance(func.value, ast.Name) and func.value.id == "importlib")
            is_import_module |= isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
            if not is_import_module or not node.args:
                continue
            arg = node.args[0]
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                continue
            name = arg.value
            if name.startswith("."):
                anchor = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "package"), None)
                if isinstance(anchor, ast.Constant) and isinstance(anchor.value, str):
                    anchor_pkg = anchor.value
                elif isinstance(anchor, ast.Name) and anchor.id == "__package__":
                    anchor_pkg = package
                else:
                    continue
                level = len(name) - len(name.lstrip("."))
                resolved = _resolve_relative(name.lstrip("."), level, anchor_pkg)
                if resolved:
                    found.add(resolved)
            else:
                found.add(name)
    return frozenset(found)


def import_closure(module: str, root: Path, *, stop: Iterable[str] = (),
                   packages: Iterable[str] | None = None) -> set[Path]:
    """The .py files (relative to `root`) that importing `module` can run, lazy imports included.

    Follows imports of modules under the top-level package(s) `packages` (default: the one of
    `module`), at module level and inside functions; counts a package's `__init__.py` and the
    `__init__.py` of every parent package; `from pkg import name` counts `pkg.name` when it is a
    module; `importlib.import_module("literal")` counts too; `if TYPE_CHECKING:` blocks do not.
    Modules in `stop` are neither counted nor followed.
    """
    root = Path(root)
    if _module_file(module, root) is None:
        raise ValueError(f"no module {module!r} under {root}")
    tops = {module.split(".")[0]} if packages is None else set(packages)
    stop = set(stop)
    seen: set[str] = set()
    files: set[Path] = set()
    queue = [module]
    while queue:
        name = queue.pop()
        if name in seen or name in stop or name.split(".")[0] not in tops:
            continue
        seen.add(name)
        path = _module_file(name, root)
        if path is None:
            continue  # an attribute (`from pkg.mod import func`), or not part of the project
        files.add(path.relative_to(root))
        parts = name.split(".")
        queue.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        queue.extend(_imported_modules(path, name))
    return files


# --------------------------------------------------------------------------------------------------
# dvc.yaml: stages, interpolation

_INTERP = re.compile(r"\$\{\s*([^{}]+?)\s*\}")


def _lookup(ctx: dict, expr: str) -> Any:
    value: Any = ctx
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", expr):
        if part.startswith("["):
            value = value[int(part[1:-1])]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(f"cannot resolve ${{{expr}}}")
    return value


def _render(value: Any) -> str:
    """Roughly how DVC writes a value into a string (dicts become --key value options)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if isinstance(v, bool):
                out.append(f"--{k}" if v else f"--no-{k}")
            elif isinstance(v, list):
                out.extend(f"--{k} {shlex.quote(str(x))}" for x in v)
            else:
                out.append(f"--{k} {shlex.quote(_render(v))}")
        return " ".join(out)
    if isinstance(value, list):
        return " ".join(shlex.quote(_render(v)) for v in value)
    return str(value)


def _interp(value: Any, ctx: dict) -> Any:
    if isinstance(value, str):
        whole = _INTERP.fullmatch(value.strip())
        if whole:
            return _lookup(ctx, whole.group(1))
        return _INTERP.sub(lambda m: _render(_lookup(ctx, m.group(1))), value)
    if isinstance(value, list):
        return [_interp(v, ctx) for v in value]
    if isinstance(value, dict):
        return {_interp(k, ctx): _interp(v, ctx) for k, v in value.items()}
    return value


@dataclass
class _Stage:
    name: str  # as DVC names it: `embed@beats-full`
    group: str  # the key under `stages:`
    key: str | None  # the foreach key (None for plain stages and lists)
    ctx: dict
    body: dict  # the stage definition (the `do:` of a foreach), not interpolated


def _context(dvc_yaml: Path, data: dict, params_yaml: Path | None) -> dict:
    ctx: dict = {}
    if params_yaml is not None and params_yaml.is_file():
        ctx.update(yaml.safe_load(params_yaml.read_text()) or {})
    for entry in data.get("vars") or []:
        if isinstance(entry, dict):
            ctx.update(entry)
        elif isinstance(entry, str):
            fname, _, keys = entry.partition(":")
            path = dvc_yaml.parent / fname
            if path.resolve() == (params_yaml.resolve() if params_yaml else None):
                continue
            loaded = yaml.safe_load(path.read_text()) or {}
            ctx.update({k: loaded[k] for k in keys.split(",")} if keys else loaded)
    return ctx


def _expand(data: dict, ctx: dict) -> list[_Stage]:
    stages = []
    for group, body in (data.get("stages") or {}).items():
        if "foreach" in body:
            items = _interp(body["foreach"], ctx)
            do = body.get("do") or {}
            if isinstance(items, dict):
                for key, item in items.items():
                    stages.append(_Stage(f"{group}@{key}", group, str(key), {**ctx, "item": item, "key": key}, do))
            else:
                for i, item in enumerate(items):
                    suffix = item if isinstance(item, (str, int, float)) else i
                    stages.append(_Stage(f"{group}@{suffix}", group, None, {**ctx, "item": item, "key": i}, do))
        elif "matrix" in body:
            matrix = {k: _interp(v, ctx) for k, v in body["matrix"].items()}
            for combo in itertools.product(*matrix.values()):
                item = dict(zip(matrix, combo))
                suffix = "-".join(str(v) if isinstance(v, (str, int, float)) else k for k, v in item.items())
                body_ = {k: v for k, v in body.items() if k != "matrix"}
                stages.append(_Stage(f"{group}@{suffix}", group, None, {**ctx, "item": item}, body_))
        else:
            stages.append(_Stage(group, group, None, ctx, body))
    return stages


# --------------------------------------------------------------------------------------------------
# what a stage needs

_PYTHON = re.compile(r"python(\d+(\.\d+)?)?$")
_SEPARATORS = {"&&", "||", ";", "|", "&"}


def _invocations(cmd: Any) -> list[tuple[str, list[str]]]:
    """(entry module kind: "script" | "module", argv after the program) of each asdtool call."""
    found = []
    for line in cmd if isinstance(cmd, list) else [cmd]:
        try:
            tokens = shlex.split(str(line))
        except ValueError:
            tokens = str(line).split()
        segments, current = [], []
        for tok in tokens:
            if tok in _SEPARATORS:
                segments.append(current)
                current = []
            else:
                current.append(tok)
        segments.append(current)
        for seg in segments:
            while seg and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", seg[0]):
                seg = seg[1:]  # VAR=value prefix
            if not seg:
                continue
            prog = PurePosixPath(seg[0]).name
            if prog == PACKAGE:
                found.append(("script", seg[1:]))
            elif _PYTHON.fullmatch(prog):
                for i, tok in enumerate(seg[1:-1], start=1):
                    if tok == "-m" and seg[i + 1] == PACKAGE:
                        found.append(("module", seg[i + 2:]))
                        break
    return found


def _option(argv: list[str], name: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def _script_entry(root: Path) -> str:
    """The module the `asdtool` console script imports (`[project.scripts]` of pyproject.toml)."""
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        scripts = tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {})
        if PACKAGE in scripts:
            return scripts[PACKAGE].split(":")[0].strip()
    return f"{PACKAGE}.cli"


def _command_modules(root: Path) -> set[str]:
    folder = root.joinpath(*COMMANDS_PACKAGE.split("."))
    return {f"{COMMANDS_PACKAGE}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}


def _posix(paths: Iterable[Path]) -> set[str]:
    return {PurePosixPath(*Path(p).parts).as_posix() for p in paths}


@dataclass
class StageInfo:
    name: str
    group: str
    key: str | None
    subcommands: list[str] = field(default_factory=list)
    backbones: list[str] = field(default_factory=list)
    needed: set[str] = field(default_factory=set)
    declared: list[str] = field(default_factory=list)  # asdtool code deps as written (interpolated)
    errors: list[str] = field(default_factory=list)


def _is_code_dep(path: str, root: Path) -> bool:
    p = path.strip().removeprefix("./").rstrip("/")
    if p != PACKAGE and not p.startswith(PACKAGE + "/"):
        return False
    return p.endswith(".py") or not (root / p).is_file()


def _dep_path(dep: Any) -> str | None:
    if isinstance(dep, str):
        return dep
    if isinstance(dep, dict) and len(dep) == 1:
        return str(next(iter(dep)))
    return None


def _dispatcher(module: str) -> str:
    return module.rpartition(".")[0]


def _literal_table(root: Path, modules: Iterable[str], name: str) -> dict[str, str] | None:
    """The literal `{str: str}` assigned to `name` in the first of the dispatcher packages of `modules`."""
    for dispatcher in sorted({_dispatcher(m) for m in modules}):
        path = _module_file(dispatcher, root)
        if path is None:
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                    return value
    return None


def backbone_modules(root: Path) -> dict[str, str]:
    """{backbone: module}: the literal `BACKBONE_MODULES = {...}` of the package that builds the
    backbones (`asdtool/models/__init__.py`), so the two cannot drift apart; else BACKBONE_MODULES."""
    return _literal_table(root, BACKBONE_MODULES.values(), "BACKBONE_MODULES") or dict(BACKBONE_MODULES)


def objective_modules(root: Path) -> dict[str, str]:
    """{backbone: module}: the pre-training objectives, imported by name like the backbones (the literal
    `OBJECTIVES = {...}` of `asdtool/pretrain/__init__.py`); else OBJECTIVE_MODULES."""
    return _literal_table(root, OBJECTIVE_MODULES.values(), "OBJECTIVES") or dict(OBJECTIVE_MODULES)


def _backbones(info: StageInfo, st: _Stage, argv: list[str], root: Path, common: set[str], full: set[str],
               params_models: dict, modules: dict[str, str]) -> list[str]:
    """The backbones (keys of `modules`) a stage's command builds.

    A backbone module imported by any module but its package's `__init__` (the dispatcher that
    imports it by name) is always needed. Otherwise, when the command reaches the dispatcher or a
    backbone (`full`: its closure with nothing stopped), they are those of the model it names:
    `--backbone NAME` itself, else `--model` (a name or a models/NAME folder), else `--name`, else the
    stage's foreach key, looked up as `models.<NAME>.backbone` in params.yaml (`dual` is both) or taken
    as a backbone name itself.
    A command that names no model builds none.
    """
    found: list[str] = []
    for path in sorted(common):
        mod = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        imported = _imported_modules(root / path, mod)
        for b, m in modules.items():
            if m in imported and mod != _dispatcher(m) and b not in found:
                found.append(b)
    reach = {_dispatcher(m) for m in modules.values()} | set(modules.values())
    reach_files = {f.relative_to(root).as_posix() for f in (_module_file(m, root) for m in reach) if f is not None}
    if not reach_files & full:
        return found

    def add(backbone: str, of: str) -> list[str]:
        for b in COMPOSITE_BACKBONES.get(backbone, (backbone,)):
            if b not in modules:
                info.errors.append(f"unknown backbone {b!r}{of} (known: {', '.join(modules)})")
            elif b not in found:
                found.append(b)
        return found

    named = _option(argv, "--backbone")  # a frozen model (`embed --backbone`) or `pretrain --backbone`
    if named is not None:
        return add(named, "")
    options = [v for v in (_option(argv, "--model"), _option(argv, "--name")) if v]
    candidates = [PurePosixPath(v.rstrip("/")).name for v in options] + ([st.key] if st.key else [])
    for name in candidates:
        entry = params_models.get(name)
        backbone = entry.get("backbone") if isinstance(entry, dict) else None
        if backbone is None and name in (*modules, *COMPOSITE_BACKBONES):
            backbone = name
        if backbone is not None:
            return add(backbone, f" of {name!r}")
    if options and _option(argv, "--model"):
        info.errors.append(f"names a model ({_option(argv, '--model')}) whose backbone is not in the params; "
                           f"counting every backbone")
        return list(dict.fromkeys([*found, *modules]))
    return found  # builds no model


def _export_backbones(ctx: dict, params_models: dict, info: StageInfo) -> list[str]:
    """The backbones of `asdtool export`'s members in params: `models.<NAME>.backbone` of each models/NAME
    (`dual` is both), and for a `frozen` member the backbone its store is named after (`frozen-<backbone>`)."""
    section = ctx.get("export") if isinstance(ctx.get("export"), dict) else {}
    models, stores = list(section.get("model") or []), list(section.get("embeddings") or [])
    found: list[str] = []
    for i, model in enumerate(models):
        if str(model) == "frozen":
            name = PurePosixPath(str(stores[i]) if i < len(stores) else "").stem
            backbone = name.removeprefix("frozen-") if name.startswith("frozen-") else None
        else:
            entry = params_models.get(PurePosixPath(str(model).rstrip("/")).name)
            backbone = entry.get("backbone") if isinstance(entry, dict) else None
        if backbone is None:
            info.errors.append(f"export member {model!r}: its backbone is not in the params")
            continue
        for b in COMPOSITE_BACKBONES.get(backbone, (backbone,)):
            if b not in found:
                found.append(b)
    return found


def _analyse(dvc_yaml: Path, params_yaml: Path | None, root: Path) -> tuple[dict, list[_Stage], list[StageInfo]]:
    data = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    ctx = _context(Path(dvc_yaml), data, params_yaml)
    stages = _expand(data, ctx)
    params_models = ctx.get("models") if isinstance(ctx.get("models"), dict) else {}
    command_modules = _command_modules(root)
    modules = backbone_modules(root)
    objectives = objective_modules(root)
    backbone_mods = set(modules.values()) | set(objectives.values())
    backbone_files = {m: _posix(import_closure(m, root, stop=backbone_mods - {m}))
                      for m in backbone_mods if _module_file(m, root) is not None}
    objective_dispatchers = {f.relative_to(root).as_posix() for f in
                             (_module_file(_dispatcher(m), root) for m in objectives.values()) if f is not None}
    cache: dict[tuple, set[str]] = {}

    def closure(module: str, stop: frozenset[str]) -> set[str]:
        if (module, stop) not in cache:
            cache[module, stop] = _posix(import_closure(module, root, stop=stop))
        return cache[module, stop]

    infos = []
    for st in stages:
        info = StageInfo(st.name, st.group, st.key)
        infos.append(info)
        try:
            cmd = _interp(st.body.get("cmd", ""), st.ctx)
            deps = _interp(st.body.get("deps") or [], st.ctx)
        except (KeyError, IndexError, TypeError) as exc:
            info.errors.append(f"cannot interpolate: {exc}")
            continue
        for dep in deps:
            path = _dep_path(dep)
            if path is not None and _is_code_dep(path, root):
                info.declared.append(path.strip().removeprefix("./").rstrip("/"))
        for kind, argv in _invocations(cmd):
            sub = next((a for a in argv if not a.startswith("-")), None)
            if sub is None:
                info.errors.append(f"cannot find the subcommand in {shlex.join(argv)!r}")
                continue
            info.subcommands.append(sub)
            module = f"{COMMANDS_PACKAGE}.{sub.replace('-', '_')}"
            if _module_file(module, root) is None:
                info.errors.append(f"subcommand {sub!r}: no module {module}")
                continue
            entry = f"{PACKAGE}.__main__" if kind == "module" else _script_entry(root)
            info.needed |= closure(entry, frozenset(command_modules | backbone_mods))
            info.needed |= closure(module, frozenset(backbone_mods))
            full = closure(module, frozenset()) | closure(entry, frozenset(command_modules))
            names = _backbones(info, st, argv, root, info.needed, full, params_models, modules)
            if sub == "export":  # a bundle builds every member of the params' export section
                for b in _export_backbones(ctx, params_models, info):
                    if b not in names:
                        names.append(b)
            for b in names:
                if modules[b] not in backbone_files:
                    info.errors.append(f"backbone {b!r}: no module {modules[b]}")
                    continue
                if b not in info.backbones:
                    info.backbones.append(b)
                info.needed |= backbone_files[modules[b]]
                if info.needed & objective_dispatchers and b in objectives:  # it pre-trains: b's objective too
                    if objectives[b] not in backbone_files:
                        info.errors.append(f"backbone {b!r}: no objective module {objectives[b]}")
                    else:
                        info.needed |= backbone_files[objectives[b]]
    return data, stages, infos


def stage_code_deps(dvc_yaml: Path, params_yaml: Path | None, root: Path) -> dict[str, set[str]]:
    """For every stage (foreach items expanded: `embed@beats-lora`), the asdtool files it must depend on."""
    _, _, infos = _analyse(Path(dvc_yaml), Path(params_yaml) if params_yaml else None, Path(root))
    return {info.name: info.needed for info in infos}


def _py_files_under(folder: str, root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts}


def _covered(path: str, declared: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in declared)


def _problems(info: StageInfo, root: Path) -> tuple[list[str], list[str], list[str]]:
    """(missing files, extra deps with the reason, deps that do not exist) of one stage."""
    missing = sorted(f for f in info.needed if not _covered(f, info.declared))
    extra, absent = [], []
    for dep in dict.fromkeys(info.declared):
        path = root / dep
        if not path.exists():
            absent.append(dep)
        elif path.is_dir():
            unneeded = sorted(_py_files_under(dep, root) - info.needed)
            if unneeded:
                extra.append(f"{dep} (covers {', '.join(unneeded)})")
        elif dep not in info.needed:
            extra.append(dep)
    return missing, extra, absent


def check(dvc_yaml: Path, params_yaml: Path | None, root: Path) -> list[str]:
    """Problems: a stage missing a needed asdtool file, depending on one it does not need, or on one
    that does not exist (one line each, `stage: ...`)."""
    root = Path(root)
    _, _, infos = _analyse(Path(dvc_yaml), Path(params_yaml) if params_yaml else None, root)
    problems = []
    for info in infos:
        problems += [f"{info.name}: {e}" for e in info.errors]
        missing, extra, absent = _problems(info, root)
        what = f"'asdtool {' '.join(info.subcommands)}'" if info.subcommands else "no asdtool command"
        if info.backbones:
            what += f" with backbone {'+'.join(info.backbones)}"
        problems += [f"{info.name}: missing {f} (imported by {what})" for f in missing]
        problems += [f"{info.name}: extra {d} (not imported by {what})" for d in extra]
        problems += [f"{info.name}: code dep {d} does not exist" for d in absent]
    folders = sorted({d for info in infos for d in info.declared if (root / d).is_dir()})
    if folders and not _dvcignores_pycache(root):
        problems.append(f".dvcignore: folder deps ({', '.join(folders)}) also hash the __pycache__/*.pyc files "
                        f"Python writes beside the code, so a run that writes bytecode makes their stages "
                        f"stale; add a line `__pycache__/` to .dvcignore")
    return problems


def _dvcignores_pycache(root: Path) -> bool:
    ignore = root / ".dvcignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    return any(line.strip().strip("/").lstrip("*/") in ("__pycache__", "__pycache__/*") for line in lines)


# --------------------------------------------------------------------------------------------------
# write: rewrite the code deps of dvc.yaml


class WriteError(ValueError):
    pass


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def _block_end(lines: list[str], start: int) -> int:
    """Index after the last content line of the value of the mapping key at lines[start]."""
    indent = _indent(lines[start])
    end = start + 1
    for i in range(start + 1, len(lines)):
        if not _is_content(lines[i]):
            continue
        ind, s = _indent(lines[i]), lines[i].strip()
        if ind > indent or (ind == indent and (s == "-" or s.startswith("- "))):
            end = i + 1
        else:
            break
    return end


def _child_keys(lines: list[str], start: int, end: int) -> dict[str, int]:
    """{key: line index} of the mapping keys directly inside lines[start:end]."""
    keys: dict[str, int] = {}
    indent = None
    for i in range(start, end):
        if not _is_content(lines[i]):
            continue
        if indent is None:
            indent = _indent(lines[i])
        if _indent(lines[i]) != indent:
            continue
        m = re.match(r"\s*(\"[^\"]*\"|'[^']*'|[^\s#'\"][^:#]*?)\s*:(\s|$)", lines[i])
        if m:
            keys[m.group(1).strip("\"'")] = i
    return keys


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        special = value[:1] in "{[&*!|>%@`\"'#,?-" or ": " in value or " #" in value or value != value.strip()
        if not special and value and yaml.safe_load(value) == value:
            return value
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _key_comment(line: str) -> str:
    """The comment at the end of a `key: value` line, as `  # text` (or "")."""
    rest = line.split(":", 1)[1].rstrip("\n") if ":" in line else ""
    if rest.strip().startswith("#"):
        return "  " + rest.strip()
    return "  #" + rest.split(" #", 1)[1] if " #" in rest else ""


def _single_path(files: set[str], needed: set[str], root: Path) -> str | None:
    """One dep path covering exactly `files` plus only needed files: the file, or a folder."""
    if len(files) == 1:
        return next(iter(files))
    parts = [PurePosixPath(f).parent.parts for f in files]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    while common:
        folder = "/".join(common)
        if _py_files_under(folder, root) <= needed:
            return folder
        common.pop()
    return None


def _item_paths(files: set[str], needed: set[str], root: Path) -> list[str] | None:
    """Dep paths covering exactly `files` plus only needed files: one file or folder, else one per package."""
    single = _single_path(files, needed, root)
    if single is not None:
        return [single]
    by_package: dict[str, set[str]] = {}
    for f in files:
        by_package.setdefault(PurePosixPath(f).parent.as_posix(), set()).add(f)
    paths = [_single_path(group, needed, root) for _, group in sorted(by_package.items())]
    return None if None in paths else paths  # type: ignore[return-value]


def _code_field(n: int) -> str:
    return CODE_FIELD if n == 0 else f"{CODE_FIELD}_{n + 1}"


def _is_code_field(name: str) -> bool:
    return name == CODE_FIELD or bool(re.fullmatch(re.escape(CODE_FIELD) + r"_\d+", name))


def write(dvc_yaml: Path, params_yaml: Path | None = None, root: Path | None = None) -> bool:
    """Rewrite dvc.yaml so each stage's asdtool code deps are exactly what it needs; True if changed.

    Non-code deps keep their order and come first, then the code files sorted. A foreach stage lists
    the files every item needs; when items need different backbone code, each item carries it in the
    field `code` (one file, or a folder whose every .py the item needs, e.g. `asdtool/models` for
    `dual`; code in several packages, as a backbone and its pre-training objective, takes one path per
    package in `code`, `code_2`, ...) and the deps end with `${item.code}` (`${item.code_2}`, ...): a list foreach becomes a mapping of mappings
    (`${item}` -> `${key}`), a mapping of scalars keeps the scalar in `value` (`${item}` ->
    `${item.value}`). A foreach taken from params (`${pseudolabel}`) cannot get a field; there the
    item code must be one path with the key in it, written as `asdtool/models/${key}.py`.
    Comments outside the rewritten blocks and everything else stay as they are. Idempotent.
    """
    dvc_yaml = Path(dvc_yaml)
    root = Path(root) if root is not None else dvc_yaml.parent
    params_yaml = Path(params_yaml) if params_yaml is not None else dvc_yaml.parent / "params.yaml"
    text = dvc_yaml.read_text()
    data, stages, infos = _analyse(dvc_yaml, params_yaml, root)
    errors = [f"{i.name}: {e}" for i in infos for e in i.errors]
    if errors:
        raise WriteError("cannot write while stages have errors:\n" + "\n".join(errors))
    by_group: dict[str, list[tuple[_Stage, StageInfo]]] = {}
    for st, info in zip(stages, infos):
        by_group.setdefault(st.group, []).append((st, info))

    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    top = _child_keys(lines, 0, len(lines))
    if "stages" not in top:
        raise WriteError(f"{dvc_yaml}: no stages")
    s_start = top["stages"]
    stage_lines = _child_keys(lines, s_start + 1, _block_end(lines, s_start))
    edits: list[tuple[int, int, list[str]]] = []  # (start, end, replacement); applied bottom-up

    for group, body in (data.get("stages") or {}).items():
        members = by_group[group]
        g_line = stage_lines[str(group)]
        g_end = _block_end(lines, g_line)
        g_keys = _child_keys(lines, g_line + 1, g_end)
        child_indent = _indent(lines[next(iter(g_keys.values()))]) if g_keys else _indent(lines[g_line]) + 2
        needed = [info.needed for _, info in members]
        common = set.intersection(*needed) if needed else set()
        code_deps = sorted(common)
        foreach_edit = None
        item_rename = None
        is_foreach = "foreach" in body
        if not is_foreach and "matrix" in body and len({frozenset(n) for n in needed}) > 1:
            raise WriteError(f"{group}: matrix stages whose items need different code are not supported")
        if is_foreach:
            raw = body["foreach"]
            per_item: dict[str, list[str]] = {}
            for st, info in members:
                extra = info.needed - common
                if extra:
                    paths = _item_paths(extra, info.needed, root)
                    if paths is None:
                        raise WriteError(f"{st.name}: its own code {sorted(extra)} is not one file or folder "
                                         f"per package")
                    per_item[st.name] = paths
            if per_item and len({len(v) for v in per_item.values()}) > 1:
                raise WriteError(f"{group}: its items' own code is not the same number of paths: {per_item}")
            if per_item and len(per_item) != len(members):
                lacking = [st.name for st, _ in members if st.name not in per_item]
                raise WriteError(f"{group}: items {lacking} need no code of their own while others do")
            f_line = g_keys["foreach"]
            f_end = _block_end(lines, f_line)
            if isinstance(raw, str):  # interpolated from params: no field to add
                if per_item:
                    for n in range(len(next(iter(per_item.values())))):
                        templates = set()
                        for st, _ in members:
                            head, found, tail = per_item[st.name][n].rpartition(st.key or "\0")
                            templates.add(head + "${key}" + tail if found else None)
                        fits = len(templates) == 1 and None not in templates and all(
                            next(iter(templates)).replace("${key}", st.key) == per_item[st.name][n] for st, _ in members)
                        if not fits:
                            raise WriteError(f"{group}: foreach {raw!r} comes from the params; its items' code "
                                             f"{per_item} cannot be written as paths with ${{key}}")
                        code_deps.append(templates.pop())
            else:
                new_items: dict | list
                if isinstance(raw, list) and all(not isinstance(x, (dict, list)) for x in raw):
                    new_items = {x: {} for x in raw}
                    item_rename = "${key}"
                elif isinstance(raw, dict) and all(not isinstance(v, (dict, list)) for v in raw.values()):
                    new_items = {k: {VALUE_FIELD: v} for k, v in raw.items()}
                    item_rename = "${item.%s}" % VALUE_FIELD
                elif isinstance(raw, dict) and all(isinstance(v, dict) for v in raw.values()):
                    new_items = {k: dict(v) for k, v in raw.items()}
                elif isinstance(raw, list) and all(isinstance(v, dict) for v in raw):
                    new_items = [dict(v) for v in raw]
                else:
                    raise WriteError(f"{group}: cannot add a {CODE_FIELD!r} field to foreach items {raw!r}")
                entries = list(new_items.values() if isinstance(new_items, dict) else new_items)
                fields_now = [_code_field(n) for n in range(len(next(iter(per_item.values()), [])))]
                stale = any(k not in fields_now and _is_code_field(k) for e in entries for k in e)
                for entry in entries:
                    for k in [k for k in entry if _is_code_field(k)]:
                        del entry[k]
                if not per_item:
                    item_rename = None
                    if not stale:
                        new_items = None  # leave the foreach as it is
                else:
                    for (st, _), entry in zip(members, entries):
                        for name, path in zip(fields_now, per_item[st.name]):
                            entry[name] = path
                    code_deps += ["${item.%s}" % name for name in fields_now]
                if new_items is not None:
                    ind = " " * (_indent(lines[f_line]) + 2)
                    out = [" " * _indent(lines[f_line]) + "foreach:" + _key_comment(lines[f_line]) + "\n"]
                    if isinstance(new_items, dict):
                        out += [f"{ind}{_scalar(k)}: {_scalar(v)}\n" for k, v in new_items.items()]
                    else:
                        out += [f"{ind}- {_scalar(v)}\n" for v in new_items]
                    foreach_edit = (f_line, f_end, out)
            if "do" not in g_keys:
                raise WriteError(f"{group}: foreach without do")
            d_line = g_keys["do"]
            d_end = _block_end(lines, d_line)
            holder_keys = _child_keys(lines, d_line + 1, d_end)
            holder = (d_line, d_end)
            raw_deps = (body.get("do") or {}).get("deps") or []
        else:
            holder_keys = g_keys
            holder = (g_line, g_end)
            raw_deps = body.get("deps") or []

        # the non-code deps, as written, in their order
        keep = []
        for dep in raw_deps:
            path = _dep_path(dep)
            is_code = False
            if path is not None:
                for st, _ in members:
                    try:
                        value = _interp(path, st.ctx)
                    except (KeyError, IndexError, TypeError):
                        continue
                    if isinstance(value, str) and _is_code_dep(value, root):
                        is_code = True
            if not is_code:
                keep.append(dep)
        if item_rename:
            keep = [_ITEM.sub(item_rename, d) if isinstance(d, str) else d for d in keep]
        entries = keep + code_deps
        if "deps" in holder_keys:
            k_line = holder_keys["deps"]
            k_end = _block_end(lines, k_line)
            ind = _indent(lines[k_line])
            comment = _key_comment(lines[k_line])
        else:
            k_line = k_end = holder[1]
            while k_line > holder[0] + 1 and not _is_content(lines[k_line - 1]):
                k_line -= 1
            k_end = k_line
            ind = child_indent if not is_foreach else _indent(lines[next(iter(holder_keys.values()))])
            comment = ""
        deps_block = []
        if entries:
            deps_block = [" " * ind + "deps:" + comment + "\n"]
            deps_block += [" " * (ind + 2) + "- " + _scalar(e) + "\n" for e in entries]
        if item_rename:  # ${item} -> ${key} / ${item.value} in the rest of the do: block
            for i in range(holder[0], holder[1]):
                if not (k_line <= i < k_end):
                    new = _ITEM.sub(item_rename, lines[i])
                    if new != lines[i]:
                        edits.append((i, i + 1, [new]))
        edits.append((k_line, k_end, deps_block))
        if foreach_edit:
            edits.append(foreach_edit)

    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[start:end] = new
    new_text = "".join(lines)
    if new_text == text:
        return False
    yaml.safe_load(new_text)  # still YAML
    dvc_yaml.write_text(new_text)
    return True


_ITEM = re.compile(r"\$\{\s*item\s*\}")


# --------------------------------------------------------------------------------------------------
# command line


def _table(dvc_yaml: Path, params_yaml: Path | None, root: Path) -> str:
    _, _, infos = _analyse(dvc_yaml, params_yaml, root)
    out = []
    for info in infos:
        missing, extra, absent = _problems(info, root)
        head = info.name
        if info.subcommands:
            head += f"  (asdtool {' '.join(info.subcommands)}"
            head += f", backbone {'+'.join(info.backbones)})" if info.backbones else ")"
        out.append(head)
        out += [f"    ! {e}" for e in info.errors]
        for f in sorted(info.needed):
            out.append(f"  {'+' if f in missing else ' '} {f}" + ("   <- missing" if f in missing else ""))
        out += [f"  - {d}   <- extra" for d in extra]
        out += [f"  ? {d}   <- does not exist" for d in absent]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asdtool.devtools.stage_deps", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="print the problems; exit 1 if there are any")
    mode.add_argument("--write", action="store_true", help="rewrite the asdtool code deps of dvc.yaml")
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"))
    parser.add_argument("--params", type=Path, default=None, help="default: params.yaml beside dvc.yaml")
    parser.add_argument("--root", type=Path, default=None, help="the repository root; default: dvc.yaml's folder")
    args = parser.parse_args(argv)
    root = args.root or args.dvc_yaml.parent
    params = args.params or args.dvc_yaml.parent / "params.yaml"
    if args.check:
        problems = check(args.dvc_yaml, params, root)
        print("\n".join(problems) if problems else f"{args.dvc_yaml}: every stage's code deps are complete")
        return 1 if problems else 0
    if args.write:
        try:
            changed = write(args.dvc_yaml, params, root)
        except WriteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{args.dvc_yaml}: {'rewritten' if changed else 'already up to date'}")
        problems = check(args.dvc_yaml, params, root)
        if problems:
            print("\n".join(problems))
            return 1
        return 0
    print(_table(args.dvc_yaml, params, root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
