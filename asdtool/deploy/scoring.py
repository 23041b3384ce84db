"""Scoring new recordings with a loaded bundle: windows of its clip length, embedded in shared batches, scored per section.

`score_recordings` cuts each recording into windows of the bundle's clip length (every `hop`
seconds, plus one that ends at the recording's end; `window_starts`), embeds the windows of
consecutive recordings in shared batches per member and channel, and scores each window with the
fitted detector of the recording's section; a member that hears `both` microphones averages the two
channels' embeddings, as `embed --channel both` does. A system's score is
sum_i w_i (s_i - mean_i) / std_i over its members, with each member's mean and std of the test-clip
scores per machine type that `ensemble` used when the bundle was exported. A recording's score is the
max (or the mean) of its windows' scores, and it is anomalous when that exceeds the section's threshold.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from asdtool.core.errors import AsdError
from asdtool.deploy.bundle import Bundle, RecordingScore
from asdtool.deploy.inputs import Recording

AGGREGATES = ("max", "mean")


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Return the start samples of the windows of a recording: every `hop`, plus one ending at its end.

    A recording of at most one window is one window (zero-padded, as `embed` pads a short clip).
    """
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return starts


def _views(channel: str, channels: np.ndarray) -> tuple[str, ...]:
    """Return the single channels a member hears: its own, or both microphones of a stereo clip (`both`).

    The rule of `asdtool.data.audio.views`, for channels already decoded: that one reads a file's
    header, and a recording from stdin or an upload has no file.
    """
    if channel != "both":
        return (channel,)
    return ("left", "right") if channels.shape[0] == 2 else ("left",)


def score_recordings(
    bundle: Bundle, recordings: Iterable[tuple[Recording, np.ndarray]], hop: float | None = None, aggregate: str = "max",
    batch_size: int = 16, progress: Callable[[], None] | None = None,
) -> list[RecordingScore]:  # fmt: skip
    """Score recordings (each with its channels [C, T] at 16 kHz), window by window, batched across recordings.

    Windows of the bundle's clip length start every `hop` seconds (default: the clip length), plus
    one that ends at the recording's end; a recording of one clip length or less is one window,
    zero-padded. The windows of consecutive recordings share batches of `batch_size`, so clips
    given in a store's order embed in the batches `embed` used. `progress()` follows each recording read.
    """
    import torch

    from asdtool.data.audio import SAMPLE_RATE, fit_length, pick_channel
    from asdtool.detect.embed import _embed_batch

    if aggregate not in AGGREGATES:
        raise AsdError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if batch_size < 1:
        raise AsdError(f"batch size must be at least 1, got {batch_size}")
    window = int(round(bundle.seconds * SAMPLE_RATE))
    hop_n = window if hop is None else int(round(hop * SAMPLE_RATE))
    if hop_n < 1:
        raise AsdError(f"--hop {hop:g} s is shorter than one sample at {SAMPLE_RATE // 1000} kHz ({1 / SAMPLE_RATE:g} s)")
    autocast = bundle.device.type == "cuda"
    # per (member, view): windows waiting for a batch, and the embeddings made, with their recording index
    pending: dict[tuple[int, str], list[tuple[int, np.ndarray]]] = {}
    made: dict[tuple[int, str], list[tuple[int, np.ndarray]]] = {}

    def flush(key: tuple[int, str]) -> None:
        items = pending.pop(key, [])
        if not items:
            return
        waves = np.stack([w for _, w in items]).astype(np.float32)
        with torch.inference_mode():
            emb = _embed_batch(bundle.members[key[0]].model, waves, bundle.device, autocast)
        made.setdefault(key, []).extend((r, e) for (r, _), e in zip(items, emb))

    recs: list[Recording] = []
    starts_of: list[list[int]] = []
    views_of: list[list[tuple[str, ...]]] = []
    for index, (rec, channels) in enumerate(recordings):
        if (rec.machine, rec.section) not in bundle.thresholds:
            known = ", ".join(f"{m} ({', '.join(s)})" for m, s in bundle.machines.items())
            raise AsdError(f"the bundle has no detector for {rec.machine} section {rec.section} (it has: {known})", rec.name)
        starts = window_starts(channels.shape[-1], window, hop_n)
        recs.append(rec)
        starts_of.append(starts)
        views_of.append([])
        for m, member in enumerate(bundle.members):
            views = _views(member.channel, channels)
            views_of[-1].append(views)
            for view in views:
                wave = pick_channel(channels, view, rec.name)
                for s in starts:
                    pending.setdefault((m, view), []).append((index, fit_length(wave[s : s + window], window)))
                    if len(pending[(m, view)]) == batch_size:
                        flush((m, view))
        if progress:
            progress()
    for key in list(pending):
        flush(key)

    by_rec: dict[tuple[int, str], dict[int, list[np.ndarray]]] = {}
    for key, rows in made.items():
        for r, e in rows:
            by_rec.setdefault(key, {}).setdefault(r, []).append(e)
    results = []
    for index, rec in enumerate(recs):
        total, z = None, []
        for m, member in enumerate(bundle.members):
            views = views_of[index][m]
            emb = np.stack(by_rec[(m, views[0])][index])
            if len(views) == 2:  # both microphones: the mean of the two views' embeddings, as embed --channel both
                emb = (emb + np.stack(by_rec[(m, views[1])][index])) / 2
            raw, _ = member.banks[(rec.machine, rec.section)].score(emb)
            if bundle.weights is None:
                total = raw
            else:
                mean, std = member.stats[rec.machine]
                z.append((raw - mean) / std)
        if bundle.weights is not None:  # as ensemble.fuse: the weights times the members' z-scores
            total = np.asarray(bundle.weights, dtype=np.float64) @ np.array(z)
        scores = [float(v) for v in total]
        value = max(scores) if aggregate == "max" else float(np.mean(scores))
        results.append(RecordingScore(rec.name, rec.machine, rec.section, [s / SAMPLE_RATE for s in starts_of[index]],
                                      scores, value, bundle.thresholds[(rec.machine, rec.section)]))  # fmt: skip
    return results
