"""The HTTP service of `asdtool serve`: a detector bundle behind POST /score, GET /health and GET /info.

`make_app` builds a FastAPI app around a bundle loaded once by the caller. A request's audio is
decoded as `asdtool score` decodes a file (the same checks, the same one-line messages), then
queued; one worker thread takes whatever is waiting (until `batch_size` windows are queued or the
first of them has waited `max_wait_ms`) and scores it all with one `score_recordings` call, so
requests arriving together share forward passes and torch never runs two batches at once.

Status codes: 400 bad audio, an empty body or a machine type that cannot be told; 404 a machine
type or section the bundle has no detector for; 413 a body over `max_bytes` or audio longer than
`max_seconds` (refused from its header, before decoding); 500 a scoring or logging failure (the
worker goes on; the log's own error is printed on the server's stderr, never sent). Every error
body is JSON {"detail": "<one line>"}.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request, imported in make_app)
import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asdtool import __version__
from asdtool.core.errors import AsdError
from asdtool.deploy.bundle import Bundle, RecordingScore
from asdtool.deploy.inputs import STDIN, UPLOADS, NoDetector, Recording, read_audio_bytes, recording_of
from asdtool.deploy.scorelog import append_log, check_log
from asdtool.deploy.scoring import score_recordings, window_starts

if TYPE_CHECKING:
    from starlette.requests import Request

FILE_FIELD = "file"
LOGGER = logging.getLogger("asdtool.deploy.serve")


class ServeError(Exception):
    """A failed request: an HTTP status and the one line its JSON `detail` holds."""

    def __init__(self, status: int, detail: str):
        """Keep the status and the detail, joined into one line."""
        detail = " ".join(detail.split())
        super().__init__(detail)
        self.status = status
        self.detail = detail


# ----------------------------------------------------------------------------- the batching worker


@dataclass
class Job:
    """One queued recording: its audio, its number of windows and the future its result resolves."""

    recording: Recording
    channels: np.ndarray
    windows: int
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker thread that scores queued recordings in shared batches (the only thread running the model)."""

    def __init__(self, bundle: Bundle, batch_size: int, max_wait_ms: float, hop: float | None, aggregate: str,
                 log: Path | None) -> None:  # fmt: skip
        """Keep the scoring settings; the worker starts on `start()` or the first `submit()`."""
        from asdtool.data.audio import SAMPLE_RATE

        self.bundle = bundle
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.hop = hop
        self.aggregate = aggregate
        self.log = log
        self.window = int(round(bundle.seconds * SAMPLE_RATE))
        self.hop_n = self.window if hop is None else int(round(hop * SAMPLE_RATE))
        self.batches = 0  # score_recordings calls made
        self.scored = 0  # recordings scored
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """Whether requests get scored: the worker runs, or is not started yet (the first request starts it)."""
        with self._lock:
            return self._thread is None or self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread unless it runs already."""
        with self._lock:
            if not self.alive:
                self._thread = threading.Thread(target=self._work, name="asdtool-serve-worker", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the worker finish what is queued, then end it (no new worker starts meanwhile)."""
        with self._lock:
            if self.alive:
                self._queue.put(None)
                self._thread.join(timeout)
            self._thread = None

    def submit(self, recording: Recording, channels: np.ndarray) -> Future:
        """Queue one recording; return the future of its RecordingScore."""
        self.start()
        job = Job(recording, channels, len(window_starts(channels.shape[-1], self.window, self.hop_n)))
        self._queue.put(job)
        return job.future

    def _collect(self, jobs: list[Job]) -> bool:
        """Add to `jobs` those queued until the batch is full or the wait is over; return whether to stop after them."""
        windows = sum(j.windows for j in jobs)
        deadline = time.monotonic() + self.max_wait
        while windows < self.batch_size:
            try:
                left = deadline - time.monotonic()
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return True
            jobs.append(job)
            windows += job.windows
        return False

    def _work(self) -> None:
        """The worker loop: wait for a job, gather the others waiting, score them together, resolve their futures.

        Nothing a batch raises ends the loop: its requests fail with 500 and the next batch is taken.
        """
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = [first], False
            try:
                stop = self._collect(jobs)
                self._score(jobs)
            except Exception as exc:  # never leave a caller waiting, never let the worker die
                LOGGER.error("asdtool serve: a batch of %d request(s) failed: %s: %s", len(jobs), exc.__class__.__name__, exc)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(ServeError(500, f"scoring failed ({exc.__class__.__name__})"))
            if stop:
                return

    def _score(self, jobs: list[Job]) -> None:
        """Score the jobs in one call (each alone when the shared call fails), log the results and resolve the futures."""
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            results: list[RecordingScore | BaseException] = list(self._run([(j.recording, j.channels) for j in jobs]))
        except Exception:  # one bad recording must not fail the others: score each alone
            results = []
            for job in jobs:
                try:
                    results.extend(self._run([(job.recording, job.channels)]))
                except Exception as exc:
                    results.append(exc)
        done = [r for r in results if isinstance(r, RecordingScore)]
        log_error = None
        if self.log is not None and done:
            try:
                append_log(self.log, self.bundle, done, when)
            except Exception as exc:  # the server's paths stay on the server: its stderr has the whole line
                LOGGER.error("asdtool serve: could not append to the score log: %s", exc)
                log_error = ServeError(500, "scored, but could not append to the score log (the server's output says why)")
        self.scored += len(done)
        for job, result in zip(jobs, results):
            if isinstance(result, RecordingScore):
                if log_error is not None:
                    job.future.set_exception(log_error)
                else:
                    job.future.set_result(result)
            elif isinstance(result, AsdError):
                job.future.set_exception(ServeError(400, str(result)))
            else:
                LOGGER.error("asdtool serve: scoring %s failed: %s: %s", job.recording.name, result.__class__.__name__, result)
                job.future.set_exception(ServeError(500, f"scoring failed ({result.__class__.__name__})"))

    def _run(self, items: list[tuple[Recording, np.ndarray]]) -> list[RecordingScore]:
        """Call score_recordings once and count the batch."""
        self.batches += 1
        return score_recordings(self.bundle, items, self.hop, self.aggregate, self.batch_size)


