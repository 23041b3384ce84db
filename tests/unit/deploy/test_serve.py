"""`asdtool serve`: the HTTP service scores as the library does, batches concurrent callers and refuses bad input."""

from __future__ import annotations

import csv
import io
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from asdtool import __version__
from asdtool.deploy.bundle import Bundle
from asdtool.deploy.export import export_bundle
from asdtool.deploy.inputs import Recording, recording_of
from asdtool.deploy.load import load_bundle
from asdtool.deploy.scorelog import LOG_HEADER, LOG_SCORES
from asdtool.deploy.scoring import score_recordings
from asdtool.data.audio import read_channels
from asdtool.data.synth.dev import SynthSizes
from asdtool.core.errors import AsdError
from asdtool.deploy.serve import ServeError, make_app

from tests.toydata import tiny_model
from tests.conftest import HANG_SECONDS, flac_bomb, run_asdtool

MACHINES = ["fan", "valve"]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """A small dev set, a 6-step model on it, its bundle (loaded once) and the fan test clips."""
    base = tmp_path_factory.mktemp("serve")
    data, model, _ = tiny_model(base, 3, SynthSizes(0.5, 10, 3, 4), steps=6, warmup=2, machines=MACHINES, max_lr=1e-3)
    path = base / "bundle.asd"
    export_bundle([model], [base / "emb.h5"], path)
    return {"base": base, "path": path, "bundle": load_bundle(path), "clips": sorted((data / "fan" / "test").glob("*.wav"))}


def _expected(bundle: Bundle, clip: Path):
    """The library's score of one clip, scored alone."""
    rec = recording_of(bundle, clip, str(clip), None, None)
    (result,) = score_recordings(bundle, [(rec, read_channels(clip, seconds=None))])
    return result


def _wav_bytes(seconds: float = 0.5, sr: int = 16000, seed: int = 0) -> bytes:
    """A mono 16-bit WAV file's bytes."""
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr)), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _upload(client: TestClient, name: str, data: bytes, **params):
    """POST /score with the bytes as the multipart field `file` named `name`."""
    return client.post("/score", files={"file": (name, data, "audio/wav")}, params=params)


def test_a_multipart_upload_scores_as_the_library(served):
    bundle, clip = served["bundle"], served["clips"][0]
    expected = _expected(bundle, clip)
    app = make_app(bundle, max_wait_ms=0)
    with TestClient(app) as client:
        r = _upload(client, f"fan/test/{clip.name}", clip.read_bytes())
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"file", "machine", "section", "score", "threshold", "decision", "windows"}
    assert got["file"] == f"fan/test/{clip.name}" and got["machine"] == "fan" and got["section"] == "00"
    assert abs(got["score"] - expected.score) < 1e-6
    assert got["threshold"] == bundle.thresholds[("fan", "00")] == expected.threshold
    assert got["decision"] == int(got["score"] > got["threshold"]) == expected.decision
    assert len(got["windows"]) == 1 and got["windows"][0]["start"] == 0.0
    assert abs(got["windows"][0]["score"] - expected.window_scores[0]) < 1e-6
    assert app.state.bundle is bundle and app.state.batcher.batches == 1


def test_raw_bytes_with_the_machine_in_the_query(served):
    bundle, clip = served["bundle"], served["clips"][1]
    expected = _expected(bundle, clip)
    with TestClient(make_app(bundle, max_wait_ms=0)) as client:
        r = client.post("/score", params={"machine": "fan"}, content=clip.read_bytes(),
                        headers={"content-type": "audio/wav"})  # fmt: skip
        # the section from the query; the name's folder does not override the query's machine type
        s = client.post("/score", params={"machine": "fan", "section": "00"}, content=clip.read_bytes())
        named = _upload(client, f"valve/{clip.name}", clip.read_bytes(), machine="fan")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["machine"] == "fan" and got["section"] == "00" and got["file"] == "-"
    assert abs(got["score"] - expected.score) < 1e-6 and got["decision"] == expected.decision
    assert s.status_code == 200 and abs(s.json()["score"] - expected.score) < 1e-6
    assert named.status_code == 200 and named.json()["machine"] == "fan"


