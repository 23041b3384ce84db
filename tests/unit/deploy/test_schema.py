"""Detector bundles: signatures (export --sign-key, score --verify-key) and the schema checked at load.

Every broken bundle here is rehashed with `content_sha256`, so the content hash passes and what
refuses it is the signature or the schema.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from pathlib import Path

import pytest

from asdtool.deploy import schema as bundle_schema
from asdtool.deploy.bundle import META_KEY, SIGNATURE_CONTEXT, SIGNATURE_KEY, content_sha256, read_key
from asdtool.deploy.export import export_bundle
from asdtool.deploy.inputs import recording_of
from asdtool.deploy.load import load_bundle, read_bundle_meta
from asdtool.deploy.scoring import score_recordings
from asdtool.data.audio import read_channels
from asdtool.data.synth.dev import SynthSizes
from asdtool.core.errors import AsdError
from asdtool.detect.settings import DetectorSettings

from tests.toydata import tiny_model
from tests.conftest import run_asdtool

MACHINES = ["fan", "valve"]
KEY = b"0123456789abcdef-the-signing-key\n"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """A small dev set, one model on it and its store; its bundle unsigned and signed, and a system of it twice."""
    base = tmp_path_factory.mktemp("integrity")
    data, model, _ = tiny_model(base, 5, SynthSizes(0.5, 10, 3, 4), steps=6, warmup=2, machines=MACHINES, model="full",
                                store="full.h5", max_lr=1e-3)  # fmt: skip
    key, other = base / "key", base / "other.key"
    key.write_bytes(KEY)
    other.write_bytes(b"another key, also 16 bytes or more")
    out = {"base": base, "data": data, "model": model, "store": base / "full.h5", "key": key, "other": other}
    for name, sign in (("plain", None), ("signed", key)):
        out[name] = base / f"{name}.asd"
        export_bundle([model], [base / "full.h5"], out[name], settings=DetectorSettings(normalise="domain-z"), sign_key=sign)
    out["system"] = base / "system.asd"
    export_bundle([model, model], [base / "full.h5", base / "full.h5"], out["system"], weights=[0.5, 0.5])
    return out


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def rewrite(src: Path, dst: Path, edit=None, drop=(), rehash: bool = True) -> Path:
    """Write `src` to `dst` with its metadata document edited by `edit(meta)` and the tensors named by a `drop` prefix removed.

    The content sha256 is recomputed (what anyone can do); the other safetensors metadata (a signature) is kept.
    """
    from safetensors.torch import load_file, save_file

    header = _header(src)
    meta = json.loads(header[META_KEY])
    tensors = {k: v for k, v in load_file(str(src)).items() if not (drop and k.startswith(tuple(drop)))}
    if edit is not None:
        edit(meta)
    if rehash:
        meta["content_sha256"] = content_sha256(meta, tensors)
    save_file(tensors, str(dst), metadata={**header, META_KEY: json.dumps(meta, sort_keys=True)})
    return dst


def _clips(data: Path, machine: str = "fan") -> list[Path]:
    return sorted((data / machine / "test").glob("*.wav"))


def _score_cli(bundle: Path, clip: Path, *more) -> tuple[int, list[str]]:
    r = run_asdtool("score", bundle, clip, *more)
    assert "Traceback" not in r.stderr
    return r.returncode, r.stderr.strip().splitlines()


def _set(*keys, value):
    def edit(meta):
        node = meta
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return edit


# ----------------------------------------------------------------------------- signatures


def test_a_forged_bundle_loads_without_a_key_and_is_refused_with_one(fitted, tmp_path):
    """The content sha256 catches accidents, not tampering: a rehashed bundle loads unless a key is asked for."""
    forged = rewrite(fitted["signed"], tmp_path / "forged.asd", _set("thresholds", "fan", "00", value=999.0))
    assert SIGNATURE_KEY in _header(forged)  # the old signature kept: it no longer matches the content
    bundle = load_bundle(forged)  # no key: accepted, and every clip is called normal
    assert bundle.thresholds[("fan", "00")] == 999.0
    clips = _clips(fitted["data"])
    results = score_recordings(bundle, [(recording_of(bundle, p, str(p), None, None), read_channels(p, None)) for p in clips])
    assert len(results) == len(clips) and all(r.decision == 0 for r in results)
    with pytest.raises(AsdError) as exc:
        load_bundle(forged, verify_key=fitted["key"])
    assert str(exc.value) == (f"{forged}: its signature does not match the key {fitted['key']}; it was changed or signed "
                              "with another key")  # fmt: skip
    code, err = _score_cli(forged, clips[0], "--verify-key", fitted["key"])
    assert code == 1 and err == [f"error: {exc.value}"]
    # with the signature stripped as well, it is refused as unsigned
    stripped = tmp_path / "stripped.asd"
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(forged)), str(stripped), metadata={META_KEY: _header(forged)[META_KEY]})
    with pytest.raises(AsdError, match="is not signed"):
        load_bundle(stripped, verify_key=fitted["key"])


def test_a_signed_bundle_verifies_with_its_key_and_no_other(fitted):
    signed, plain, key = fitted["signed"], fitted["plain"], fitted["key"]
    meta = read_bundle_meta(signed)
    # the signature sits beside the document: the content hash is the same signed or not
    assert meta["content_sha256"] == read_bundle_meta(plain)["content_sha256"]
    expected = hmac.new(KEY, SIGNATURE_CONTEXT + meta["content_sha256"].encode(), hashlib.sha256).hexdigest()
    assert _header(signed)[SIGNATURE_KEY] == f"hmac-sha256:{expected}"
    assert SIGNATURE_KEY not in _header(plain) and "signature" not in json.dumps(meta)
    bundle = load_bundle(signed, verify_key=key)
    assert bundle.thresholds == load_bundle(plain).thresholds
    with pytest.raises(AsdError) as exc:
        load_bundle(signed, verify_key=fitted["other"])
    assert str(exc.value) == (f"{signed}: its signature does not match the key {fitted['other']}; it was changed or "
                              "signed with another key")  # fmt: skip
    with pytest.raises(AsdError) as exc:
        load_bundle(plain, verify_key=key)
    assert str(exc.value) == f"{plain}: is not signed; export it with --sign-key to score it with --verify-key {key}"
    clip = _clips(fitted["data"])[0]
    code, err = _score_cli(plain, clip, "--verify-key", key)
    assert code == 1 and err == [f"error: {exc.value}"]
    code, err = _score_cli(signed, clip, "--verify-key", key)
    assert code == 0, err


def test_the_export_command_signs(fitted, tmp_path):
    out = tmp_path / "cli.asd"
    r = run_asdtool("export", "--model", fitted["model"], "--embeddings", fitted["store"], "--out", out,
                    "--normalise", "domain-z", "--sign-key", fitted["key"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _header(out)[SIGNATURE_KEY] == _header(fitted["signed"])[SIGNATURE_KEY]
    assert load_bundle(out, verify_key=fitted["key"]).meta["kind"] == "model"


@pytest.mark.parametrize("content,problem", [
    (None, "key file does not exist"),
    (b"", "key file is empty"),
    (b"short key\n", "key file holds 10 bytes; a key needs at least 16 (e.g. head -c 32 /dev/urandom > FILE)"),
    (b"k" * 1_000_001, "key file holds 1000001 bytes, more than 1 MB: is it the right file?"),
    ("folder", "is not a key file (a folder or a device, not a regular file)"),
])  # fmt: skip
def test_bad_key_files_are_refused_in_one_line(fitted, tmp_path, content, problem):
    key = tmp_path / "key"
    if content == "folder":
        key.mkdir()
    elif content is not None:
        key.write_bytes(content)
    for call in (lambda: read_key(key), lambda: load_bundle(fitted["signed"], verify_key=key),
                 lambda: export_bundle([fitted["model"]], [fitted["store"]], tmp_path / "x.asd", sign_key=key)):
        with pytest.raises(AsdError) as exc:
            call()
        assert str(exc.value) == f"{key}: {problem}"
    assert not (tmp_path / "x.asd").exists()  # refused before any fitting
    assert read_key(fitted["key"]) == KEY  # bytes as they are, the newline included


# ----------------------------------------------------------------------------- the schema


def _member_copy(meta):
    meta["members"].append(dict(meta["members"][0]))


BROKEN = {  # name: (source bundle, edit of the document, tensor prefixes dropped, problem)
    "nan threshold": ("plain", _set("thresholds", "fan", "00", value=math.nan), (),
                      "thresholds.fan.00 must be a finite number, got nan"),
    "k 0": ("plain", lambda m: m["members"][0]["detector"].update(k=0), (),
            "members[0].detector.k must be at least 1, got 0"),
    "no members": ("plain", lambda m: m.pop("members"), (), "the metadata has no members"),
    "a member without tensors": ("system", None, ("m1/",), "members[1] has no weights: no tensor m1/model/..."),
    "a machine without its bank": ("plain", None, ("m0/bank/valve/",),
                                   "members[0] has no memory bank of valve section 00 (no tensor m0/bank/valve/00/embeddings)"),
    "string format_version": ("plain", _set("format_version", value="1"), (),
                              "format_version is the string '1', not the integer 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_rehashed_broken_bundle_is_refused_in_one_line(fitted, tmp_path, case):
    source, edit, drop, problem = BROKEN[case]
    path = rewrite(fitted[source], tmp_path / "broken.asd", edit, drop)
    with pytest.raises(AsdError) as exc:
        load_bundle(path)
    assert str(exc.value) == f"{path}: {problem}"
    code, err = _score_cli(path, _clips(fitted["data"])[0])
    assert code == 1 and err == [f"error: {path}: {problem}"]


def _member(m):
    return m["members"][0]


SCHEMA = [  # (source bundle, edit, tensors dropped, problem)
    ("plain", lambda m: _member(m)["detector"].update(smote_k=0), (), "members[0].detector.smote_k must be at least 1, got 0"),
    ("plain", lambda m: _member(m)["detector"].update(density_k=0), (), "members[0].detector.density_k must be at least 1, got 0"),
    ("plain", lambda m: _member(m)["detector"].update(k=1.0), (), "members[0].detector.k must be an integer, got 1.0"),
    ("plain", lambda m: _member(m)["detector"].update(k=True), (), "members[0].detector.k must be an integer, got True"),
    ("plain", lambda m: _member(m)["detector"].pop("k"), (), "members[0].detector has no k"),
    ("plain", lambda m: _member(m)["detector"].update(smote_ratio=-1), (),
     "members[0].detector.smote_ratio must be at least 0, got -1"),
    ("plain", lambda m: _member(m)["detector"].update(smote_ratio=math.inf), (),
     "members[0].detector.smote_ratio must be a finite number, got inf"),
    ("plain", lambda m: _member(m)["detector"].update(normalise="z"), (),
     "members[0].detector.normalise must be 'none', 'domain-z' or 'local-density', got 'z'"),
    ("plain", lambda m: m.update(members=[]), (), "members must not be empty"),
    ("plain", lambda m: _member(m).update(name=""), (), "members[0].name must not be empty"),
    ("plain", lambda m: _member(m).update(seconds=0), (), "members[0].seconds must be greater than 0, got 0"),
    ("plain", lambda m: _member(m).update(seconds=math.nan), (), "members[0].seconds must be a finite number, got nan"),
    ("plain", lambda m: _member(m).update(channel="stereo"), (),
     "members[0].channel must be 'left', 'right', 'mean' or 'both', got 'stereo'"),
    ("plain", lambda m: m.update(weights=[1.0]), (), "weights must be null for kind 'model', got [1.0]"),
    ("plain", _member_copy, (), "kind is 'model', which has one member, but members holds 2"),
    ("plain", lambda m: m.update(kind="ensemble"), (), "kind must be 'model' or 'system', got 'ensemble'"),
    ("system", lambda m: m.update(weights=[1.0]), (), "weights must hold one weight per member (2), got 1"),
    ("system", lambda m: m.update(weights=None), (), "weights must hold one weight per member for kind 'system', got null"),
    ("system", lambda m: m.update(weights=[0.0, 0.0]), (), "weights must sum to a positive number, got [0.0, 0.0]"),
    ("system", lambda m: m.update(weights=[-1.0, 2.0]), (), "weights[0] must be at least 0, got -1.0"),
    ("system", lambda m: m.update(weights=[math.nan, 1.0]), (), "weights[0] must be a finite number, got nan"),
    ("system", lambda m: m["members"][1]["stats"].pop("valve"), (),
     "members[1].stats has no 'valve': a system member needs the mean and std of its scores per machine type"),
    ("system", lambda m: m["members"][1]["stats"]["fan"].__setitem__(1, 0.0), (),
     "members[1].stats.fan must be [mean, std] with a positive std, got std 0.0"),
    ("system", lambda m: m["members"][1]["stats"]["fan"].__setitem__(0, math.nan), (),
     "members[1].stats.fan[0] must be a finite number, got nan"),
    ("system", lambda m: m["members"][1].update(seconds=1.0), (),
     "members[1].seconds is 1, members[0].seconds 0.5: the members of a system share the clip length"),
    ("plain", lambda m: m["train_scores"]["fan"]["00"].append(math.inf), (), None),  # index found below
    ("plain", lambda m: m["train_scores"]["fan"].pop("00"), (), "train_scores.fan has no section '00' (thresholds has it)"),
    ("plain", lambda m: m["thresholds"]["fan"].update({"00": "1.5"}), (), "thresholds.fan.00 must be a number, got '1.5'"),
    ("plain", lambda m: m.update(thresholds={}), (), "thresholds must not be empty"),
    ("plain", lambda m: m.update(decision_quantile=1.0), (), "decision_quantile must be less than 1, got 1.0"),
    ("plain", lambda m: m.update(decision_quantile=0), (), "decision_quantile must be greater than 0, got 0"),
    ("plain", lambda m: m.update(quantize="fp16"), (), "quantize must be 'none' or 'int8', got 'fp16'"),
    ("plain", lambda m: m.update(format_version=1.0), (), "format_version is the number 1.0, not the integer 1"),
    ("plain", lambda m: m.update(format_version=True), (), "format_version is true, not the integer 1"),
    ("plain", lambda m: m.pop("format_version"), (), "has no format_version (this asdtool reads format 1)"),
    ("plain", None, ("m0/bank/fan/00/domain",),
     "members[0] has no memory bank of fan section 00 (no tensor m0/bank/fan/00/domain)"),
]  # fmt: skip


@pytest.mark.parametrize("index", range(len(SCHEMA)))
def test_the_schema_names_the_field_a_rehashed_bundle_breaks(fitted, tmp_path, index):
    source, edit, drop, problem = SCHEMA[index]
    path = rewrite(fitted[source], tmp_path / "broken.asd", edit, drop)
    if problem is None:  # the infinite training score appended last
        n = len(read_bundle_meta(fitted[source])["train_scores"]["fan"]["00"])
        problem = f"train_scores.fan.00[{n}] must be a finite number, got inf"
    with pytest.raises(AsdError) as exc:
        load_bundle(path)
    assert str(exc.value) == f"{path}: {problem}"


def test_bank_tensors_of_the_wrong_shape_or_type_are_refused(fitted, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    header = _header(fitted["plain"])
    base = "m0/bank/fan/00/"

    def broken(change) -> Path:
        tensors = load_file(str(fitted["plain"]))
        change(tensors)
        meta = json.loads(header[META_KEY])
        meta["content_sha256"] = content_sha256(meta, tensors)
        path = tmp_path / "broken.asd"
        save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})
        return path

    def refused(change) -> str:
        path = broken(change)
        with pytest.raises(AsdError) as exc:
            load_bundle(path)
        prefix = f"{path}: members[0]'s memory bank of fan section 00"
        assert str(exc.value).startswith(prefix)
        return str(exc.value)[len(prefix):]

    n, d = load_file(str(fitted["plain"]))[base + "embeddings"].shape
    assert refused(lambda t: t.update({base + "embeddings": t[base + "embeddings"].double()})) == (
        f": {base}embeddings must be 2-D float32 with at least one row, got float64 of shape [{n}, {d}]")
    assert refused(lambda t: t.update({base + "embeddings": t[base + "embeddings"][:0], base + "domain": t[base + "domain"][:0]})) == (
        f": {base}embeddings must be 2-D float32 with at least one row, got float32 of shape [0, {d}]")
    assert refused(lambda t: t.update({base + "domain": t[base + "domain"][:-1]})) == (
        f": {base}domain must be 1-D int8 with one entry per embedding ({n}), got int8 of shape [{n - 1}]")
    assert refused(lambda t: t.update({base + "domain": torch.full((n,), -1, dtype=torch.int8)})) == (
        f": {base}domain must hold only 0 (source) and 1 (target)")
    assert refused(lambda t: t[base + "embeddings"].__setitem__((0, 0), math.nan)) == f": {base}embeddings holds NaN or infinite values"
    path = broken(lambda t: t.update({base + "embeddings": t[base + "embeddings"][:, :-1].contiguous()}))
    with pytest.raises(AsdError) as exc:
        load_bundle(path)
    assert str(exc.value) == f"{path}: members[0]'s memory bank of valve section 00 has {d} dimensions, that of fan section 00 {d - 1}"
    # a tensor of no member
    path = broken(lambda t: t.update({"m3/model/x": torch.zeros(1)}))
    with pytest.raises(AsdError) as exc:
        load_bundle(path)
    assert str(exc.value) == f"{path}: holds the tensor 'm3/model/x', which belongs to no member (members holds 1)"


def test_weights_that_do_not_fit_the_model_and_k_above_the_bank_are_refused_in_one_line(fitted, tmp_path):
    from safetensors.torch import load_file

    key = next(k for k, v in load_file(str(fitted["plain"])).items() if k.startswith("m0/model/") and v.ndim == 2)

    path = tmp_path / "shape.asd"
    from safetensors.torch import save_file

    tensors = load_file(str(fitted["plain"]))
    tensors[key] = tensors[key][:, :1].contiguous()
    meta = read_bundle_meta(fitted["plain"])
    meta["content_sha256"] = content_sha256(meta, tensors)
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(AsdError) as exc:
        load_bundle(path)
    assert str(exc.value).startswith(f"{path}: member full: weights do not fit its model (size mismatch for ")
    assert "\n" not in str(exc.value)
    big = rewrite(fitted["plain"], tmp_path / "big-k.asd", lambda m: _member(m)["detector"].update(k=10_000))
    with pytest.raises(AsdError, match=r"^.*big-k.asd: member full, fan section 00: \d+ training clips are too few to "
                                       r"score them leave-one-out with k=10000$"):  # fmt: skip
        load_bundle(big)


def test_an_unchanged_content_hash_still_guards_the_file(fitted, tmp_path):
    """Editing the document without rehashing it is caught by the hash, before the schema."""
    path = rewrite(fitted["plain"], tmp_path / "edited.asd", _set("thresholds", "fan", "00", value=999.0), rehash=False)
    with pytest.raises(AsdError, match="modified since it was exported"):
        load_bundle(path)


def test_export_names_its_members_in_the_weight_count(fitted, tmp_path):
    with pytest.raises(AsdError) as exc:
        export_bundle([fitted["model"]], [fitted["store"]], tmp_path / "x.asd", weights=[1, 2])
    assert str(exc.value) == "2 weights for 1 --model members: give one weight to each"
    from asdtool.detect.ensemble import check_weights

    with pytest.raises(AsdError, match=r"^1 weights for 2 score folders: give one weight to each$"):
        check_weights([1.0], 2)


def test_export_refuses_to_write_a_bundle_the_loader_would_refuse(fitted, tmp_path):
    out = tmp_path / "x.asd"
    with pytest.raises(AsdError) as exc:
        export_bundle([fitted["model"]], [fitted["store"]], out, settings=DetectorSettings(smote_ratio=5000.0))
    assert str(exc.value) == f"{out}: would be an invalid bundle: detector.smote_ratio must be at most 1000, got 5000.0"
    assert not out.exists()
    with pytest.raises(AsdError, match=r"^k must be 1 or more, got 2.0$"):  # a library caller's k=2.0: refused when made
        DetectorSettings(k=2.0)


def test_the_schema_knows_detects_normalisations():
    import typing

    from asdtool.config.choices import Normalise

    assert typing.get_args(bundle_schema.Detector.model_fields["normalise"].annotation) == Normalise.values()
