import struct

import numpy as np
import pytest
import soundfile as sf

from asdtool.data.audio import check_audio, fit_length, read_channels, read_clip, read_clips, wav_data_extent
from asdtool.core.errors import AsdError

from tests.conftest import flac_bomb, write_wave


def test_read_pads_and_cuts(tmp_path):
    p = write_wave(tmp_path / "a.wav", seconds=0.5)
    raw, sr = sf.read(str(p), dtype="float32")
    padded = read_clip(p, seconds=1.0)
    assert padded.shape == (16000,) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:8000], raw)
    assert not padded[8000:].any()
    cut = read_clip(p, seconds=0.25)
    np.testing.assert_array_equal(cut, raw[:4000])
    assert read_clip(p, seconds=None).shape == (8000,)
    assert read_clips([p, p], seconds=0.1).shape == (2, 1600)


def test_fit_length_batched():
    x = np.ones((2, 3), np.float32)
    assert fit_length(x, 5).tolist() == [[1, 1, 1, 0, 0]] * 2
    assert fit_length(x, 2).shape == (2, 2)


def test_wrong_sample_rate(tmp_path):
    p = write_wave(tmp_path / "a.wav", sr=44100)
    with pytest.raises(AsdError, match=r"a\.wav: sample rate is 44100 Hz, expected 16000 Hz"):
        read_clip(p)


def test_stereo_near_left_far_right(tmp_path):
    p = tmp_path / "a.wav"
    near, far = np.full(800, 0.25, np.float32), np.full(800, -0.5, np.float32)
    sf.write(str(p), np.stack([near, far], axis=1), 16000, subtype="FLOAT")
    assert read_clip(p, seconds=None).tolist() == near.tolist()  # the default: channel 0, as the organisers' baseline
    assert read_clip(p, seconds=None, channel="right").tolist() == far.tolist()
    assert np.allclose(read_clip(p, seconds=0.1, channel="mean")[:800], -0.125)
    assert read_channels(p, seconds=0.1).shape == (2, 1600)
    assert read_clips([p, p], seconds=0.05, channel="right").tolist() == [far[:800].tolist()] * 2


def test_mono_has_no_right_channel_and_three_channels_are_refused(tmp_path):
    mono = write_wave(tmp_path / "m.wav")
    assert np.array_equal(read_clip(mono, channel="mean"), read_clip(mono))
    with pytest.raises(AsdError, match=r"m\.wav: is mono: --channel right needs a stereo clip"):
        read_clip(mono, channel="right")
    three = write_wave(tmp_path / "t.wav", channels=3)
    with pytest.raises(AsdError, match=r"t\.wav: has 3 channels, expected mono or stereo"):
        read_clip(three)


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AsdError) as e:
        read_clip(p)
    assert str(e.value).startswith(str(p)) and "cannot read audio" in str(e.value)


