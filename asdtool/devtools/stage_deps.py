"""Which asdtool source files each dvc.yaml stage must depend on, found from the import graph.

A stage running `asdtool <subcommand>` must depend on every asdtool file it can import and on no other. grimp
reads the imports (lazy ones too, not `if TYPE_CHECKING:`) in a subprocess with the project root first on the
path. Added: literal `import_module("...")` calls, the parent packages each import runs, the CLI entry (pyproject
`[project.scripts]`, or `asdtool.__main__`) with the `asdtool.commands.NAME` it imports by name (no other), and
of the backbones and objectives it imports by name (the project's `BACKBONE_MODULES`, `OBJECTIVES`) those of the
stage's model: `--backbone NAME`, else `models.<NAME>.backbone` in the params of `--model [models/]NAME`, `--name
NAME` or the foreach key (`dual` is both). DVC's `DataResolver` expands the stages; ruamel.yaml edits dvc.yaml.

    python -m asdtool.devtools.stage_deps [--check | --write]   # per-stage table | problems | rewrite dvc.yaml
"""

import argparse
import ast
import importlib.util
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import grimp
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

PACKAGE, COMMANDS_PACKAGE = "asdtool", "asdtool.commands"
TABLES = ("BACKBONE_MODULES", "OBJECTIVES")  # {backbone: module} literals of the modules importing them by name
COMPOSITE_BACKBONES = {"dual": ("beats", "eat")}  # models.<name>.backbone values that run several backbones
CODE_FIELD, VALUE_FIELD = "code", "value"  # foreach item fields: its own code; a scalar item's value
_GRIMP = ("import grimp, json, sys\ng = grimp.build_graph(*sys.argv[1:], exclude_type_checking_imports=True, "
          "cache_dir=None)\nprint(json.dumps({m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}))")

