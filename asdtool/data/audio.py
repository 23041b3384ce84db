"""Reading clips: 16 kHz WAV via soundfile, validated, one channel picked, padded or cut to a fixed duration.

Clips are mono (DCASE 2020-2025) or stereo (2026: the near microphone left, the far one right).
`channel` picks what a mono model hears: `left` (the organisers' baseline: channel 0, the near
microphone, which equals the earlier years' mono signal), `right` (the far microphone) or `mean`; a
mono clip is its own left and mean, and asking for its right channel is an error. `both` makes the
two microphones two views of one clip (`views`): two training examples, and an embedding that is the
mean of the two views' embeddings; a mono clip has one view.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from asdtool.core.errors import AsdError

SAMPLE_RATE = 16_000

# WAVE format tags whose block (fmt's block align) holds exactly one frame: PCM, IEEE float,
# A-law, mu-law and WAVE_FORMAT_EXTENSIBLE (whose sub-formats soundfile reads are all of that kind).
# libsndfile's frame count of a stream whose header leaves the length open (FLAC total samples 0)
UNKNOWN_LENGTH = 2**62
_ONE_FRAME_PER_BLOCK = {0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE}


def wav_data_extent(path: str | Path) -> tuple[int, int, int, int] | None:
    """Return (declared data bytes, data bytes the file holds, block align, format tag) of a RIFF/WAVE file.

    The chunk list is walked from the RIFF header to the `data` chunk (odd-sized chunks carry a pad
    byte). Returns None when the file is not RIFF/WAVE (other formats, RF64/BW64), has no `fmt `
    chunk before `data` or no `data` chunk, or declares an unknown data size (0xFFFFFFFF): there is
    then nothing to compare, and soundfile's own checks decide. Bytes after the declared data (such
    as a trailing LIST chunk) are not counted: a file may hold more than its data chunk declares.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(0)
            head = f.read(12)
            if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
                return None
            endian = "<" if head[:4] == b"RIFF" else ">"
            pos = 12
            block_align = tag = None
            while pos + 8 <= size:
                f.seek(pos)
                chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
                body = pos + 8
                if chunk_id == b"fmt ":
                    fmt = f.read(min(chunk_size, 14))
                    if len(fmt) < 14:
                        return None
                    tag, block_align = struct.unpack(endian + "H10xH", fmt)
                elif chunk_id == b"data":
                    if block_align is None or block_align == 0 or chunk_size == 0xFFFFFFFF:
                        return None
                    return chunk_size, min(chunk_size, size - body), block_align, tag
                pos = body + chunk_size + (chunk_size & 1)
    except OSError:
        return None
    return None


def _check_wav_length(path: Path) -> None:
    """Raise AsdError when a RIFF/WAVE file holds less audio data than its header declares."""
    extent = wav_data_extent(path)
    if extent is None:
        return
    declared, held, block_align, tag = extent
    if held >= declared:
        return
    if tag in _ONE_FRAME_PER_BLOCK:
        amount = f"{declared // block_align} frames, the file holds {held // block_align}"
    else:
        amount = f"{declared} bytes of audio data, the file holds {held}"
    raise AsdError(f"truncated audio: the header declares {amount}", path)


def check_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> sf._SoundFileInfo:
    """Return the header of a clip after checking it is readable, complete, mono or stereo, non-empty and at `sample_rate`.

    Complete: a RIFF/WAVE file must hold all the audio data its header declares (libsndfile would
    quietly read what is there). With `max_seconds`, a header declaring more audio than that is
    refused here, before anything is decoded.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        reason = str(exc).split(":")[-1].strip() or exc.__class__.__name__
        raise AsdError(f"cannot read audio ({reason})", path) from None
    _check_wav_length(path)
    if info.samplerate != sample_rate:
        raise AsdError(f"sample rate is {info.samplerate} Hz, expected {sample_rate} Hz", path)
    if info.channels not in (1, 2):
        raise AsdError(f"has {info.channels} channels, expected mono or stereo (near left, far right)", path)
    if info.frames == 0:
        raise AsdError("holds no audio samples", path)
    if info.frames >= UNKNOWN_LENGTH:
        raise AsdError("its header does not state how long it is (a streamed FLAC?); re-encode it to a file", path)
    if max_seconds is not None and info.frames > max_frames(max_seconds, sample_rate):
        raise TooLong(too_long(info.frames / sample_rate, max_seconds), path)
    return info


class TooLong(AsdError):
    """A recording longer than the --max-seconds limit (the service answers it with 413)."""


def max_frames(max_seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Return the most frames a recording of at most `max_seconds` holds."""
    return int(max_seconds * sample_rate)


