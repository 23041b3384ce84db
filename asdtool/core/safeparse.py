"""Reading a user's YAML and JSON files with bounded cost: size, nesting, no aliases, no duplicate keys.

A params file, a submission's meta file or a metrics JSON comes from the user, and a file of a few
hundred bytes can cost a plain `yaml.safe_load` gigabytes: nested anchors and aliases (the "billion
laughs") expand into a value that every later step (a type check, an error message quoting it) copies
again. So a file is first checked by its size (stat, before reading), then parsed.

PyYAML (pinned in constraints.txt) is kept for what it does well, its parser and its safe
constructors, with a composer of our own on top: it refuses every anchor and alias (no file of this
tool needs them), and counts the nesting as it composes (PyYAML's composer recurses for every level,
so 50,000 `[` would end in a RecursionError); the constructor refuses a key given twice in one mapping
(PyYAML keeps the last value in silence). When PyYAML was built with libyaml, the events come from its
C parser (much faster; CSafeLoader's own composer is C code that none of this can hook into, so ours
replaces it); both parsers give the same documents, with slightly different syntax-error wording.

JSON goes through the standard library's parser: duplicate keys are refused by its pairs hook, and
the nesting is checked after parsing (its C scanner raises RecursionError long before the stack is in
danger, which is caught too). Every failure is one `AsdError` line naming the file.
"""
from __future__ import annotations

import collections.abc
import json
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode

from asdtool.core.errors import AsdError, quote

MAX_DEPTH = 64  # nesting levels of lists and mappings; the tool's own files use fewer than 10
YAML_MAX_BYTES = 1_000_000
JSON_MAX_BYTES = 10_000_000
MESSAGE_LIMIT = 100  # characters of a parser's message in ours
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A document the loader refuses; the text is the problem, without the file (the loader knows none)."""


def _line(where) -> str:
    """Return "line N" of an event, a node or a mark."""
    mark = getattr(where, "start_mark", where)
    return f"line {mark.line + 1}" if mark is not None else "line unknown"


def _clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _BoundedComposer(Composer):
    """PyYAML's composer, refusing anchors and aliases and nesting deeper than MAX_DEPTH."""

    _depth = 0  # lists and mappings open around the node being composed

    def compose_node(self, parent, index):
        """Return the next node as PyYAML composes it; _Refused for an anchor, an alias or nesting deeper than MAX_DEPTH."""
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise _Refused(f"uses the YAML alias *{_clip(event.anchor, 40)} ({_line(event)}); anchors and aliases are "
                           "not accepted, write the value out")  # fmt: skip
        if event.anchor is not None:
            raise _Refused(f"defines the YAML anchor &{_clip(event.anchor, 40)} ({_line(event)}); anchors and aliases "
                           "are not accepted, write the value out")  # fmt: skip
        if not isinstance(event, (SequenceStartEvent, MappingStartEvent)):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nests lists and mappings deeper than {MAX_DEPTH} levels ({_line(event)})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _UniqueKeyConstructor(SafeConstructor):
    """PyYAML's safe constructor, refusing a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        """Return the mapping PyYAML constructs from `node`; _Refused for a key given twice (merge keys aside)."""
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:  # the mapping's own keys, before merge keys (`<<:`) are flattened
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, collections.abc.Hashable):
                    continue  # the constructor below says so
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _Refused(f"has the key {quote(key)} twice in one mapping (lines {seen[key]} and {line})")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _PyLoader(_BoundedComposer, _UniqueKeyConstructor, yaml.SafeLoader):
    """The bounded loader on PyYAML's pure-Python reader, scanner and parser."""


if getattr(yaml, "__with_libyaml__", False):

    class _CLoader(_BoundedComposer, _UniqueKeyConstructor, yaml.CSafeLoader):
        """The bounded loader on libyaml's parser: C events, our composer (CSafeLoader's own is C, unbounded)."""

        def __init__(self, stream):
            yaml.CSafeLoader.__init__(self, stream)
            Composer.__init__(self)  # CSafeLoader sets up no Python composer

    _Loader: type = _CLoader
else:  # pragma: no cover - PyYAML built without libyaml
    _Loader = _PyLoader