# ----------------------------------------------------------------------------- requests


def decode(data: bytes, name: str, max_seconds: float | None = None) -> np.ndarray:
    """Return the channels [C, T] of uploaded WAV/FLAC bytes, checked as `asdtool score` checks a file.

    400 when refused; 413 when the header declares more than `max_seconds` of audio (nothing is decoded then).
    """
    from asdtool.data.audio import TooLong

    try:
        return read_audio_bytes(data, name, max_seconds)
    except TooLong as exc:
        raise ServeError(413, str(exc)) from None
    except AsdError as exc:
        raise ServeError(400, str(exc)) from None


async def read_body(request: "Request", max_bytes: int) -> bytes:
    """Return the request body, refusing one over `max_bytes` (413) by its Content-Length or while it streams in."""
    too_big = f"the request body exceeds the limit of {max_bytes} bytes"
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise ServeError(413, too_big)
        except ValueError:
            raise ServeError(400, f"bad Content-Length header {declared!r}") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ServeError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


async def upload_of(request: "Request", body: bytes) -> tuple[str, bytes]:
    """Return (file name, bytes) of the multipart field `file` of a body already read."""
    from starlette.requests import Request

    sent = False

    async def replay() -> dict:
        """Hand the body read once more to the form parser, then report the end of the request."""
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    try:
        upload = form.get(FILE_FIELD)
        if upload is None or isinstance(upload, str):
            raise ServeError(400, f"the multipart body has no file field {FILE_FIELD!r}")
        return upload.filename or "upload", await upload.read()
    finally:
        await form.close()


