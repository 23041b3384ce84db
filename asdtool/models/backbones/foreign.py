"""Reading foreign .pt checkpoints (the official BEATs and EAT files) safely: a restricted unpickler."""

from __future__ import annotations

import pickle
import types
import zipfile
from pathlib import Path

import torch

from asdtool.core.errors import AsdError

# ----------------------------------------------------------------------------- checkpoint files
#
# Official checkpoints are pickles. BEATs pickles plain dicts of tensors; fairseq (EAT) also pickles
# its OmegaConf config and training state. `read_checkpoint` unpickles with a restricted unpickler:
# torch's tensor globals load as torch loads them; OmegaConf objects, argparse namespaces, numpy
# values and defaultdicts load as inert stand-ins that become plain data afterwards; any other class
# loads as an inert marker that runs nothing and makes the load fail unless it sits where only a
# config can put it (an OmegaConf node's type annotation, or the member of an OmegaConf enum node).

# Top-level entries of a fairseq checkpoint that hold trainer state, not the model; checked, then left out.
TRAINING_STATE = ("optimizer_history", "last_optimizer_state", "extra_state", "task_state", "criterion")


class _Refused(Exception):
    """A class the checkpoint may not load."""

    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


class _Inert:
    """Base of the stand-ins: built by pickle with any arguments, keeps its BUILD state, runs nothing."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class _OmegaDict(_Inert):
    """omegaconf DictConfig; its state holds `_content` {key: node}, `_metadata` and `_parent`."""


class _OmegaList(_Inert):
    """omegaconf ListConfig; its state holds `_content` [node, ...]."""


class _OmegaNode(_Inert):
    """omegaconf value node (AnyNode, IntegerNode, StringNode...); its state holds `_val`."""


class _OmegaEnumNode(_OmegaNode):
    """omegaconf EnumNode; `_val` is the member, pickled as a call of its enum class with the value."""


class _OmegaMetadata(_Inert):
    """omegaconf (Container)Metadata: type annotations and flags, dropped."""


class _Namespace(_Inert):
    """argparse.Namespace (fairseq's legacy `args`); becomes the dict of its attributes."""


class _Dropped(_Inert):
    """numpy scalar, array or dtype (fairseq meters, RNG state); becomes None."""


class _Foreign(_Inert):
    """Any other class: a marker that runs nothing; the load fails unless a config annotation holds it."""

    qualname = "?"
    calls: list[str]  # per read: qualified names of the foreign classes pickle instantiated

    def __new__(cls, *args, **kwargs):
        cls.calls.append(cls.qualname)
        return super().__new__(cls, *args, **kwargs)


class _TypeRef:
    """A `typing` annotation (typing.Any, List[int]) in OmegaConf metadata."""

    def __init__(self, name: str):
        self.name = name


def _subscript(base, item):  # what pickle calls for an annotation such as List[int]
    if not isinstance(base, _TypeRef):
        raise _Refused("operator.getitem")
    return _TypeRef(f"{base.name}[...]")


def _defaultdict(default_factory=None):
    if isinstance(default_factory, type) and issubclass(default_factory, _Foreign):
        raise _Refused(default_factory.qualname)
    return {}  # the items follow as SETITEMS


def _torch_globals() -> dict[str, object]:
    """Return the globals torch's own weights-only loader accepts: tensor rebuilds, storages, dtypes."""
    # Private API, used only here: torch has no public getter for its built-in allowlist
    # (torch.serialization.get_safe_globals() lists only the globals users add).
    from torch._weights_only_unpickler import _get_allowed_globals

    return _get_allowed_globals()


def _allowed_globals() -> dict[str, object]:
    """Return {"module.Name": what pickle gets} for every global a checkpoint may name."""
    allowed = dict(_torch_globals())
    # builtin data types: OmegaConf metadata names them as node types; calling them builds plain data
    for t in (dict, list, tuple, int, float, str, bool, bytes, frozenset):
        allowed[f"builtins.{t.__name__}"] = t
    allowed.update(
        {
            "omegaconf.dictconfig.DictConfig": _OmegaDict,
            "omegaconf.listconfig.ListConfig": _OmegaList,
            "omegaconf.nodes.EnumNode": _OmegaEnumNode,
            "omegaconf.base.ContainerMetadata": _OmegaMetadata,
            "omegaconf.base.Metadata": _OmegaMetadata,
            "operator.getitem": _subscript,  # omegaconf 2.0 pickles List[int] as getitem(List, int)
            "_operator.getitem": _subscript,
            "argparse.Namespace": _Namespace,
            "collections.defaultdict": _defaultdict,  # omegaconf's resolver cache
        }
    )
    for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and 2
        allowed.update({f"{numpy_core}.scalar": _Dropped, f"{numpy_core}._reconstruct": _Dropped})
    allowed.update({"numpy.dtype": _Dropped, "numpy.ndarray": _Dropped})
    return allowed


def _restricted_pickle() -> types.ModuleType:
    """Return a pickle-like module (Unpickler, load) for torch.load that maps globals as described above."""
    allowed, foreign, calls = _allowed_globals(), {}, []

    class Unpickler(pickle.Unpickler):
        """Unpickler whose globals come from the allowlist and the stand-ins; any other class loads as an inert marker."""
        def find_class(self, module, name):
            """Return the object a pickled global names: an allowed one, a stand-in, or an inert `_Foreign` class (one per name)."""
            if module in ("__builtin__", "copy_reg"):  # protocol 2 writes Python 2 names
                module = "builtins" if module == "__builtin__" else "copyreg"
                name = {"long": "int", "unicode": "str"}.get(name, name)
            qualname = f"{module}.{name}"
            if qualname in allowed:
                return allowed[qualname]
            if module == "omegaconf.nodes" and name.endswith("Node"):
                return _OmegaNode
            if module == "typing":
                return _TypeRef(qualname)
            if qualname not in foreign:
                foreign[qualname] = type(name, (_Foreign,), {"qualname": qualname, "calls": calls})
            return foreign[qualname]

    module = types.ModuleType("asdtool_restricted_pickle")
    module.Unpickler = Unpickler
    module.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()
    module.calls = calls
    return module


def _plain(obj, memo: dict):
    """Return `obj` with the stand-ins turned into plain data; _Refused for a foreign class outside a config."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, (_OmegaDict, _OmegaList)):
        content = (obj.state or {}).get("_content")  # a dict / list of nodes, None, or "???" / "${...}"
        out = memo[key] = {} if isinstance(content, dict) else [] if isinstance(content, list) else None
        if isinstance(content, dict):
            out.update((_plain(k, memo), _plain(v, memo)) for k, v in content.items())
        elif isinstance(content, list):
            out.extend(_plain(v, memo) for v in content)
        else:
            out = memo[key] = _plain(content, memo)
        return out
    if isinstance(obj, _OmegaNode):
        value = (obj.state or {}).get("_val")  # interpolations stay strings
        if isinstance(obj, _OmegaEnumNode) and isinstance(value, _Foreign) and value.state is None:
            if len(value.args) == 1 and isinstance(value.args[0], (str, int)):
                value = value.args[0]  # the enum member's value, as fairseq's StrEnum names it
        memo[key] = _plain(value, memo)
        return memo[key]
    if isinstance(obj, _Namespace):
        memo[key] = out = {}
        out.update((k, _plain(v, memo)) for k, v in (obj.state or {}).items())
        return out
    if isinstance(obj, (_Dropped, _OmegaMetadata)):
        return None
    if isinstance(obj, _TypeRef):
        return obj.name
    if isinstance(obj, _Foreign) or (isinstance(obj, type) and issubclass(obj, _Foreign)):
        raise _Refused(obj.qualname)
    memo[key] = obj
    if isinstance(obj, dict):  # in place: keeps OrderedDict state dicts as they are
        items = [(_plain(k, memo), _plain(v, memo)) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
    elif isinstance(obj, list):
        obj[:] = [_plain(v, memo) for v in obj]
    elif isinstance(obj, tuple):
        items = [_plain(v, memo) for v in obj]
        if any(a is not b for a, b in zip(items, obj, strict=True)):
            memo[key] = tuple(items)
    elif isinstance(obj, (set, frozenset)):
        for v in obj:
            _plain(v, memo)
    elif isinstance(obj, torch.Tensor):
        for v in vars(obj).values():  # attributes a tensor subclass's state may carry
            _plain(v, memo)
    return memo[key]


def _own_tensors(obj, memo: dict | None = None):
    """Return `obj` with every tensor copied out of the memory-mapped file (each object visited once)."""
    memo = {} if memo is None else memo
    key = id(obj)
    if key in memo:  # shared, or a container that holds itself
        return memo[key]
    if isinstance(obj, torch.Tensor):
        memo[key] = obj.clone()
        return memo[key]
    memo[key] = obj
    if isinstance(obj, dict):
        for k in obj:
            obj[k] = _own_tensors(obj[k], memo)
    elif isinstance(obj, list):
        obj[:] = [_own_tensors(v, memo) for v in obj]
    elif isinstance(obj, tuple):
        items = [_own_tensors(v, memo) for v in obj]
        if any(a is not b for a, b in zip(items, obj, strict=True)):
            memo[key] = tuple(items)
    return memo[key]


def read_checkpoint(path: str | Path) -> object:
    """Return the object pickled in a PyTorch checkpoint file as plain data and tensors; no code from it runs.

    OmegaConf DictConfig / ListConfig become dicts / lists of plain values, argparse.Namespace a
    dict, numpy values None. Fairseq's trainer state (`TRAINING_STATE` entries) is read but left out;
    its tensors are memory-mapped, never copied. AsdError for a missing file, a file that is not a
    PyTorch checkpoint, or one holding any other class.
    """
    path = Path(path)
    if not path.is_file():
        raise AsdError("checkpoint file not found", path)
    is_zip = zipfile.is_zipfile(path)  # torch.save's format since torch 1.6; older files are plain pickles
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile, ValueError) as error:
            raise AsdError(f"not a checkpoint: cannot read it as a zip archive ({error})", path) from None
        if any(n.split("/", 1)[-1] == "constants.pkl" for n in names):  # torch.load would run it as TorchScript
            raise AsdError("not a checkpoint: a TorchScript archive (code), not pickled weights", path)
    restricted = _restricted_pickle()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted, mmap=is_zip)
        obj = _plain(obj, {})
    except _Refused as refused:
        raise AsdError(_refusal(refused.qualname), path) from None
    except Exception as error:  # torch and pickle raise many types for foreign or truncated files
        if restricted.calls:  # an instantiated foreign class broke the load
            raise AsdError(_refusal(restricted.calls[0]), path) from None
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise AsdError(f"not a checkpoint: cannot read it as a PyTorch file ({reason})", path) from None
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in TRAINING_STATE}
    return _own_tensors(obj) if is_zip else obj


def _refusal(qualname: str) -> str:
    return f"refuses to load class {qualname!r} from the checkpoint (not a tensor or config)"