def too_long(seconds: float, max_seconds: float) -> str:
    """Return the one-line problem of a recording longer than the limit."""
    shown = f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.3g}"
    return f"is {shown} s of audio, over the limit of {max_seconds:g} s (--max-seconds)"


def fit_length(wave: np.ndarray, n_samples: int) -> np.ndarray:
    """Return `wave` cut to its first `n_samples` or zero-padded at the end to that length."""
    if wave.shape[-1] >= n_samples:
        return wave[..., :n_samples]
    pad = np.zeros(wave.shape[:-1] + (n_samples - wave.shape[-1],), dtype=wave.dtype)
    return np.concatenate([wave, pad], axis=-1)


def read_channels(path: str | Path, seconds: float | None = 10.0, sample_rate: int = SAMPLE_RATE,
                  max_seconds: float | None = None) -> np.ndarray:  # fmt: skip
    """Return a clip's channels as float32 [C, T] in [-1, 1] (C = 1 or 2), padded or cut to `seconds` (None keeps its length).

    Refused: what `check_audio` refuses (with `max_seconds`, a header declaring more than that),
    and a clip that decodes to another number of frames than its header declares. Decoding stops
    one frame after the declared length, so a header that lies low costs no more than it declares.
    """
    path = Path(path)
    info = check_audio(path, sample_rate, max_seconds)
    try:
        wave, _ = sf.read(str(path), frames=info.frames + 1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AsdError(f"cannot decode audio ({exc.__class__.__name__})", path) from None
    if wave.size == 0:
        raise AsdError("decoded to no samples", path)
    if wave.shape[0] < info.frames:
        raise AsdError(f"truncated audio: the header declares {info.frames} frames, only {wave.shape[0]} decode", path)
    if wave.shape[0] > info.frames:
        raise AsdError(f"the header declares {info.frames} frames, {wave.shape[0]} decode", path)
    if not np.all(np.isfinite(wave)):
        raise AsdError("holds non-finite samples", path)
    wave = np.ascontiguousarray(wave.T)  # (C, T)
    if seconds is not None:
        if seconds <= 0:
            raise AsdError(f"clip duration must be positive, got {seconds}")
        wave = fit_length(wave, int(round(seconds * sample_rate)))
    return wave


def pick_channel(channels: np.ndarray, channel: str, path: str | Path) -> np.ndarray:
    """Return the one channel [T] a mono model hears from a clip's channels [C, T] (`left`, `right` or `mean`)."""
    if channel == "left":
        return channels[0]
    if channel == "right":
        if channels.shape[0] < 2:
            raise AsdError("is mono: --channel right needs a stereo clip (near microphone left, far right)", path)
        return channels[1]
    if channel == "mean":
        return channels[0] if channels.shape[0] == 1 else channels.mean(axis=0, dtype=np.float32)
    raise AsdError(f"unknown channel {channel!r}; choose one of left, right, mean (both reads two views)")


def views(path: str | Path, channel: str) -> tuple[str, ...]:
    """Return the single channels a model hears from a clip: `both` gives (left, right) of a stereo clip, (left,) of a mono one."""
    if channel != "both":
        return (channel,)
    return ("left", "right") if check_audio(path).channels == 2 else ("left",)


def read_clip(path: str | Path, seconds: float | None = 10.0, sample_rate: int = SAMPLE_RATE,
              channel: str = "left") -> np.ndarray:  # fmt: skip
    """Return one channel of a clip as float32 [T] in [-1, 1], padded or cut to `seconds` (None keeps its length)."""
    return pick_channel(read_channels(path, seconds, sample_rate), channel, path)


def read_clips(paths: Sequence[str | Path], seconds: float = 10.0, sample_rate: int = SAMPLE_RATE,
               channel: str = "left") -> np.ndarray:  # fmt: skip
    """Return one channel of each clip, stacked as float32 [N, seconds * sample_rate]."""
    n = int(round(seconds * sample_rate))
    out = np.empty((len(paths), n), dtype=np.float32)
    for i, p in enumerate(paths):
        out[i] = read_clip(p, seconds, sample_rate, channel)
    return out