def _yaml_problem(exc: Exception) -> str:
    """Return a parser's complaint in one short line: its problem and where, or its message's first line."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem:
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return _clip(f"{problem}{where}")
    lines = str(exc).strip().splitlines()
    return _clip(lines[0] if lines else exc.__class__.__name__)


def loads_yaml(text: str, path: str | Path | None = None, *, loader: type | None = None) -> Any:
    """Return the YAML document of `text` (read from `path`, named in errors); AsdError on what it refuses.

    Refused: a syntax error, an anchor or alias, nesting deeper than MAX_DEPTH, a key twice in a mapping,
    more than one document. `loader` picks the parser class (tests compare the C and Python ones).
    """
    too_deep = f"nests lists and mappings deeper than {MAX_DEPTH} levels"
    parser = None
    try:
        parser = (loader or _Loader)(text)  # the pure-Python reader checks the characters here
        return parser.get_single_data()
    except _Refused as exc:
        raise AsdError(str(exc), path) from None
    except RecursionError:  # not reached with MAX_DEPTH levels; kept so that no traceback can escape
        raise AsdError(too_deep, path) from None
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: e.g. an int of 5,000 digits, a bad date
        if "maximum nesting depth" in str(getattr(exc, "problem", "")):  # libyaml's own limit, met while scanning ahead
            raise AsdError(f"{too_deep} ({_line(exc.problem_mark)})", path) from None
        raise AsdError(f"is not valid YAML ({_yaml_problem(exc)})", path) from None
    finally:
        if parser is not None:
            parser.dispose()


def loads_json(text: str, path: str | Path | None = None) -> Any:
    """Return the JSON document of `text` (read from `path`, named in errors); AsdError on what it refuses.

    Refused: a syntax error, nesting deeper than MAX_DEPTH, a key twice in an object.
    """

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        """Return the dict of one JSON object's pairs; _Refused for a key given twice."""
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise _Refused(f"has the key {quote(key)} twice in one object")
            obj[key] = value
        return obj

    try:
        doc = json.loads(text, object_pairs_hook=unique)
    except _Refused as exc:
        raise AsdError(str(exc), path) from None
    except RecursionError:
        raise AsdError(f"nests arrays and objects deeper than {MAX_DEPTH} levels", path) from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise AsdError(f"is not valid JSON ({_clip(str(exc).splitlines()[0] if str(exc) else 'ValueError')})", path) from None
    if _json_depth(doc) > MAX_DEPTH:
        raise AsdError(f"nests arrays and objects deeper than {MAX_DEPTH} levels", path)
    return doc


def _json_depth(doc: Any) -> int:
    """Return how many levels of lists and dicts `doc` nests (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(doc, 1)] if isinstance(doc, (list, dict)) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        items = node.values() if isinstance(node, dict) else node
        stack.extend((item, depth + 1) for item in items if isinstance(item, (list, dict)))
    return deepest


def read_text(path: str | Path, *, what: str, max_bytes: int) -> str:
    """Return the UTF-8 text of a user's file of at most `max_bytes` bytes; AsdError naming it otherwise."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise AsdError(f"{what} does not exist", path) from None
    except OSError as exc:
        raise AsdError(f"{what} cannot be read ({exc.strerror or exc.__class__.__name__})", path) from None
    if stat.S_ISDIR(info.st_mode):
        raise AsdError(f"{what} is a folder, not a file", path)
    if not stat.S_ISREG(info.st_mode):
        raise AsdError(f"{what} is not a regular file", path)
    too_big = AsdError(f"{what} is larger than the {max_bytes:,} bytes accepted", path)
    if info.st_size > max_bytes:
        raise too_big
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as exc:
        raise AsdError(f"{what} cannot be read ({exc.strerror or exc.__class__.__name__})", path) from None
    if len(data) > max_bytes:
        raise too_big
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is dropped
    except UnicodeDecodeError as exc:
        raise AsdError(f"{what} is not UTF-8 text (byte {exc.start} cannot be decoded)", path) from None


def read_yaml(path: str | Path, *, what: str, max_bytes: int = YAML_MAX_BYTES) -> Any:
    """Return the YAML document of a user's file (`what` names its kind in errors: "params file"), checked as loads_yaml."""
    return loads_yaml(read_text(path, what=what, max_bytes=max_bytes), path)


def read_json(path: str | Path, *, what: str, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """Return the JSON document of a user's file (`what` names its kind in errors: "meta file"), checked as loads_json."""
    return loads_json(read_text(path, what=what, max_bytes=max_bytes), path)
