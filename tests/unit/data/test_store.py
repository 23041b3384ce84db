import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from asdtool import __version__
from asdtool.data import store
from asdtool.data import dcase
from asdtool.core.errors import AsdError
from tests.toydata import synth_dataset, toy_embeddings, write_toy_store


def _group(n: int, values: np.ndarray, offset: int = 0) -> store.Group:
    return store.Group(
        file_names=[f"section_00_source_train_normal_{i + offset:04d}_a_ü{i}.wav" for i in range(n)],
        domain=[i % 2 for i in range(n)],
        label=[(i % 3) - 1 for i in range(n)],
        attributes=[f"a_ü{i}" if i % 2 else "noAttribute" for i in range(n)],
        values=values,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dcase.Dataset:
    return synth_dataset(tmp_path_factory.mktemp("synth") / "dev")


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (5, 3), (17, 768)])
def test_embedding_round_trip(tmp_path, dtype, shape):
    rng = np.random.default_rng(shape[0])
    train = _group(shape[0], rng.normal(size=shape).astype(dtype))
    test = _group(3, rng.normal(size=(3, shape[1])).astype(dtype), offset=100)
    meta = store.StoreMeta(model="beats-lora", checkpoint_sha256="ab" * 32)
    path = tmp_path / "e.h5"
    store.write_store(path, meta, {("fan", "train"): train, ("fan", "test"): test, ("ToyCar", "test"): test}, store.EMBEDDINGS)

    s = store.read_store(path)
    assert s.kind == store.EMBEDDINGS and s.machines == ["fan", "ToyCar"]  # written order
    assert s.meta.schema == store.SCHEMA == 1
    assert s.meta.model == "beats-lora" and s.meta.checkpoint_sha256 == "ab" * 32
    assert s.meta.asdtool_version == __version__
    assert s.meta.clips_sha256 == s.content_sha256()
    got = s.get("fan", "train")
    assert got.values.dtype == np.float32 and got.values.shape == shape
    np.testing.assert_array_equal(got.values, train.values.astype(np.float32))
    assert got.file_names == train.file_names and got.attributes == train.attributes
    np.testing.assert_array_equal(got.domain, train.domain)
    np.testing.assert_array_equal(got.label, train.label)

    with h5py.File(path) as f:  # the ARCHITECTURE schema, literally
        assert set(f.attrs) == set(store.ROOT_ATTRS)
        assert isinstance(f.attrs["schema"], np.integer) and f.attrs["schema"] == 1
        g = f["fan/train"]
        assert set(g) == {"embeddings", "file_names", "domain", "label", "attributes"}
        assert g["embeddings"].dtype == np.float32 and g["domain"].dtype == np.int8 and g["label"].dtype == np.int8
        for name in ("file_names", "attributes"):
            assert h5py.check_string_dtype(g[name].dtype).encoding == "utf-8"


def test_score_store_round_trip_keeps_float64(tmp_path):
    values = np.array([0.1, 1 / 3, 1e-300, 7.0])
    path = tmp_path / "scores.h5"
    store.write_scores(path, store.StoreMeta(model="m"), {("fan", "test"): _group(4, values)})
    s = store.read_store(path, store.SCORES)
    assert s.kind == store.SCORES
    got = s.get("fan", "test").values
    assert got.dtype == np.float64 and np.array_equal(got, values)
    with h5py.File(path) as f:
        assert set(f["fan/test"]) == {"scores", "file_names", "domain", "label", "attributes"}
    with pytest.raises(AsdError, match="is a scores store, expected a embeddings store"):
        store.read_store(path, store.EMBEDDINGS)


def test_write_embeddings_from_clips_fingerprints_the_clip_list(tmp_path, dataset):
    path = write_toy_store(tmp_path / "e.h5", dataset)
    s = store.read_store(path)
    assert s.meta.clips_sha256 == store.clips_sha256(dataset.clips)
    s.check_clips(store.clips_sha256(dataset.clips))
    clips = dataset.select("fan", "test")
    g = s.get("fan", "test")
    assert g.file_names == [c.file_name for c in clips]
    assert g.domain.tolist() == [c.domain_id for c in clips]
    assert g.label.tolist() == [c.label for c in clips]
    assert g.attributes == [c.attribute_string for c in clips]
    assert set(g.label.tolist()) == {0, 1} and set(g.domain.tolist()) == {0, 1}