def test_concurrent_requests_are_batched_and_scored_as_the_library(served):
    bundle, clips = served["bundle"], served["clips"][:8]
    assert len(clips) == 8
    expected = {c.name: r.score for c, r in zip(clips, score_recordings(
        bundle, [(recording_of(bundle, c, str(c), None, None), read_channels(c, None)) for c in clips]))}  # fmt: skip
    alone = {c.name: _expected(bundle, c).score for c in clips}
    # a long wait and a batch of exactly 8 windows: the worker scores as soon as all 8 are queued
    app = make_app(bundle, batch_size=8, max_wait_ms=2000)
    start = threading.Barrier(len(clips))

    def call(clip: Path):
        start.wait()
        return _upload(client, f"fan/test/{clip.name}", clip.read_bytes())

    with TestClient(app) as client, ThreadPoolExecutor(len(clips)) as pool:
        responses = list(pool.map(call, clips))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    got = {Path(r.json()["file"]).name: r.json()["score"] for r in responses}
    assert got.keys() == expected.keys()
    assert max(abs(got[n] - expected[n]) for n in got) < 1e-6  # as the library scores the 8 in one call
    assert max(abs(got[n] - alone[n]) for n in got) < 1e-6  # and as each alone (the CLI scoring one file), to float noise
    assert app.state.batcher.scored == 8 and 1 <= app.state.batcher.batches < 8