def test_empty_audio(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(str(p), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AsdError, match="holds no audio samples"):
        read_clip(p)


def test_missing_file(tmp_path):
    with pytest.raises(AsdError, match="cannot read audio"):
        read_clip(tmp_path / "none.wav")


def _riff(chunks: list[tuple[bytes, bytes]], declared: dict[bytes, int] | None = None) -> bytes:
    """Return a RIFF/WAVE file of `chunks` (id, body), each padded to even length; `declared` overrides sizes."""
    body = b"WAVE"
    for cid, data in chunks:
        size = (declared or {}).get(cid, len(data))
        body += cid + struct.pack("<I", size) + data + (b"\0" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(block_align: int = 2, tag: int = 1, bits: int = 16) -> bytes:
    return struct.pack("<HHIIHH", tag, 1, 16000, 16000 * block_align, block_align, bits)


def _pcm(n: int, seed: int = 0) -> bytes:
    return (np.random.default_rng(seed).integers(-3000, 3000, n).astype("<i2")).tobytes()


def test_truncated_wav_is_refused(tmp_path):
    p = write_wave(tmp_path / "a.wav", seconds=1.0)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # 44-byte header: 16022 bytes, 15978 of them audio
    with pytest.raises(AsdError) as e:
        read_clip(p)
    assert str(e.value) == f"{p}: truncated audio: the header declares 16000 frames, the file holds 7989"
    with pytest.raises(AsdError, match="truncated audio"):
        check_audio(p)


def test_wav_cut_mid_frame_and_to_its_header(tmp_path):
    p = write_wave(tmp_path / "a.wav", seconds=1.0)
    data = p.read_bytes()
    p.write_bytes(data[:1045])  # 1001 audio bytes: 500 whole frames
    with pytest.raises(AsdError, match=r"declares 16000 frames, the file holds 500$"):
        read_clip(p)
    p.write_bytes(data[:44])  # header only: libsndfile alone would call it empty
    with pytest.raises(AsdError, match=r"declares 16000 frames, the file holds 0$"):
        read_clip(p)


def test_wav_with_trailing_chunks_loads(tmp_path):
    pcm = _pcm(1600)
    p = tmp_path / "a.wav"
    p.write_bytes(_riff([(b"fmt ", _fmt()), (b"data", pcm), (b"LIST", b"INFOISFT\x05\x00\x00\x00tool\x00")]))
    assert wav_data_extent(p) == (3200, 3200, 2, 1)
    wave = read_clip(p, seconds=None)
    np.testing.assert_array_equal(wave, np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)
    p.write_bytes(p.read_bytes() + b"junk that is no chunk")
    assert read_clip(p, seconds=None).shape == (1600,)


def test_odd_sized_chunk_before_data_is_padded(tmp_path):
    pcm = _pcm(1600)
    p = tmp_path / "a.wav"
    p.write_bytes(_riff([(b"fmt ", _fmt()), (b"junk", b"abc"), (b"data", pcm)]))
    assert wav_data_extent(p) == (3200, 3200, 2, 1)
    assert read_clip(p, seconds=None).shape == (1600,)
    p.write_bytes(p.read_bytes()[:-1000])
    with pytest.raises(AsdError, match=r"declares 1600 frames, the file holds 1100$"):
        read_clip(p)


def test_wav_block_align_and_other_encodings(tmp_path):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(1600)).astype(np.float32)
    for subtype, fmt, align in (("FLOAT", "WAV", 4), ("PCM_24", "WAVEX", 3)):
        p = tmp_path / f"{subtype}.wav"
        sf.write(str(p), x, 16000, format=fmt, subtype=subtype)
        declared, held, block_align, _ = wav_data_extent(p)
        assert (declared, held, block_align) == (1600 * align, 1600 * align, align)
        p.write_bytes(p.read_bytes()[: -align * 100 - 1])
        with pytest.raises(AsdError, match=r"declares 1600 frames, the file holds 1499$"):
            read_clip(p)
    # a compressed encoding: the block is not one frame, so the message counts bytes
    p = tmp_path / "adpcm.wav"
    sf.write(str(p), x, 16000, subtype="IMA_ADPCM")
    declared, _, _, _ = wav_data_extent(p)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(AsdError, match=rf"declares {declared} bytes of audio data, the file holds {declared - 100}$"):
        read_clip(p)


def test_unknown_data_size_and_rf64_skip_the_header_check(tmp_path):
    p = tmp_path / "a.wav"
    p.write_bytes(_riff([(b"fmt ", _fmt()), (b"data", _pcm(1600))], declared={b"data": 0xFFFFFFFF}))
    assert wav_data_extent(p) is None
    x = np.zeros(1600, np.float32)
    sf.write(str(p), x, 16000, format="RF64", subtype="PCM_16")
    assert wav_data_extent(p) is None
    assert read_clip(p, seconds=None).shape == (1600,)
    sf.write(str(tmp_path / "a.flac"), x, 16000)
    assert wav_data_extent(tmp_path / "a.flac") is None


def test_other_formats_must_decode_every_frame(tmp_path, monkeypatch):
    x = (0.1 * np.random.default_rng(0).standard_normal(1600)).astype(np.float32)
    p = tmp_path / "a.flac"
    sf.write(str(p), x, 16000)
    assert read_clip(p, seconds=None).shape == (1600,)
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda *a, **k: (real_read(*a, **k)[0][:1500], 16000))
    with pytest.raises(AsdError) as e:
        read_clip(p)
    assert str(e.value) == f"{p}: truncated audio: the header declares 1600 frames, only 1500 decode"
    # a truncated FLAC stream fails while decoding
    monkeypatch.undo()
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AsdError, match=r"a\.flac: (cannot decode audio|truncated audio)"):
        read_clip(p)


def test_nan_audio_is_refused(tmp_path):
    p = tmp_path / "nan.wav"
    sf.write(str(p), np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AsdError, match="holds non-finite samples"):
        read_clip(p)


def test_a_recording_over_max_seconds_is_refused_from_its_header(tmp_path, monkeypatch):
    import tracemalloc

    from asdtool.data.audio import TooLong

    bomb = flac_bomb(tmp_path / "bomb.flac")  # 20 minutes of silence in ~59 kB
    assert bomb.stat().st_size < 70_000
    decoded = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda *a, **k: decoded.append(a) or real_read(*a, **k))
    tracemalloc.start()
    try:
        with pytest.raises(TooLong) as e:
            read_channels(bomb, seconds=None, max_seconds=300)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value) == f"{bomb}: is 1200 s of audio, over the limit of 300 s (--max-seconds)"
    assert decoded == [] and peak < 5_000_000  # refused from the header: nothing decoded
    with pytest.raises(TooLong, match="is 1200 s of audio, over the limit of 300 s"):
        check_audio(bomb, max_seconds=300)
    assert read_channels(bomb, seconds=None, max_seconds=1200).shape == (1, 1200 * 16000)  # at the limit: read
    short = write_wave(tmp_path / "short.wav", seconds=2.5)
    with pytest.raises(TooLong, match=r"short\.wav: is 2\.5 s of audio, over the limit of 2 s"):
        read_channels(short, seconds=None, max_seconds=2)


def test_a_header_that_hides_the_length_or_lies_low_costs_only_what_it_declares(tmp_path):
    unknown = flac_bomb(tmp_path / "unknown.flac", declared=0)  # a streamed FLAC: no total samples
    for limit in (None, 300):
        with pytest.raises(AsdError) as e:
            read_channels(unknown, seconds=None, max_seconds=limit)
        assert str(e.value) == f"{unknown}: its header does not state how long it is (a streamed FLAC?); re-encode it to a file"
    low = flac_bomb(tmp_path / "low.flac", declared=16000)  # declares 1 s, holds 20 minutes
    assert read_channels(low, seconds=None, max_seconds=300).shape == (1, 16000)
