"""audio_dcls.audio on files cut short or with wrong headers: decoded up to what is present, with warnings.

Every file is built here. The oracles do not go through our decoder: PCM payloads are parsed
with numpy from the file's own bytes, FLAC/Ogg/AAC sample counts come from the untruncated
file's frame and page structure, and samples are compared with libsndfile's or ffmpeg's
decoding of the whole file (exactly for lossless formats and for the deterministic lossy
decoders, which decode the frames before a cut as they decode them in the whole file).
"""
from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
import soundfile as sf

from audio_dcls.audio import (
    WARNING_KINDS,
    AudioDecodeError,
    AudioDecodeWarning,
    UnsupportedAudioFormat,
    decode_audio,
    load_audio,
    load_audio_tensor,
    load_audio_with_rate,
)

SR = 16000


def noise_and_tones(n: int, channels: int = 2, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    tones = np.stack([0.4 * np.sin(2 * np.pi * (440 + 220 * c) * t) for c in range(channels)], axis=1)
    return (tones + 0.05 * np.random.default_rng(channels).standard_normal((n, channels))).astype(np.float32)


def encode(fmt: str, subtype: str, x: np.ndarray, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def decode(data: bytes):
    return decode_audio(data, target_sr=None, mono=False)


def libsndfile_whole(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0].T  # (C, n)


# --- WAV and AIFF: chunks walked and PCM parsed by hand -----------------------------------------------------

def chunk(data: bytes, fourcc: bytes) -> tuple[int, int]:
    """(offset of the chunk header, size field) of a RIFF (little-endian) or AIFF (big-endian) chunk."""
    endian = "<" if data[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= len(data):
        size = struct.unpack_from(endian + "I", data, pos + 4)[0]
        if data[pos : pos + 4] == fourcc:
            return pos, size
        pos += 8 + size + (size & 1)
    raise AssertionError(f"no {fourcc!r} chunk")


def put_u32(data: bytes, offset: int, value: int, endian: str = "<") -> bytes:
    b = bytearray(data)
    struct.pack_into(endian + "I", b, offset, value)
    return bytes(b)


SAMPLE_BYTES = {"PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def pcm_oracle(payload: bytes, subtype: str, channels: int, big_endian: bool = False) -> np.ndarray:
    """The whole sample frames in a PCM payload, as float32 (C, n), parsed with numpy alone."""
    width = SAMPLE_BYTES[subtype]
    frames = len(payload) // (width * channels)
    raw = np.frombuffer(payload[: frames * width * channels], np.uint8).reshape(-1, width)
    if big_endian:
        raw = raw[:, ::-1]
    if subtype == "PCM_U8":
        v = (raw[:, 0].astype(np.float64) - 128) / 128
    elif subtype in ("PCM_16", "PCM_24", "PCM_32"):
        as_int = np.zeros(len(raw), np.int64)
        for i in range(width):
            as_int |= raw[:, i].astype(np.int64) << (8 * i)
        sign = 1 << (8 * width - 1)
        v = ((as_int ^ sign) - sign) / float(sign)
    else:
        v = np.ascontiguousarray(raw).view("<f4" if width == 4 else "<f8")[:, 0].astype(np.float64)
    return v.reshape(frames, channels).T.astype(np.float32)


def truncation_warning(declared: int, present: int) -> str:
    return f"truncated: the header announces {declared:,} bytes of audio but only {present:,} are present"


@pytest.mark.parametrize("subtype", list(SAMPLE_BYTES))
def test_wav_whose_data_chunk_over_announces_decodes_all_that_is_present(subtype):
    wav = encode("WAV", subtype, noise_and_tones(1001))
    pos, size = chunk(wav, b"data")
    payload = wav[pos + 8 : pos + 8 + size]
    for extra in (82, 1):  # the issue's 82 missing bytes; and an odd announced length
        declared = size + extra
        damaged = put_u32(put_u32(wav, pos + 4, declared), 4, len(wav) - 8 + extra)
        got = decode(damaged)
        assert got.warnings == [truncation_warning(declared, size)]
        np.testing.assert_array_equal(got.samples, pcm_oracle(payload, subtype, 2))
        assert got.sample_rate == got.source_sample_rate == SR and got.source_channels == 2


@pytest.mark.parametrize("subtype", list(SAMPLE_BYTES))
def test_wav_cut_mid_sample_keeps_only_whole_sample_frames(subtype):
    wav = encode("WAV", subtype, noise_and_tones(1001))
    pos, size = chunk(wav, b"data")
    block = 2 * SAMPLE_BYTES[subtype]
    for frames, extra_bytes in ((1000, 0), (640, 1), (333, block - 1)):
        present = frames * block + extra_bytes
        got = decode(wav[: pos + 8 + present])
        assert got.warnings == [truncation_warning(size, present)]
        assert got.samples.shape == (2, frames)
        np.testing.assert_array_equal(got.samples, pcm_oracle(wav[pos + 8 : pos + 8 + present], subtype, 2))
        np.testing.assert_array_equal(got.samples, libsndfile_whole(wav)[:, :frames])


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
def test_aiff_whose_ssnd_chunk_over_announces_decodes_what_is_present(subtype):
    aiff = encode("AIFF", subtype, noise_and_tones(1001))
    pos, size = chunk(aiff, b"SSND")
    audio = size - 8  # SSND starts with 4 bytes of offset and 4 of block size
    start = pos + 16
    block = 2 * SAMPLE_BYTES[subtype]
    over = put_u32(aiff, pos + 4, size + 82, ">")
    got = decode(over)
    assert got.warnings == [truncation_warning(audio + 82, audio)]
    np.testing.assert_array_equal(got.samples, pcm_oracle(aiff[start : start + audio], subtype, 2, big_endian=True))
    present = 700 * block + 1
    got = decode(aiff[: start + present])
    assert got.warnings == [truncation_warning(audio, present)] and got.samples.shape == (2, 700)
    np.testing.assert_array_equal(got.samples, pcm_oracle(aiff[start : start + present], subtype, 2, big_endian=True))


def test_wav_whose_recorder_never_wrote_the_data_length_is_read_to_the_end():
    wav = encode("WAV", "PCM_16", noise_and_tones(1000))
    pos, size = chunk(wav, b"data")
    unfinished = put_u32(put_u32(wav, pos + 4, 0), 4, 0)  # both lengths left at their placeholder 0
    for cut, frames in ((0, 1000), (3, 999)):
        got = decode(unfinished[: len(unfinished) - cut])
        assert len(got.warnings) == 1 and got.warnings[0].startswith("header: the WAV header gives the audio length as 0 bytes")
        np.testing.assert_array_equal(got.samples, pcm_oracle(wav[pos + 8 : pos + 8 + frames * 4], "PCM_16", 2))
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        decode(unfinished[: pos + 8])  # nothing after the header: still no audio


# --- FLAC: frame boundaries from the whole file's demuxer ----------------------------------------------------

def packets(data: bytes) -> list[tuple[int, int]]:
    """(byte offset, size) of each audio packet in the whole file, from ffmpeg's demuxer."""
    import av

    with av.open(io.BytesIO(data)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.audio[0]) if p.size]


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
def test_flac_cut_mid_stream_keeps_every_whole_frame(subtype):
    flac = encode("FLAC", subtype, noise_and_tones(2 * SR))  # libsndfile writes 4096-sample frames
    frames = packets(flac)
    whole = libsndfile_whole(flac)
    for cut, complete in ((frames[3][0] + frames[3][1] // 2, 3), (frames[6][0] + 17, 6), (sum(frames[4]), 5)):
        got = decode(flac[:cut])
        n = complete * 4096
        assert got.samples.shape == (2, n)
        np.testing.assert_array_equal(got.samples, whole[:, :n])
        assert len(got.warnings) == 1 and got.warnings[0].startswith("truncated: ")
        assert "2.00 s" in got.warnings[0] and f"{n / SR:.2f} s" in got.warnings[0]


# --- lossy streams -----------------------------------------------------------------------------------------------

def ffmpeg_decode(data: bytes) -> np.ndarray:
    """(C, n): ffmpeg's own decoding, keeping every packet that decodes."""
    import av

    out = []
    with av.open(io.BytesIO(data)) as c:
        for p in c.demux(c.streams.audio[0]):
            try:
                out += [f.to_ndarray().reshape(len(f.layout.channels), -1) for f in p.decode()]
            except av.FFmpegError:
                pass
    return np.concatenate(out, axis=1)


def test_mp3_cut_short_matches_libsndfile_and_ffmpeg():
    sr = 44100
    x = noise_and_tones(2 * sr, sr=sr)
    mp3 = encode("MP3", "MPEG_LAYER_III", x, sr)
    whole = libsndfile_whole(mp3)
    for fraction in (0.5, 0.8):
        cut = mp3[: int(len(mp3) * fraction)]
        got = decode(cut)
        n = got.samples.shape[1]
        assert got.warnings == [f"truncated: the header announces 2.00 s of audio but only {n / sr:.2f} s could be decoded"]
        np.testing.assert_allclose(got.samples, whole[:, :n], atol=1e-6)  # the same frames, no partial one at the end
        # mpg123 (libsndfile) holds back the last whole frame before the cut; ffmpeg gives it: one frame apart.
        assert ffmpeg_decode(cut).shape[1] - 1152 <= n <= ffmpeg_decode(cut).shape[1]
        assert abs(n - fraction * 2 * sr) < 0.05 * sr
        # and to codec tolerance it is the source signal
        err = got.samples[:, 2000:] - x.T[:, 2000:n]
        assert 10 * np.log10(np.sum(x.T[:, 2000:n] ** 2) / np.sum(err**2)) > 15


def ogg_pages(data: bytes) -> list[tuple[int, int, int]]:
    """(end offset, granule position, flags) of each page, from the page headers."""
    pages, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS"
        table = data[pos + 27 : pos + 27 + data[pos + 26]]
        end = pos + 27 + len(table) + sum(table)
        pages.append((end, struct.unpack_from("<q", data, pos + 6)[0], data[pos + 5]))
        pos = end
    return pages


@pytest.mark.parametrize("subtype,sr,seconds", [("VORBIS", SR, 2), ("OPUS", 48000, 4)])
def test_ogg_cut_short_keeps_every_whole_page_and_says_so(subtype, sr, seconds):
    ogg = encode("OGG", subtype, noise_and_tones(seconds * sr, sr=sr), sr)
    pages = ogg_pages(ogg)
    pre_skip = struct.unpack_from("<H", ogg, ogg.find(b"OpusHead") + 10)[0] if subtype == "OPUS" else 0
    whole = decode(ogg)
    assert whole.warnings == [] and pages[-1][2] & 0x04  # a whole file ends with its end-of-stream page
    end_of_page = pages[-3][0]
    for cut, message in ((end_of_page + 25, "in the middle of a page"), (end_of_page, "without its end-of-stream mark")):
        got = decode(ogg[:cut])
        n = max(g for e, g, _ in pages if e <= cut) - pre_skip
        assert got.samples.shape == (2, n)
        np.testing.assert_array_equal(got.samples, whole.samples[:, :n])
        assert len(got.warnings) == 1 and got.warnings[0].startswith("truncated: the Ogg stream ends " + message)


def _pyav_file(tmp_path, fmt: str, x: np.ndarray, sr: int, layout: str = "stereo", **options) -> bytes:
    import av

    path = tmp_path / f"clip.{fmt}"
    with av.open(str(path), "w", format=fmt, options=options) as c:
        stream = c.add_stream("aac", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T), format="fltp", layout=layout)
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    return path.read_bytes()


@pytest.mark.parametrize("fmt,message", [("ipod", "the file announces 2.02 s"), ("adts", "the file ends in the middle of a block")])
def test_aac_cut_short_keeps_every_whole_packet(tmp_path, fmt, message):
    sr = 44100
    aac = _pyav_file(tmp_path, fmt, noise_and_tones(2 * sr, sr=sr), sr, movflags="faststart")  # M4A index first
    whole = decode(aac)
    assert whole.warnings == []
    for fraction in (0.6, 0.85):
        cut = int(len(aac) * fraction)
        got = decode(aac[:cut])
        n = 1024 * sum(1 for pos, size in packets(aac) if pos + size <= cut)
        assert got.samples.shape == (2, n)
        np.testing.assert_array_equal(got.samples, whole.samples[:, :n])
        assert len(got.warnings) == 1 and got.warnings[0].startswith("truncated: " + message)


def test_m4a_cut_short_without_its_index_is_still_refused(tmp_path):
    m4a = _pyav_file(tmp_path, "ipod", noise_and_tones(44100, sr=44100), 44100)  # index (moov) written last
    with pytest.raises(AudioDecodeError, match="damaged or truncated") as e:
        decode(m4a[: len(m4a) * 2 // 3])
    assert not isinstance(e.value, UnsupportedAudioFormat)


def test_stream_that_changes_rate_and_channels_is_converted_to_its_first_format(tmp_path):
    tone = lambda hz, sr, ch: np.repeat(0.5 * np.sin(2 * np.pi * hz * np.arange(sr) / sr)[:, None], ch, 1).astype(np.float32)
    (tmp_path / "a").mkdir()
    first = _pyav_file(tmp_path / "a", "adts", tone(440, 44100, 2), 44100)
    second = _pyav_file(tmp_path, "adts", tone(1000, 22050, 1), 22050, layout="mono")
    got = decode_audio(first + second, target_sr=None)
    assert got.sample_rate == 44100 and abs(got.duration_s - 2.0) < 0.15  # AAC adds priming and padding to each stream
    assert len(got.warnings) == 1 and got.warnings[0].startswith("format_change: at 1.0")
    assert "from 44,100 Hz, 2 channels to 22,050 Hz, 1 channel" in got.warnings[0]
    spectrum_peak = lambda y: np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y))))) * 44100 / len(y)
    assert abs(spectrum_peak(got.samples[4410:39690]) - 440) < 5
    assert abs(spectrum_peak(got.samples[-39690:-4410]) - 1000) < 5


# --- headers that are odd but usable, and the API -------------------------------------------------------------

def test_more_than_64_channels_are_audio_too(tmp_path):
    x = np.tile(np.linspace(-0.5, 0.5, 100, dtype=np.float32), (400, 1))  # 100 channels, each a constant
    sf.write(tmp_path / "array.wav", x, SR, subtype="FLOAT")
    got = decode_audio(tmp_path / "array.wav", target_sr=None)
    assert got.source_channels == 100 and got.warnings == []
    np.testing.assert_allclose(got.samples, np.full(400, x[0].mean()), atol=1e-7)


def test_decode_audio_returns_the_warnings_and_load_audio_issues_them(tmp_path):
    wav = encode("WAV", "PCM_16", noise_and_tones(SR))
    path = tmp_path / "cut.wav"
    path.write_bytes(wav[: len(wav) - 999])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decode_audio reports through its result only
        got = decode_audio(path, target_sr=32000)
        clean = decode_audio(wav, target_sr=32000)
    assert clean.warnings == [] and clean.duration_s == 1.0 and clean.samples.shape == (32000,)
    assert (got.sample_rate, got.source_sample_rate, got.source_channels) == (32000, SR, 2)
    assert got.warnings == [truncation_warning(4 * SR, 4 * SR - 999)]
    assert all(w.split(": ", 1)[0] in WARNING_KINDS for w in got.warnings)
    frames = (4 * SR - 999) // 4
    assert got.samples.shape == (2 * frames,)
    for load, n in ((load_audio, 2 * frames), (load_audio_tensor, 2 * frames), (lambda p: load_audio_with_rate(p)[0], frames)):
        with pytest.warns(AudioDecodeWarning) as caught:
            y = np.asarray(load(path))
        assert [str(w.message) for w in caught] == [f"{path}: {got.warnings[0]}"]
        assert y.shape == (n,)