def info_of(bundle: Bundle, batcher: Batcher, max_seconds: float | None = None) -> dict:
    """Return what GET /info tells: the bundle's kind, members, clip length, machine types with thresholds, versions, hash."""
    meta = bundle.meta
    return {
        "bundle": bundle.path.name,
        "kind": meta["kind"],
        "members": [m["name"] for m in meta["members"]],
        "weights": meta.get("weights"),
        "seconds": bundle.seconds,
        "machines": {m: {"sections": {s: bundle.thresholds[(m, s)] for s in secs}} for m, secs in bundle.machines.items()},
        "content_sha256": meta["content_sha256"],
        "asdtool_version": __version__,
        "exported_by": meta.get("asdtool_version"),
        "hop": batcher.hop if batcher.hop is not None else bundle.seconds,
        "aggregate": batcher.aggregate,
        "batch_size": batcher.batch_size,
        "max_wait_ms": batcher.max_wait * 1000.0,
        "max_seconds": max_seconds,
        "logging": batcher.log is not None,
    }


def make_app(bundle: Bundle, *, max_bytes: int = 50_000_000, batch_size: int = 16, max_wait_ms: float = 5.0,
             hop: float | None = None, aggregate: str = "max", log: Path | None = None,
             max_seconds: float | None = 300.0) -> Any:  # fmt: skip
    """Return the FastAPI app serving `bundle` (loaded once by the caller); `app.state.batcher` is its worker."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    if log is not None:
        check_log(log, bundle)  # a folder of another bundle fails now, not at the first request
    batcher = Batcher(bundle, batch_size, max_wait_ms, hop, aggregate, None if log is None else Path(log))

    @asynccontextmanager
    async def lifespan(_app: Any):
        """Start the worker with the server; let it finish what is queued when the server stops."""
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop)

    app = FastAPI(title="asdtool", version=__version__, lifespan=lifespan,
                  description="Anomalous sound detection of machines with an asdtool detector bundle.")  # fmt: skip
    app.state.bundle = bundle
    app.state.batcher = batcher

    @app.exception_handler(ServeError)
    async def serve_error(_request: Request, exc: ServeError) -> JSONResponse:
        """Answer a refused or failed request with its status and one-line detail."""
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while requests get scored (503 when the worker died), with the batches and recordings scored so far."""
        ok = batcher.healthy
        return JSONResponse({"status": "ok" if ok else "worker stopped", "batches": batcher.batches,
                             "scored": batcher.scored}, status_code=200 if ok else 503)  # fmt: skip

    @app.get("/info")
    async def info() -> dict:
        """The bundle served and the scoring settings."""
        return info_of(bundle, batcher, max_seconds)

    @app.post("/score")
    async def score(request: Request, machine: str | None = None, section: str | None = None) -> dict:
        """Score one recording: a multipart field `file`, or the raw WAV/FLAC bytes as the body (with ?machine=)."""
        body = await read_body(request, max_bytes)
        if not body:
            raise ServeError(400, "empty request body: send a WAV or FLAC file")
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            name, data = await upload_of(request, body)
            if not data:
                raise ServeError(400, str(AsdError("the uploaded file is empty", name)))
        else:
            name, data = STDIN, body
        try:  # the machine type and section from the query, else from the upload's name alone
            rec = recording_of(bundle, Path(name), name, machine, section, UPLOADS)
        except NoDetector as exc:
            raise ServeError(404, str(exc)) from None
        except AsdError as exc:  # cannot tell
            raise ServeError(400, str(exc)) from None
        channels = await run_in_threadpool(decode, data, name, max_seconds)
        result: RecordingScore = await asyncio.wrap_future(batcher.submit(rec, channels))
        windows = [{"start": s, "score": v} for s, v in zip(result.window_starts, result.window_scores)]
        return {**result.row(), "windows": windows}

    return app