def test_clips_sha256_is_order_free_and_sensitive(dataset):
    clips = list(dataset.clips)
    expected = hashlib.sha256("".join(f"{k}\n" for k in sorted(f"{c.machine}/{c.split}/{c.file_name}" for c in clips)).encode()).hexdigest()
    assert store.clips_sha256(clips) == expected == store.clips_sha256(clips[::-1])
    assert store.clips_sha256(clips[1:]) != expected


# --- atomic writes -----------------------------------------------------------------------------


def test_exception_inside_writer_leaves_no_file(tmp_path):
    path = tmp_path / "e.h5"
    with pytest.raises(RuntimeError, match="crash"):
        with store.StoreWriter(path, store.StoreMeta(model="m")) as w:
            w.add("fan", "train", _group(3, np.ones((3, 4))))
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_store(tmp_path):
    path = tmp_path / "e.h5"
    store.write_store(path, store.StoreMeta(model="old"), {("fan", "train"): _group(3, np.ones((3, 4)))}, store.EMBEDDINGS)
    bad = _group(3, np.array([[1.0, np.nan, 0, 0]] * 3))
    with pytest.raises(AsdError, match=r"e\.h5: refusing to write /fan/train: NaN or infinite embeddings for 3 clip"):
        store.write_store(path, store.StoreMeta(model="new"), {("fan", "train"): bad}, store.EMBEDDINGS)
    assert store.read_store(path).meta.model == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["e.h5"]


def test_writer_refuses_a_fingerprint_of_other_clips(tmp_path, dataset):
    meta = store.StoreMeta(model="m", clips_sha256=store.clips_sha256(dataset.clips))
    groups = dict(list(toy_embeddings(dataset).items())[:1])
    with pytest.raises(AsdError, match="does not match the clips written"):
        store.write_embeddings(tmp_path / "e.h5", meta, groups)
    assert not (tmp_path / "e.h5").exists()


# --- refusals ----------------------------------------------------------------------------------


@pytest.fixture
def good_store(tmp_path) -> Path:
    path = tmp_path / "e.h5"
    groups = {("fan", "train"): _group(4, np.ones((4, 3))), ("fan", "test"): _group(2, np.zeros((2, 3)), offset=10)}
    store.write_store(path, store.StoreMeta(model="m"), groups, store.EMBEDDINGS)
    return path


def test_refuses_a_file_that_is_not_a_store(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(AsdError, match=r"notes\.h5: is not an HDF5 file"):
        store.read_store(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(AsdError, match=r"other\.h5: is not an asdtool store \(root attribute schema missing\)"):
        store.read_store(other)
    with pytest.raises(AsdError, match="does not exist"):
        store.read_store(tmp_path / "missing.h5")


def test_refuses_a_newer_schema(good_store):
    with h5py.File(good_store, "r+") as f:
        f.attrs["schema"] = np.int64(2)
    with pytest.raises(AsdError, match=r"e\.h5: store schema 2 is newer than this asdtool reads \(1\)"):
        store.read_store(good_store)


def test_refuses_nan_embeddings(good_store):
    with h5py.File(good_store, "r+") as f:
        f["fan/test/embeddings"][1, 2] = np.nan
    with pytest.raises(AsdError, match=r"e\.h5: /fan/test: NaN or infinite embeddings for 1 clip\(s\), e\.g\. section_00_source_train_normal_0011"):
        store.read_store(good_store)


def test_refuses_inconsistent_lengths(good_store):
    with h5py.File(good_store, "r+") as f:
        del f["fan/train/label"]
        f["fan/train/label"] = np.zeros(3, dtype=np.int8)
    with pytest.raises(AsdError, match=r"/fan/train: datasets of inconsistent length \(.*label 3.*embeddings 4\)"):
        store.read_store(good_store)


def test_refuses_missing_dataset_and_edited_clip_list(good_store):
    with h5py.File(good_store, "r+") as f:
        names = f["fan/train/file_names"]
        names[0] = "section_00_source_train_normal_9999_x.wav"
    with pytest.raises(AsdError, match="clips_sha256 does not match the clips the store holds"):
        store.read_store(good_store)
    with h5py.File(good_store, "r+") as f:
        del f["fan/test/domain"]
    with pytest.raises(AsdError, match="/fan/test has no domain dataset"):
        store.read_store(good_store)


def test_check_clips_refuses_another_clip_list(tmp_path, dataset):
    s = store.read_store(write_toy_store(tmp_path / "e.h5", dataset))
    other = store.clips_sha256(dataset.clips[1:])
    with pytest.raises(AsdError) as err:
        s.check_clips(other, "data/dev")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'e.h5'}: built from another clip list than data/dev")
    assert s.meta.clips_sha256[:12] in msg and other[:12] in msg and "\n" not in msg