def test_bad_requests_are_refused_and_the_service_goes_on(served):
    bundle, clip = served["bundle"], served["clips"][0]
    good = clip.read_bytes()
    app = make_app(bundle, max_bytes=len(good) + 1000, max_wait_ms=0)
    with TestClient(app) as client:
        empty = client.post("/score", params={"machine": "fan"}, content=b"")
        empty_file = _upload(client, "fan/empty.wav", b"")
        truncated = _upload(client, "fan/test/cut.wav", good[: len(good) // 2])
        rate = _upload(client, "fan/test/slow.wav", _wav_bytes(sr=8000))
        raw_rate = client.post("/score", params={"machine": "fan"}, content=_wav_bytes(sr=8000))
        garbage = _upload(client, "fan/test/noise.wav", b"not audio at all" * 10)
        big = client.post("/score", params={"machine": "fan"}, content=good + b"\0" * 2000)
        unknown = client.post("/score", params={"machine": "pump"}, content=good)
        section = client.post("/score", params={"machine": "fan", "section": "07"}, content=good)
        no_machine = _upload(client, clip.name, good)
        no_field = client.post("/score", files={"other": ("fan/a.wav", good)})
        health = client.get("/health")
        after = _upload(client, f"fan/test/{clip.name}", good)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    assert empty_file.status_code == 400 and empty_file.json()["detail"] == "fan/empty.wav: the uploaded file is empty"
    assert truncated.status_code == 400, truncated.text
    detail = truncated.json()["detail"]
    assert detail.startswith("fan/test/cut.wav: truncated audio") and "\n" not in detail
    assert rate.status_code == 400
    assert rate.json()["detail"] == "fan/test/slow.wav: sample rate is 8000 Hz, expected 16000 Hz"
    assert raw_rate.status_code == 400 and raw_rate.json()["detail"] == "-: sample rate is 8000 Hz, expected 16000 Hz"
    assert garbage.status_code == 400 and garbage.json()["detail"].startswith("fan/test/noise.wav: cannot read audio")
    assert big.status_code == 413 and big.json()["detail"] == f"the request body exceeds the limit of {len(good) + 1000} bytes"
    assert unknown.status_code == 404 and "no machine type 'pump'" in unknown.json()["detail"]
    assert section.status_code == 404 and "no section 07 of fan" in section.json()["detail"]
    assert no_machine.status_code == 400 and "give ?machine=" in no_machine.json()["detail"]
    assert no_field.status_code == 400 and "no file field 'file'" in no_field.json()["detail"]
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert after.status_code == 200 and abs(after.json()["score"] - _expected(bundle, clip).score) < 1e-6
    assert app.state.batcher.scored == 1  # nothing refused reached the model


def test_a_failing_recording_does_not_fail_the_others_of_its_batch(served):
    bundle, clips = served["bundle"], served["clips"][:2]
    app = make_app(bundle, batch_size=3, max_wait_ms=2000)
    batcher = app.state.batcher
    good = [(recording_of(bundle, c, c.name, None, None), read_channels(c, None)) for c in clips]
    bad = (Recording("odd.wav", Path("odd.wav"), "fan", "99"), good[0][1])  # a section the bundle has no detector for
    futures = [batcher.submit(*good[0]), batcher.submit(*bad), batcher.submit(*good[1])]
    results = [f.exception(timeout=HANG_SECONDS) or f.result() for f in futures]
    assert isinstance(results[1], ServeError) and results[1].status == 400 and "no detector for fan section 99" in results[1].detail
    for (rec, _), result in zip(good, results[::2]):
        assert result.name == rec.name and abs(result.score - _expected(bundle, rec.path).score) < 1e-6
    assert batcher.batches == 1 + 3 and batcher.scored == 2 and batcher.alive  # the shared call, then each alone
    batcher.stop()
    assert not batcher.alive


def test_an_oversized_body_is_refused_while_it_streams(served):
    bundle = served["bundle"]
    chunks = [b"\0" * 1000] * 5

    def body():
        yield from chunks  # no Content-Length: sent chunked

    with TestClient(make_app(bundle, max_bytes=3000)) as client:
        r = client.post("/score", params={"machine": "fan"}, content=body())
    assert r.status_code == 413 and "3000 bytes" in r.json()["detail"]


def test_health_and_info(served):
    bundle = served["bundle"]
    with TestClient(make_app(bundle, hop=0.25, aggregate="mean")) as client:
        health = client.get("/health")
        info = client.get("/info").json()
    assert health.status_code == 200 and health.json() == {"status": "ok", "batches": 0, "scored": 0}
    assert info["kind"] == "model" and info["members"] == ["model"] and info["seconds"] == 0.5
    assert info["machines"] == {m: {"sections": {"00": bundle.thresholds[(m, "00")]}} for m in MACHINES}
    assert info["asdtool_version"] == __version__ and info["content_sha256"] == bundle.meta["content_sha256"]
    assert len(info["content_sha256"]) == 64 and info["hop"] == 0.25 and info["aggregate"] == "mean"


def test_every_scored_request_is_logged(served, tmp_path):
    bundle, clips = served["bundle"], served["clips"][:3]
    log = tmp_path / "log"
    with TestClient(make_app(bundle, max_wait_ms=0, log=log)) as client:
        for clip in clips:
            assert _upload(client, f"fan/test/{clip.name}", clip.read_bytes()).status_code == 200
        assert client.post("/score", params={"machine": "pump"}, content=clips[0].read_bytes()).status_code == 404
        assert client.post("/score", params={"machine": "valve"}, content=clips[0].read_bytes()).status_code == 200
    with open(log / LOG_SCORES, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(LOG_HEADER)
    assert [(r["file"], r["machine"], r["section"], r["window"]) for r in rows] == [
        *[(f"fan/test/{c.name}", "fan", "00", "0") for c in clips], ("-", "valve", "00", "0")]
    first = _expected(bundle, clips[0])
    assert float(rows[0]["score"]) == pytest.approx(first.score, abs=1e-6)
    assert float(rows[0]["threshold"]) == first.threshold and int(rows[0]["decision"]) == first.decision
    assert rows[0]["time"].endswith("Z")
    assert (log / "bundle.json").is_file()
    # a folder that logs another bundle is refused when the app is made, before any request
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bundle.json").write_text('{"content_sha256": "0"}', encoding="utf-8")
    with pytest.raises(AsdError, match="logs the scores of another bundle"):
        make_app(bundle, log=tmp_path / "other")


_asdtool = run_asdtool


def test_the_serve_command_help_and_refusals(served, tmp_path):
    r = _asdtool("serve", "--help")
    assert r.returncode == 0 and "BUNDLE" in r.stdout and "--max-bytes" in r.stdout
    r = _asdtool("serve", tmp_path / "missing.asd")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"error: {tmp_path / 'missing.asd'}: bundle file does not exist"
    # a --log folder of another bundle, and an address in use, fail before serving
    other = tmp_path / "other"
    other.mkdir()
    (other / "bundle.json").write_text('{"content_sha256": "0"}', encoding="utf-8")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = _asdtool("serve", served["path"], "--port", port)
        assert r.returncode == 1 and r.stderr.strip().startswith(f"error: cannot listen on 127.0.0.1:{port} ("), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = _asdtool("serve", served["path"], "--log", other, "--port", port, "--threads", "1")
    assert r.returncode == 1 and r.stderr.strip() == f"error: {other}: logs the scores of another bundle; give another --log folder"


def test_a_flac_bomb_is_refused_from_its_header_in_little_memory(served, tmp_path):
    import tracemalloc

    bundle = served["bundle"]
    bomb = flac_bomb(tmp_path / "bomb.flac").read_bytes()  # 58 kB that decode to 20 minutes
    assert len(bomb) < 300_000
    with TestClient(make_app(bundle, max_bytes=300_000)) as client:
        tracemalloc.start()
        try:
            r = _upload(client, "fan/bomb.flac", bomb)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert r.status_code == 413, r.text
        assert r.json()["detail"] == "fan/bomb.flac: is 1200 s of audio, over the limit of 300 s (--max-seconds)"
        assert peak < 50_000_000, peak  # the 20 minutes would be 77 MB of float32
        assert client.get("/info").json()["max_seconds"] == 300
        assert client.get("/health").status_code == 200 and app_scored(client) == 0
    with TestClient(make_app(bundle, max_seconds=2.0)) as client:
        r = client.post("/score", params={"machine": "fan"}, content=_wav_bytes(seconds=2.5))
        assert r.status_code == 413 and r.json()["detail"] == "-: is 2.5 s of audio, over the limit of 2 s (--max-seconds)"


def app_scored(client: TestClient) -> int:
    """The recordings the service has scored so far."""
    return client.get("/health").json()["scored"]


def test_score_refuses_a_recording_over_max_seconds_in_one_line(served, tmp_path):
    bomb = flac_bomb(tmp_path / "fan" / "bomb.flac")
    r = _asdtool("score", served["path"], bomb, "--section", "00", "--threads", "1")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"error: {bomb}: is 1200 s of audio, over the limit of 300 s (--max-seconds)"
    r = _asdtool("score", served["path"], "-", "--machine", "fan", "--section", "00", "--max-seconds", "1",
                 "--threads", "1", stdin=_wav_bytes(seconds=1.5), text=False)  # fmt: skip
    assert r.returncode == 1 and r.stderr.decode().strip() == "error: -: is 1.5 s of audio, over the limit of 1 s (--max-seconds)"


def test_the_worker_survives_any_failure_and_fails_only_that_batch(served, monkeypatch):
    bundle, clip = served["bundle"], served["clips"][0]
    app = make_app(bundle, max_wait_ms=0)
    batcher = app.state.batcher
    rec = recording_of(bundle, clip, clip.name, None, None)
    channels = read_channels(clip, None)
    expected = _expected(bundle, clip).score
    real_collect, real_score = batcher._collect, batcher._score
    # an error while gathering the batch (as an infinite wait once overflowed), then one while scoring
    for name, real in (("_collect", real_collect), ("_score", real_score)):
        monkeypatch.setattr(batcher, name, lambda *a, **k: (_ for _ in ()).throw(OverflowError("timeout value is too large")))
        error = batcher.submit(rec, channels).exception(timeout=HANG_SECONDS)
        assert isinstance(error, ServeError) and error.status == 500 and error.detail == "scoring failed (OverflowError)"
        assert batcher.alive and batcher.healthy
        monkeypatch.setattr(batcher, name, real)
        assert abs(batcher.submit(rec, channels).result(timeout=HANG_SECONDS).score - expected) < 1e-6
    batcher.stop()
    assert not batcher.alive


def test_a_logging_failure_answers_500_without_the_servers_paths(served, tmp_path, monkeypatch, caplog):
    import asdtool.deploy.serve as serve_module

    bundle, clip = served["bundle"], served["clips"][0]
    secret = tmp_path / "srv" / "private" / "log"

    def failing(*_a, **_k):
        raise AsdError("cannot append (Permission denied)", secret / LOG_SCORES)

    monkeypatch.setattr(serve_module, "append_log", failing)
    with TestClient(make_app(bundle, max_wait_ms=0, log=tmp_path / "log")) as client:
        r = _upload(client, f"fan/test/{clip.name}", clip.read_bytes())
        assert r.status_code == 500
        assert r.json()["detail"] == "scored, but could not append to the score log (the server's output says why)"
        assert str(tmp_path) not in r.text
        monkeypatch.undo()
        assert _upload(client, f"fan/test/{clip.name}", clip.read_bytes()).status_code == 200  # the worker went on
    assert any(str(secret) in rec.getMessage() for rec in caplog.records)  # the server's stderr says why


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_serve_stops_on_sigterm_and_sigint(served, signame):
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "asdtool", "serve", str(served["path"]), "--port", str(port),
                             "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + HANG_SECONDS  # the start-up on a loaded machine; the test is what happens after
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        clip = served["clips"][0]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/score?machine=fan&section=00", data=clip.read_bytes(),
                                     method="POST")  # fmt: skip
        with urllib.request.urlopen(req, timeout=HANG_SECONDS) as resp:
            assert resp.status == 200
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=HANG_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 130, -getattr(signal, signame)), proc.stderr.read()