def _scan(root: Path, packages: Iterable[str]) -> tuple[dict[str, set[str]], dict[str, str], dict[str, tuple]]:
    """({module: what it imports}, {module: its file}, {table name: (module, the table)}) of `packages`."""
    run = subprocess.run([sys.executable, "-c", _GRIMP, *packages], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    if run.returncode:
        raise ValueError(f"no module {' '.join(packages)} under {root}: {run.stderr.strip().splitlines()[-1:]}")
    edges, tables = {m: set(imported) for m, imported in json.loads(run.stdout).items()}, {}
    files = {m: next(f.as_posix() for f in (base / "__init__.py", base.with_suffix(".py")) if (root / f).is_file())
             for m in edges for base in [Path(*m.split("."))]}
    for module in sorted(edges):
        tree = ast.parse((root / files[module]).read_text(encoding="utf-8"))
        here = module if files[module].endswith("__init__.py") else module.rpartition(".")[0]
        for node in ast.walk(tree):  # import_module("literal"[, "package" | __package__])
            func = getattr(node, "func", None)
            if getattr(func, "attr", getattr(func, "id", "")) == "import_module":
                name, anchor = [getattr(a, "value", here if getattr(a, "id", "") == "__package__" else None)
                                for a in [*node.args, *(k.value for k in node.keywords), None, None][:2]]
                if isinstance(name, str) and name.startswith("."):
                    name = importlib.util.resolve_name(name, anchor) if isinstance(anchor, str) else None
                edges[module] |= {name} & edges.keys()
        for node in tree.body:  # BACKBONE_MODULES = {"name": "module", ...}
            target, value = getattr(node, "targets", [getattr(node, "target", None)])[0], getattr(node, "value", None)
            if getattr(target, "id", None) in TABLES and isinstance(value, ast.Dict) and all(
                    isinstance(v, ast.Constant) for v in [*value.keys, *value.values]):
                tables.setdefault(target.id, (module, ast.literal_eval(value)))
    for module in edges:  # importing a.b.c runs a and a.b first
        for name in [module, *edges[module]]:
            edges[module] |= {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} & edges.keys()
    return edges, files, tables

def _closure(edges: dict[str, set[str]], files: dict[str, str], module: str, stop: Iterable[str] = ()) -> set[str]:
    graph, stop = grimp.ImportGraph(), set(stop)
    for m in edges.keys() - stop:
        graph.add_module(m)
        for imported in edges[m] - stop:
            graph.add_import(importer=m, imported=imported)
    return {files[m] for m in {module, *graph.find_upstream_modules(module)}} if module in graph.modules else set()

def import_closure(module: str, root: Path, *, stop: Iterable[str] = (), packages: Iterable[str] = ()) -> set[str]:
    """The .py files (posix, relative to `root`) that importing `module` can run: grimp's graph of `packages`
    (default: `module`'s top package) with parent packages and literal `import_module()` calls; `stop` not."""
    edges, files, _ = _scan(Path(root), list(packages) or [module.split(".")[0]])
    if module not in edges:
        raise ValueError(f"no module {module!r} under {root}")
    return _closure(edges, files, module, stop)

def backbone_modules(root: Path) -> dict[str, str]:
    """{backbone: module}: the `BACKBONE_MODULES = {...}` literal of the project at `root` ({} if none)."""
    return _scan(Path(root), [PACKAGE])[2].get("BACKBONE_MODULES", (None, {}))[1]

def _invocations(cmd: Any) -> list[tuple[str, list[str]]]:
    found = []  # (entry kind: "script" | "module", argv after the program) of each asdtool call
    for line in cmd if isinstance(cmd, list) else [cmd]:
        lex = shlex.shlex(str(line), posix=True, punctuation_chars=";&|()<>")
        lex.whitespace_split, lex.commenters = True, ""
        for _, seg in itertools.groupby(lex, lambda t: bool(t) and set(t) <= set(";&|()<>")):  # split at ; && | ...
            seg = list(itertools.dropwhile(lambda t: re.fullmatch(r"[A-Za-z_]\w*=.*", t), seg))  # VAR=value prefixes
            prog, at = PurePosixPath(seg[0]).name if seg else "", seg.index("-m") + 1 if "-m" in seg else 0
            if prog == PACKAGE or at and re.fullmatch(r"python[\d.]*", prog) and seg[at:at + 1] == [PACKAGE]:
                found.append(("script", seg[1:]) if prog == PACKAGE else ("module", seg[at + 1:]))
    return found

def _option(argv: list[str], name: str) -> str | None:
    return next((b if a == name else a.split("=", 1)[1] for a, b in zip(argv, [*argv[1:], None])
                 if (a == name and b is not None) or a.startswith(name + "=")), None)

def _code_path(dep: Any, root: Path) -> str | None:
    p = str(dep if isinstance(dep, str) else next(iter(dep)) if isinstance(dep, dict) and len(dep) == 1 else "")
    p = p.strip().removeprefix("./").rstrip("/")  # the path of a code dep (an asdtool .py file or folder)
    return p if p.split("/")[0] == PACKAGE and (p.endswith(".py") or not (root / p).is_file()) else None

def _backbones(info: SimpleNamespace, argv: list[str], full: set[str], ctx: dict, edges: dict, files: dict,
               table: tuple) -> list[str]:
    """The backbones a command builds: those a needed module imports; if it reaches the BACKBONE_MODULES `table`
    (`full`: its whole closure), its model's (see the module docstring); for `asdtool export`, its members'."""
    (home, mods), models = table, ctx.get("models") if isinstance(ctx.get("models"), dict) else {}
    found = [b for b, m in mods.items() if any(m in edges[x] and files[x] in info.needed for x in edges if x != home)]
    known = {**{b: b for b in (*mods, *COMPOSITE_BACKBONES)},  # {model or backbone name: its backbone}
             **{n: e["backbone"] for n, e in models.items() if isinstance(e, dict) and e.get("backbone")}}
    wanted: list[tuple[str, str]] = []  # (backbone, " of NAME")
    if {files.get(m) for m in (home, *mods.values())} & full:
        named, model = _option(argv, "--backbone"), _option(argv, "--model")  # --backbone: frozen, pretrain
        names = [PurePosixPath(v.rstrip("/")).name for v in (model, _option(argv, "--name")) if v]
        pairs = [(named, "")] if named is not None else [(known.get(n), f" of {n!r}") for n in [*names, info.key]]
        wanted = next(([p] for p in pairs if p[0]), [])
        if not wanted and named is None and model:
            info.errors.append(f"names a model ({model}) whose backbone is not in the params; counting every backbone")
            wanted = [(b, "") for b in mods]
    section = ctx.get("export") if isinstance(ctx.get("export"), dict) and info.subcommands[-1] == "export" else {}
    stores = [PurePosixPath(str(s)).stem for s in section.get("embeddings") or []]
    for i, model in enumerate(section.get("model") or []):  # a frozen member: the backbone its store is named after
        store, name = stores[i] if i < len(stores) else "", PurePosixPath(str(model).rstrip("/")).name
        backbone = (store[7:] if store.startswith("frozen-") else None) if name == "frozen" else known.get(name)
        wanted += [(backbone, f" of {model!r}")] if backbone else []
        info.errors += [] if backbone else [f"export member {model!r}: its backbone is not in the params"]
    for backbone, where in wanted:
        for b in COMPOSITE_BACKBONES.get(backbone, (backbone,)):
            info.errors += [] if b in mods else [f"unknown backbone {b!r}{where} (known: {', '.join(mods)})"]
            found += [] if b in found or b not in mods else [b]
    return found

def _analyse(dvc_yaml: Path, params_yaml: Path | None, root: Path) -> list[SimpleNamespace]:
    """Each stage as DVC's DataResolver expands it: name, group, foreach key, cmd, deps (one per dep written),
    errors, subcommands, backbones, needed and declared code; `params_yaml` (if not beside dvc.yaml) goes in `vars`."""
    from dvc.exceptions import DvcException
    from dvc.parsing import DataResolver, ForeachDefinition
    from dvc.repo import Repo
    dvc_yaml, root, infos = Path(dvc_yaml), Path(root), []
    data = YAML(typ="safe", pure=True).load(dvc_yaml.read_text()) or {}
    if params_yaml is not None and Path(params_yaml).resolve() != (dvc_yaml.parent / "params.yaml").resolve():
        data["vars"] = [str(Path(params_yaml).resolve()), *(data.get("vars") or [])]
    with Repo(str(root), uninitialized=True) as repo:
        resolver = DataResolver(repo, str(dvc_yaml.parent.resolve()), data)
        for name in resolver.get_keys():
            group, _, key = name.partition("@")
            definition = resolver.definitions[group]  # the foreach key: of a mapping, not of a list or matrix
            keyed = isinstance(definition, ForeachDefinition) and isinstance(definition.resolved_iterable, Mapping)
            infos.append(info := SimpleNamespace(name=name, group=group, key=key if keyed else None, cmd="", deps=[],
                                                 errors=[], subcommands=[], backbones=[], needed=set()))
            try:
                info.cmd, info.deps = (st := resolver.resolve_one(name)[name]).get("cmd", ""), st.get("deps") or []
            except DvcException as exc:
                info.errors.append(f"cannot resolve: {exc}")
        ctx = resolver.context.value
    edges, files, tables = _scan(root, [PACKAGE])
    table, (obj_home, objectives) = tables.get("BACKBONE_MODULES", (None, {})), tables.get("OBJECTIVES", (None, {}))
    commands = {m for m in edges if m.rpartition(".")[0] == COMMANDS_PACKAGE}
    by_name = {*table[1].values(), *objectives.values()}  # the modules imported by name
    project = (tomllib.loads(pyp.read_text()) if (pyp := root / "pyproject.toml").is_file() else {}).get("project", {})
    script = project.get("scripts", {}).get(PACKAGE, f"{PACKAGE}.cli").split(":")[0]  # the module `asdtool` runs
    for info in infos:
        info.declared = list(dict.fromkeys(p for d in info.deps if (p := _code_path(d, root))))
        for kind, argv in _invocations(info.cmd):
            sub = next((a for a in argv if not a.startswith("-")), None)
            if (module := f"{COMMANDS_PACKAGE}.{(sub or '').replace('-', '_')}") not in edges:
                info.errors.append(f"subcommand {sub!r}: no module {module}" if sub else
                                   f"cannot find the subcommand in {shlex.join(argv)!r}")
                continue
            info.subcommands.append(sub)
            entry = f"{PACKAGE}.__main__" if kind == "module" else script
            info.needed |= _closure(edges, files, entry, commands | by_name) | _closure(edges, files, module, by_name)
            full = _closure(edges, files, module) | _closure(edges, files, entry, commands)
            for b in _backbones(info, argv, full, ctx, edges, files, table):
                if (m := table[1][b]) not in edges:
                    info.errors.append(f"backbone {b!r}: no module {m}")
                    continue
                info.backbones += [] if b in info.backbones else [b]
                info.needed |= _closure(edges, files, m, by_name - {m})
                if b in objectives and obj_home is not None and files[obj_home] in info.needed:  # b's objective too
                    if (o := objectives[b]) not in edges:
                        info.errors.append(f"backbone {b!r}: no objective module {o}")
                    info.needed |= _closure(edges, files, o, by_name - {o})
    return infos

def stage_code_deps(dvc_yaml: Path, params_yaml: Path | None, root: Path) -> dict[str, set[str]]:
    """For every stage (foreach items expanded: `embed@beats-lora`), the asdtool files it must depend on."""
    return {info.name: info.needed for info in _analyse(Path(dvc_yaml), params_yaml, Path(root))}

def _py_files_under(folder: str, root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts}

def check(dvc_yaml: Path, params_yaml: Path | None, root: Path) -> list[str]:
    """Problems, one line each (`stage: ...`): a stage missing a needed asdtool file, depending on one it
    does not need or on one that does not exist; folder deps without `__pycache__/` in .dvcignore."""
    infos, problems, root = _analyse(Path(dvc_yaml), params_yaml, Path(root)), [], Path(root)
    for info in infos:
        missing = sorted(f for f in info.needed if not any(f == d or f.startswith(d + "/") for d in info.declared))
        unneeded = {d: sorted(_py_files_under(d, root) - info.needed) for d in info.declared if (root / d).is_dir()}
        extra = [f"{d} (covers {', '.join(unneeded[d])})" if d in unneeded else d for d in info.declared
                 if unneeded.get(d) or (root / d).is_file() and d not in info.needed]
        what = f"'asdtool {' '.join(info.subcommands)}'" if info.subcommands else "no asdtool command"
        what += f" with backbone {'+'.join(info.backbones)}" if info.backbones else ""
        problems += [f"{info.name}: {p}" for p in [*info.errors, *(f"missing {f} (imported by {what})" for f in
                     missing), *(f"extra {d} (not imported by {what})" for d in extra),
                     *(f"code dep {d} does not exist" for d in info.declared if not (root / d).exists())]]
    folders = sorted({d for i in infos for d in i.declared if (root / d).is_dir()})
    if folders and not _dvcignores_pycache(root):
        problems.append(f".dvcignore: folder deps ({', '.join(folders)}) also hash the __pycache__/*.pyc files Python "
                        f"writes there, so a run makes their stages stale; add a line `__pycache__/` to .dvcignore")
    return problems

def _dvcignores_pycache(root: Path) -> bool:
    lines = (root / ".dvcignore").read_text().splitlines() if (root / ".dvcignore").is_file() else []
    return any(line.strip().strip("/").lstrip("*/") in ("__pycache__", "__pycache__/*") for line in lines)

class WriteError(ValueError):
    """dvc.yaml cannot be rewritten: stages with errors, or item code that no item field can carry."""

def _item_paths(files: set[str], needed: set[str], root: Path) -> list[str] | None:
    def _single(group: set[str]) -> str | None:  # the file, or the folder with no unneeded .py
        folder = next(iter(group)) if len(group) == 1 else os.path.commonpath(sorted(group))
        while folder and len(group) > 1 and not _py_files_under(folder, root) <= needed:
            folder = os.path.dirname(folder)
        return folder or None
    by_dir = {d: {f for f in files if os.path.dirname(f) == d} for d in {os.path.dirname(f) for f in files}}
    paths = [_single(files)] if _single(files) else [_single(by_dir[d]) for d in sorted(by_dir)]  # else one per package
    return None if None in paths else paths  # type: ignore[return-value]

def _rename(node: Any, new: str) -> None:
    def _sub(s: Any) -> Any:  # `${item}` -> `new` in every string and key under the ruamel `node`
        return type(s)(t) if isinstance(s, str) and (t := re.sub(r"\$\{\s*item\s*\}", new, s)) != s else s
    for i, (k, v) in enumerate(list(node.items()) if isinstance(node, dict) else list(enumerate(node))):
        if isinstance(node, dict) and _sub(k) is not k:
            del node[k]
            node.insert(i, k := _sub(k), v)
        if _sub(v) is not v:
            node[k] = _sub(v)
        elif isinstance(v, (dict, list)):
            _rename(v, new)

def _item_code(body: CommentedMap, members: list, own: dict[str, list[str]], fields: list[str]) -> list[str]:
    raw, rename = body["foreach"], None  # returns the deps naming each item's own code
    if isinstance(raw, str):  # a foreach from the params takes no fields: the paths may differ by the key only
        templates = [{h + "${key}" + t if found else None for i in members
                      for h, found, t in [own[i.name][n].rpartition(i.key or "\0")]} for n in range(len(fields))]
        if any(len(t) != 1 or None in t for t in templates):
            raise WriteError(f"{members[0].group}: foreach {raw!r} comes from the params; its items' code {own} "
                             f"cannot be written as paths with ${{key}}")
        return [t.pop() for t in templates]
    scalars = own and not any(isinstance(x, (dict, list)) for x in (raw.values() if isinstance(raw, dict) else raw))
    if scalars and isinstance(raw, list):  # [a, b] -> {a: {}, b: {}}, ${item} -> ${key}
        comment = body.ca.items.get("foreach", [None] * 3)[2]
        raw = body["foreach"] = CommentedMap((x, CommentedMap()) for x in raw)
        if comment is not None:  # `foreach: [a, b]  # c` -> `foreach:  # c`
            comment.column = body.lc.key("foreach")[1] + len("foreach:  ")
        rename = "${key}"
    elif scalars:  # {a: x} -> {a: {value: x}}, ${item} -> ${item.value}
        raw.update((k, CommentedMap({VALUE_FIELD: v})) for k, v in list(raw.items()))
        rename = "${item.%s}" % VALUE_FIELD
    for info, entry in zip(members, list(raw.values() if isinstance(raw, dict) else raw)):
        if own and not isinstance(entry, dict):
            raise WriteError(f"{info.group}: cannot add a {CODE_FIELD!r} field to foreach items {raw!r}")
        old = {k: v for k, v in (entry.items() if isinstance(entry, dict) else ()) if re.fullmatch(r"code(_\d+)?", k)}
        if list(old.items()) != list(zip(fields, own.get(info.name, []))):
            for k in old:
                del entry[k]
            entry.update(zip(fields, own.get(info.name, [])))
    if rename:
        _rename(body["do"], rename)
    return ["${item.%s}" % f for f in fields]

def write(dvc_yaml: Path, params_yaml: Path | None = None, root: Path | None = None) -> bool:
    """Rewrite dvc.yaml's code deps to what each stage needs (True if changed; idempotent): other deps, the code
    files sorted, then `${item.code}` (`_2`, ... one per package: a file or a folder) where foreach items need their
    own code, in item fields (a list becomes a mapping, `${item}` -> `${key}`) or as a path with `${key}` in it."""
    dvc_yaml, root = Path(dvc_yaml), Path(root or Path(dvc_yaml).parent)
    infos = _analyse(dvc_yaml, params_yaml, root)
    if errors := [f"{i.name}: {e}" for i in infos for e in i.errors]:
        raise WriteError("cannot write while stages have errors:\n" + "\n".join(errors))
    rt, text = YAML(), dvc_yaml.read_text()
    rt.indent(mapping=2, sequence=4, offset=2)  # new leaf mappings in flow style, lines never wrapped
    rt.width, rt.preserve_quotes, rt.default_flow_style, doc = 1 << 16, True, None, rt.load(text)
    for group, body in doc["stages"].items():
        members = [i for i in infos if i.group == group]
        common = set.intersection(*(i.needed for i in members))
        own = {i.name: _item_paths(i.needed - common, i.needed, root) for i in members if i.needed - common}
        if own and ("foreach" not in body or None in own.values() or len(own) != len(members)
                    or len({*map(len, own.values())}) > 1):
            raise WriteError(f"{group}: its items' own code is not the same number of paths, one file or folder per "
                             f"package, in every item of a foreach: {own}")
        fields = [CODE_FIELD + (f"_{n + 1}" if n else "") for n in range(len(next(iter(own.values()), [])))]
        codes = sorted(common) + (_item_code(body, members, own, fields) if "foreach" in body else [])
        old = (holder := body["do"] if "foreach" in body else body).get("deps") or []
        entries = [d for n, d in enumerate(old) if not any(n < len(i.deps) and _code_path(i.deps[n], root)
                                                               for i in members)] + codes
        if list(old) != entries and entries:
            holder["deps"] = new = CommentedSeq(entries)
            new.fa.set_block_style()
            if isinstance(old, CommentedSeq) and len(old) - 1 in old.ca.items:  # blank lines after the list
                new.ca.items[len(entries) - 1] = old.ca.items[len(old) - 1]
        elif not entries and "deps" in holder:
            del holder["deps"]
    rt.dump(doc, out := io.StringIO())
    new_text = out.getvalue()
    for m in re.finditer(r": ([\[{][^\[\]{}#]*\n[^\[\]{}#]*[\]}])", text):  # ruamel puts flow lists on one line
        new_text = new_text.replace(": " + re.sub(r"\s*\n\s*", " ", m.group(1)), m.group(0))
    if new_text != text:
        dvc_yaml.write_text(new_text)
    return new_text != text

def main(argv: list[str] | None = None) -> int:
    """The command line: a per-stage table, `--check` (exit 1 on problems) or `--write` (then the check)."""
    parser = argparse.ArgumentParser(prog="python -m asdtool.devtools.stage_deps", description=__doc__.split("\n")[0])
    for flag, text in (("--check", "print the problems; exit 1 if any"), ("--write", "rewrite dvc.yaml, then check")):
        parser.add_argument(flag, action="store_true", help=text)
    for flag, default, text in (("--dvc-yaml", Path("dvc.yaml"), None), ("--root", None, "default: dvc.yaml's folder"),
                                ("--params", None, "default: params.yaml beside dvc.yaml")):
        parser.add_argument(flag, type=Path, default=default, help=text)
    args = parser.parse_args(argv)
    dvc_yaml, root = args.dvc_yaml, args.root or args.dvc_yaml.parent
    if args.write:
        try:
            changed = write(dvc_yaml, args.params, root)
        except WriteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{dvc_yaml}: {'rewritten' if changed else 'already up to date'}")
    if args.check or args.write:
        problems = check(dvc_yaml, args.params, root)
        print("\n".join(problems) if problems else f"{dvc_yaml}: every stage's code deps are complete")
        return 1 if problems else 0
    for info in _analyse(dvc_yaml, args.params, root):  # what each stage needs (its problems: --check)
        print(f"{info.name}  (asdtool {' '.join(info.subcommands)}; backbone {'+'.join(info.backbones) or '-'})",
              *(f"    ! {e}" for e in info.errors), *(f"    {f}" for f in sorted(info.needed)), sep="\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
