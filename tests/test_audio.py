"""audio_dcls.audio: every format and bit depth, channel mixing, resampling, bad input."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_dcls.audio import (
    AudioDecodeError,
    AudioTooLong,
    UnsupportedAudioFormat,
    decode_audio,
    load_audio,
    load_audio_tensor,
    load_audio_with_rate,
    pad_or_trim,
)

SR = 16000


def stereo_sine(sr=SR, seconds=0.5, freq=440.0):
    t = np.arange(int(sr * seconds)) / sr
    left = 0.5 * np.sin(2 * np.pi * freq * t)
    right = 0.25 * np.sin(2 * np.pi * freq * t + 0.3)
    return np.stack([left, right], axis=1).astype(np.float32)  # (n, 2)


def peak_hz(y, sr):
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return np.argmax(spec) * sr / len(y)


def encode(fmt, subtype, data, sr=SR):
    buf = io.BytesIO()
    sf.write(buf, data, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


LOSSLESS = [
    ("WAV", "PCM_U8", 1 / 64),
    ("WAV", "PCM_16", 1e-4),
    ("WAV", "PCM_24", 1e-6),
    ("WAV", "PCM_32", 1e-6),
    ("WAV", "FLOAT", 1e-7),
    ("WAV", "DOUBLE", 1e-7),
    ("FLAC", "PCM_16", 1e-4),
    ("FLAC", "PCM_24", 1e-6),
    ("AIFF", "PCM_16", 1e-4),
]


@pytest.mark.parametrize("fmt,subtype,tol", LOSSLESS, ids=[f"{f}-{s}" for f, s, _ in LOSSLESS])
def test_lossless_formats_decode_exactly_to_the_channel_mean(tmp_path, fmt, subtype, tol):
    x = stereo_sine()
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    y, rate = load_audio_with_rate(path)
    assert rate == SR and y.dtype == np.float32 and y.shape == (len(x),)
    np.testing.assert_allclose(y, x.mean(axis=1), atol=tol)


LOSSY = [("OGG", "VORBIS", 16000), ("OGG", "OPUS", 48000), ("MP3", "MPEG_LAYER_III", 16000)]


@pytest.mark.parametrize("fmt,subtype,sr", LOSSY, ids=[s for _, s, _ in LOSSY])
def test_lossy_soundfile_formats_keep_pitch_length_and_level(tmp_path, fmt, subtype, sr):
    x = stereo_sine(sr=sr, seconds=1.0, freq=1000.0)
    path = tmp_path / "clip.bin"  # decoding goes by content, not by extension
    path.write_bytes(encode(fmt, subtype, x, sr))
    y = load_audio(path, target_sr=None)
    assert abs(len(y) - len(x)) <= 0.05 * sr
    assert abs(peak_hz(y, sr) - 1000.0) < 5
    ref_rms = np.sqrt(np.mean(x.mean(axis=1) ** 2))
    assert abs(20 * np.log10(np.sqrt(np.mean(y**2)) / ref_rms)) < 1.5


def _pyav_encode(fmt: str, codec: str, x: np.ndarray, sr: int) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        stream = c.add_stream(codec, rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T), format="fltp", layout="stereo")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return buf.getvalue()


FFMPEG = [("ipod", "aac", 44100, "m4a"), ("adts", "aac", 44100, "aac"), ("webm", "libopus", 48000, "webm"), ("mp4", "aac", 44100, "mp4")]


@pytest.mark.parametrize("fmt,codec,sr,ext", FFMPEG, ids=[e for *_, e in FFMPEG])
def test_ffmpeg_containers_decode_through_pyav(tmp_path, fmt, codec, sr, ext):
    x = stereo_sine(sr=sr, seconds=1.0, freq=1000.0)
    data = _pyav_encode(fmt, codec, x, sr)
    path = tmp_path / f"clip.{ext}"
    path.write_bytes(data)
    y = load_audio(path, target_sr=32000)
    assert y.dtype == np.float32 and abs(len(y) - 32000) <= 0.1 * 32000
    assert abs(peak_hz(y, 32000) - 1000.0) < 5
    # bytes and file objects give the same samples as the path
    np.testing.assert_array_equal(load_audio(data, target_sr=32000), y)
    np.testing.assert_array_equal(load_audio(io.BytesIO(data), target_sr=32000), y)


def test_bytes_file_objects_and_paths_agree(tmp_path):
    x = stereo_sine()
    data = encode("FLAC", "PCM_16", x)
    (tmp_path / "a.flac").write_bytes(data)
    a = load_audio(tmp_path / "a.flac", target_sr=None)
    np.testing.assert_array_equal(a, load_audio(data, target_sr=None))
    np.testing.assert_array_equal(a, load_audio(bytearray(data), target_sr=None))
    np.testing.assert_array_equal(a, load_audio(io.BytesIO(data), target_sr=None))
    with open(tmp_path / "a.flac", "rb") as f:
        np.testing.assert_array_equal(a, load_audio(f, target_sr=None))
    t = load_audio_tensor(data, target_sr=None)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(a))


def test_many_channels_are_averaged_or_kept(tmp_path):
    n = 800
    chans = np.stack([np.full(n, v, np.float32) for v in (0.1, -0.2, 0.3, 0.4, 0.0, -0.5)], axis=1)  # 5.1
    sf.write(tmp_path / "six.wav", chans, SR, subtype="FLOAT")
    y = load_audio(tmp_path / "six.wav", target_sr=None)
    np.testing.assert_allclose(y, np.full(n, chans[0].mean()), atol=1e-7)
    multi = load_audio(tmp_path / "six.wav", target_sr=None, mono=False)
    assert multi.shape == (6, n)
    np.testing.assert_allclose(multi[:, 0], chans[0], atol=1e-7)


@pytest.mark.parametrize("src_sr", [44100, 48000, 8000])
def test_resampling_keeps_a_sines_frequency_and_the_duration(tmp_path, src_sr):
    t = np.arange(src_sr) / src_sr  # 1 s
    sf.write(tmp_path / "s.wav", (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32), src_sr, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav", target_sr=32000)
    assert len(y) == 32000
    assert abs(peak_hz(y, 32000) - 1000.0) <= 1.0
    # HQ resampling: the level survives and nothing else appears (> 60 dB below the tone)
    core = y[2000:-2000]
    assert abs(np.sqrt(np.mean(core**2)) - 0.5 / np.sqrt(2)) < 0.005
    spec = np.abs(np.fft.rfft(core * np.hanning(len(core))))
    freqs = np.fft.rfftfreq(len(core), 1 / 32000)
    assert spec[np.abs(freqs - 1000) > 50].max() < spec.max() * 1e-3


def _wav_header_only() -> bytes:
    return encode("WAV", "PCM_16", np.zeros((1000, 1), np.float32))[:44]


def _with_rate(wav: bytes, rate: int) -> bytes:
    b = bytearray(wav)
    struct.pack_into("<I", b, 24, rate)
    struct.pack_into("<I", b, 28, rate * 2)
    return bytes(b)


def _nan_wav() -> bytes:
    x = np.zeros(1000, np.float32)
    x[500] = np.nan
    return encode("WAV", "FLOAT", x)


def _bad_inputs():
    """Input with no decodable audio in it. (A file cut short with audio left is decoded: test_audio_lenient.py.)"""
    wav = encode("WAV", "PCM_16", stereo_sine())
    flac = encode("FLAC", "PCM_16", stereo_sine(seconds=1.0))
    ogg = encode("OGG", "VORBIS", stereo_sine(seconds=1.0))
    return {
        "empty": (b"", AudioDecodeError, "empty"),
        "header-only wav": (_wav_header_only(), AudioDecodeError, "truncated"),  # header promises 2000 bytes
        "wav with one byte of audio": (_wav_header_only() + b"\x01", AudioDecodeError, "only 1 is present"),
        "wav cut inside its header": (wav[:30], AudioDecodeError, "damaged or truncated"),
        "flac without a whole frame": (flac[:100], AudioDecodeError, "damaged or truncated"),
        "ogg without a whole audio page": (ogg[: ogg.find(b"OggS", 100) + 200], AudioDecodeError, "truncated"),
        "aiff header only": (encode("AIFF", "PCM_16", stereo_sine())[:54], AudioDecodeError, "none are present"),
        "zero samples": (encode("WAV", "PCM_16", np.zeros((0, 1), np.float32)), AudioDecodeError, "no audio samples"),
        "nan float wav": (_nan_wav(), AudioDecodeError, "non-finite"),
        "absurd rate": (_with_rate(wav, 5_000_000), AudioDecodeError, "sample rate"),
        "random bytes": (np.random.default_rng(0).bytes(4096), UnsupportedAudioFormat, "not a recognised audio format"),
        "text": (b"hello, this is not audio\n" * 10, UnsupportedAudioFormat, "not a recognised audio format"),
        "png": (b"\x89PNG\r\n\x1a\n" + bytes(200), UnsupportedAudioFormat, "not a recognised audio format"),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_bad_input_raises_a_typed_error_with_a_readable_reason(name):
    data, kind, words = _bad_inputs()[name]
    with pytest.raises(kind) as e:
        load_audio(data)
    assert isinstance(e.value, ValueError)
    assert words in e.value.reason
    assert "BytesIO" not in str(e.value) and "\n" not in str(e.value)
    if kind is AudioDecodeError:
        assert not isinstance(e.value, UnsupportedAudioFormat)  # 400, not 415


def test_files_cut_in_half_are_decoded_with_a_warning():
    """These two were refused (400) before files cut short were decoded; what is left of them is audio."""
    x = stereo_sine(seconds=1.0)
    wav, flac = encode("WAV", "PCM_16", x), encode("FLAC", "PCM_16", x)
    half_wav = decode_audio(wav[: len(wav) // 2], target_sr=None)
    assert half_wav.warnings == ["truncated: the header announces 64,000 bytes of audio but only 31,978 are present"]
    np.testing.assert_allclose(half_wav.samples, x[: 31978 // 4].mean(axis=1), atol=1e-4)
    half_flac = decode_audio(flac[: len(flac) // 2], target_sr=None)
    assert half_flac.warnings[0].startswith("truncated: the file announces 1.00 s of audio but only ")
    assert 0.25 * SR < len(half_flac.samples) < 0.75 * SR and len(half_flac.samples) % 4096 == 0  # whole frames only
    np.testing.assert_allclose(half_flac.samples, x[: len(half_flac.samples)].mean(axis=1), atol=1e-4)


def test_missing_and_empty_files_name_the_path(tmp_path):
    with pytest.raises(AudioDecodeError, match="file not found"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioDecodeError, match=r"empty.wav: the file is empty"):
        load_audio(tmp_path / "empty.wav")


def test_video_without_audio_is_unsupported_media(tmp_path):
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with pytest.raises(UnsupportedAudioFormat, match="no audio stream"):
        load_audio(buf.getvalue())


def test_length_limit_is_checked_before_decoding():
    data = encode("WAV", "PCM_16", np.zeros((SR * 3, 1), np.float32))
    with pytest.raises(AudioTooLong, match=r"lasts 3\.00 s, longer than the 2\.00 s limit"):
        load_audio(data, max_seconds=2.0)
    assert len(load_audio(data, target_sr=None, max_seconds=None)) == SR * 3


def test_pad_or_trim_numpy_and_torch():
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(pad_or_trim(x, 3), [0, 1, 2])
    np.testing.assert_array_equal(pad_or_trim(x, 7), [0, 1, 2, 3, 4, 0, 0])
    assert pad_or_trim(x, 5) is x
    t = torch.arange(10.0).view(2, 5)
    assert torch.equal(pad_or_trim(t, 6), torch.cat([t, torch.zeros(2, 1)], 1))
    assert pad_or_trim(t, 2).shape == (2, 2)
    with pytest.raises(ValueError):
        pad_or_trim(x, -1)


