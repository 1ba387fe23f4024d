"""Audio decoding for the whole project: files, bytes or streams in; float32 samples out.

:func:`decode_audio` is used by the offline pipelines and by the service, so a clip is
decoded the same way everywhere. It returns a :class:`DecodedAudio`: the samples, their
rate, and the ``warnings`` the decoder has about the file. :func:`load_audio` is the same
call returning only the samples; it issues those warnings as :class:`AudioDecodeWarning`
through Python's ``warnings`` module, so they are seen but cannot be collected per file
(a batch job that reports them uses :func:`decode_audio`).

* libsndfile (through ``soundfile``) first: WAV/W64/RF64 (8-bit unsigned, 16/24/32-bit
  int, 32/64-bit float, A-law, mu-law, ADPCM), FLAC, Ogg Vorbis, Ogg Opus, MP3,
  AIFF, CAF, AU;
* ffmpeg (through PyAV, whose wheel carries it) for containers libsndfile does not
  read: M4A/MP4/AAC, WebM/Matroska, WMA, AMR, the odd WAV holding a compressed codec,
  and the files libsndfile gives up on (a FLAC stream cut mid-frame, a WAV whose
  recorder never wrote the data length);
* channels are averaged to mono, then soxr resamples with its "HQ" quality.

Decoding is as lenient as those tools and honest about it: a file whose header announces
more audio than it holds (a recorder that died, an asset packer's wrong chunk size, a
download cut short) is decoded up to what is present, without a partial sample or frame
at the end, and a warning says what was missing. Each warning is ``"<kind>: <sentence>"``
with the kind one of :data:`WARNING_KINDS`.

Every failure is an :class:`AudioDecodeError` (a ``ValueError``) whose ``reason``
is a sentence a user can act on. :class:`UnsupportedAudioFormat` marks input that
is not audio we know (an HTTP server answers 415); every other decode error means
"this is audio, but nothing of it can be decoded" (400); :class:`AudioTooLong` is input
over a length limit (413).
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple, Union

import numpy as np

# File extensions the ingest looks for when it scans a folder. Decoding itself goes
# by content, never by extension, so a misnamed file still decodes.
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".caf", ".au", ".w64", ".rf64")
FFMPEG_EXTENSIONS = (".m4a", ".mp4", ".aac", ".webm", ".mkv", ".mka", ".wma", ".amr", ".3gp", ".mov")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS

MIN_SAMPLE_RATE = 1_000  # Hz; below this a header is broken, not audio
MAX_SAMPLE_RATE = 1_000_000  # Hz; 768 kHz is the highest rate real converters use
MAX_CHANNELS = 1024  # libsndfile's own limit; microphone arrays with more than 64 channels exist
MAX_DURATION_S = 4 * 3600.0  # default length cap: a longer file is refused before it is decoded

# The first word of every decode warning, for code that counts or filters them.
WARNING_KINDS = {
    "truncated": "the file ends before the audio its header or container announces; what is present was decoded",
    "damaged": "blocks in the middle of the stream could not be decoded and were skipped",
    "header": "a header field was missing or wrong and the audio was read without it",
    "format_change": "the sample rate or channel count changes inside the stream; later audio was converted to the first format",
}

AudioInput = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


class AudioDecodeError(ValueError):
    """Input that could not be turned into audio; ``reason`` says why, in plain words."""

    def __init__(self, reason: str, source: str | None = None):
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


class UnsupportedAudioFormat(AudioDecodeError):
    """The input is not in any audio format we can read (HTTP 415, not 400)."""


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the caller's limit (HTTP 413)."""


class AudioDecodeWarning(UserWarning):
    """What :func:`load_audio` issues for each of :attr:`DecodedAudio.warnings`."""


@dataclass(frozen=True)
class DecodedAudio:
    """What :func:`decode_audio` returns."""

    samples: np.ndarray  # float32 in [-1, 1]: (n,) when mono, else (C, n)
    sample_rate: int  # rate of `samples`: target_sr, or the file's own rate when target_sr is None
    source_sample_rate: int  # the file's own rate
    source_channels: int  # channels in the file, before mixing to mono
    warnings: list[str] = field(default_factory=list)  # "<kind>: <sentence>" (kinds: WARNING_KINDS); [] for a sound file

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


class _Raw(NamedTuple):
    """A decoder's output before scaling, mixing and resampling."""

    samples: np.ndarray  # (n, C) int16 (scale by 1/32768) or float32
    rate: int
    notes: list[str]  # warnings, as in DecodedAudio


class _NeedsFFmpeg(Exception):
    """libsndfile opened the file but cannot read its audio; ffmpeg can. ``note`` says why."""

    def __init__(self, note: str):
        self.note = note


# Leading bytes of the containers we know. Used only when libsndfile refuses the input,
# to decide between "try ffmpeg" and "this is not audio at all": ffmpeg's probing is
# lenient enough to 'decode' random bytes as MPEG audio, so it is never asked blindly.
def _sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"AVI "):
        return "wav" if head[8:12] == b"WAVE" else "avi"
    if head[:4] in (b"RF64", b"BW64"):
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return "mp3"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"caff":
        return "caf"
    if head[:4] == b".snd":
        return "au"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:16] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c":
        return "asf"
    if head[:5] == b"#!AMR":
        return "amr"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xF6) == 0xF0:
        return "aac"  # ADTS frame sync (layer bits 00)
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return "mp3"  # MPEG audio frame sync
    return None


_FORMAT_NAMES = "WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, M4A/AAC, WebM"
_SOUNDFILE_KINDS = ("wav", "flac", "ogg", "mp3", "aiff", "caf", "au")

# libsndfile logs "data : <declared> (should be <available>)" when a WAV/AIFF header
# promises more sample bytes than the file holds, i.e. the file was cut short.
_TRUNCATED_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# A WAV data length left at 0 with audio after it: libsndfile then parses the samples as chunks.
_UNFINISHED_DATA_CHUNK = re.compile(r"^data : 0\n\*\*\* .*Exiting parser", re.MULTILINE)
# Streaming writers put these in the size field when the length is not known yet.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 1}


def _describe(source) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) if hasattr(source, "read") else None


def _duration(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {s:02d} s" if hours else f"{minutes} min {s:02d} s"


def _read_input(source: AudioInput) -> tuple[str | None, bytes | None]:
    """Return (path, None) for paths and (None, data) for bytes and streams."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise AudioDecodeError("file not found", path) from None
        except OSError as e:
            raise AudioDecodeError(f"cannot read the file ({e.strerror or e})", path) from None
        if os.path.isdir(path):
            raise AudioDecodeError("is a directory, not an audio file", path)
        if size == 0:
            raise AudioDecodeError("the file is empty (0 bytes)", path)
        return path, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read()
        if isinstance(data, str):
            raise TypeError("load_audio needs a binary stream (open the file with 'rb')")
    else:
        raise TypeError(f"load_audio takes a path, bytes or a binary file object, not {type(source).__name__}")
    if len(data) == 0:
        raise AudioDecodeError("the upload is empty (0 bytes)")
    return None, data


def _open_bytes(path: str | None, data: bytes | None) -> BinaryIO:
    return open(path, "rb") if path is not None else io.BytesIO(data)


def _check_header(rate: float, channels: int, frames: int | None, max_seconds: float | None, name: str | None) -> None:
    if rate <= 0:
        raise AudioDecodeError("the header gives no sample rate; the file is damaged or truncated", name)
    if not (MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
        raise AudioDecodeError(
            f"implausible sample rate {rate:g} Hz in the header (accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz); the file is damaged",
            name,
        )
    if not (1 <= channels <= MAX_CHANNELS):
        raise AudioDecodeError(f"implausible channel count {channels} in the header (accepted: 1-{MAX_CHANNELS})", name)
    if max_seconds is not None and frames is not None and frames > 0 and frames / rate > max_seconds:
        raise AudioTooLong(f"the audio lasts {_duration(frames / rate)}, longer than the {_duration(max_seconds)} limit", name)


# --- libsndfile ---------------------------------------------------------------------------------------

_SMALL_INT_SUBTYPES = {"PCM_16", "PCM_S8", "PCM_U8"}
_ONE_SHOT_SAMPLES = 1 << 25  # above this many samples (128 MiB as float32) read in blocks


def _decode_soundfile(path: str | None, data: bytes | None, max_seconds: float | None, name: str | None) -> _Raw:
    """Decode with libsndfile, which reads a WAV/AIFF/MP3/Ogg cut short up to its last whole sample."""
    import soundfile as sf

    with sf.SoundFile(path if path is not None else io.BytesIO(data)) as f:
        rate, channels, frames, container = f.samplerate, f.channels, f.frames, f.format
        _check_header(rate, channels, frames, max_seconds, name)
        log = f.extra_info or ""
        if frames == 0 and _UNFINISHED_DATA_CHUNK.search(log):
            raise _NeedsFFmpeg(
                "header: the WAV header gives the audio length as 0 bytes, as a recorder that stopped before finishing "
                "the file leaves it; the audio was read to the end of the file"
            )
        notes = _chunk_size_notes(log)
        y = _read_frames(f, frames, channels)
    if frames > 0 and len(y) < frames * 0.99 - 1:  # MP3: the length in a Xing/LAME header
        notes.append(f"truncated: the header announces {_duration(frames / rate)} of audio but only {_duration(len(y) / rate)} could be decoded")
    if container == "OGG":
        notes += _ogg_end_notes(path, data)
    return _Raw(y, rate, notes)


def _read_frames(f, frames: int, channels: int) -> np.ndarray:
    # 8/16-bit sources are read as int16 and scaled by us: ~20 % faster than float reads.
    dtype = "int16" if f.subtype in _SMALL_INT_SUBTYPES else "float32"
    if frames * channels <= _ONE_SHOT_SAMPLES:
        return f.read(dtype=dtype, always_2d=True)
    # A header can claim any length; reading in blocks allocates only what really decodes.
    blocks = list(f.blocks(blocksize=_ONE_SHOT_SAMPLES // channels, dtype=dtype, always_2d=True))
    return np.concatenate(blocks) if blocks else np.zeros((0, channels), dtype)


def _chunk_size_notes(log: str) -> list[str]:
    """A warning when libsndfile found a WAV 'data' / AIFF 'SSND' chunk longer than the file."""
    m = _TRUNCATED_CHUNK.search(log)
    if not m:
        return []
    chunk, declared, present = m.group(1), int(m.group(2)), int(m.group(3))
    if declared in _UNKNOWN_SIZES or declared <= present:
        return []
    if chunk == "SSND":  # the chunk's size counts its 8-byte offset and block-size fields too
        declared, present = declared - 8, max(present - 8, 0)
    there = f"only {present:,} {'is' if present == 1 else 'are'} present" if present else "none are present"
    return [f"truncated: the header announces {declared:,} bytes of audio but {there}"]


def _ogg_end_notes(path: str | None, data: bytes | None) -> list[str]:
    """libsndfile decodes an Ogg stream cut short without a word; its pages show the cut.

    Walks the page headers (27 bytes + segment table each) to the end of the file.
    """
    with _open_bytes(path, data) as fh:
        size = fh.seek(0, io.SEEK_END)
        pos, flags = 0, 0
        while pos < size:
            fh.seek(pos)
            head = fh.read(27)
            if not (head.startswith(b"OggS") or b"OggS".startswith(head)):
                return []  # not a page where one should start: trailing data we do not judge
            if len(head) < 27 or pos + 27 + head[26] > size:
                return ["truncated: the Ogg stream ends in the middle of a page (the file was cut short)"]
            table = fh.read(head[26])
            pos, flags = pos + 27 + len(table) + sum(table), head[5]
    if pos > size:
        return ["truncated: the Ogg stream ends in the middle of a page (the file was cut short)"]
    if not flags & 0x04:
        return ["truncated: the Ogg stream ends without its end-of-stream mark (the file was cut short)"]
    return []


# --- ffmpeg -------------------------------------------------------------------------------------------


def _frame_to_array(frame) -> np.ndarray:
    """One PyAV AudioFrame -> (n, C) float32."""
    a = frame.to_ndarray()
    fmt = frame.format
    channels = len(frame.layout.channels)
    if fmt.is_planar:
        a = a.T  # (C, n) -> (n, C)
    else:
        a = a.reshape(-1, channels)
    kind = a.dtype
    if kind == np.int16:
        return a.astype(np.float32) / 32768.0
    if kind == np.int32:
        return (a / 2147483648.0).astype(np.float32)
    if kind == np.uint8:
        return (a.astype(np.float32) - 128.0) / 128.0
    if kind == np.int64:
        return (a / 9223372036854775808.0).astype(np.float32)
    return a.astype(np.float32, copy=False)


def _decode_ffmpeg(path: str | None, data: bytes | None, max_seconds: float | None, name: str | None) -> _Raw:
    import av

    try:
        container = av.open(path if path is not None else io.BytesIO(data), mode="r")
    except av.FFmpegError as e:
        raise AudioDecodeError(f"the file is damaged or truncated ({_ffmpeg_reason(e)})", name) from None
    with container:
        streams = container.streams.audio
        if not streams:
            raise UnsupportedAudioFormat("the file holds no audio stream", name)
        stream = streams[0]
        rate = stream.codec_context.sample_rate or stream.rate or 0
        channels = stream.codec_context.channels or 0
        _check_header(rate, channels or 1, None, max_seconds, name)
        announced = _announced_seconds(container, stream)
        reader = _PacketReader(max_seconds, name)
        reader.read(container, stream)
    return reader.result(announced, max(channels, 1))


class _PacketReader:
    """Decodes one ffmpeg audio stream packet by packet, as the ffmpeg tool does.

    A packet that does not decode (the incomplete last one of a file cut short, a damaged
    one in the middle) is dropped and counted instead of ending the file, so the audio
    around it is kept; the counts become warnings.
    """

    def __init__(self, max_seconds: float | None, name: str | None):
        self.max_seconds, self.name = max_seconds, name
        self.runs: list[tuple[int, int, float, list[np.ndarray]]] = []  # (rate, channels, start_s, frames) of one format
        self.seconds = 0.0  # decoded so far
        self.failures: list[tuple[float, str]] = []  # (time_s, reason) of each packet that did not decode
        self.stopped: str | None = None  # why reading the container stopped before its end

    def read(self, container, stream) -> None:
        import av

        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:
                self.stopped = _ffmpeg_reason(e)
                return
            self._decode(packet)

    def _decode(self, packet) -> None:
        import av

        # A demuxer flags a packet cut off by the end of the file; only PCM decodes a part of one honestly.
        if packet.size and packet.is_corrupt and not packet.stream.codec_context.name.startswith("pcm_"):
            self.failures.append((self.seconds, "incomplete packet"))
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            self.failures.append((self.seconds, _ffmpeg_reason(e)))
            return
        for frame in frames:
            a = _frame_to_array(frame)
            if not self.runs or self.runs[-1][:2] != (frame.sample_rate, a.shape[1]):
                self.runs.append((frame.sample_rate, a.shape[1], self.seconds, []))
            self.runs[-1][3].append(a)
            self.seconds += len(a) / frame.sample_rate
            if self.max_seconds is not None and self.seconds > self.max_seconds:
                raise AudioTooLong(f"the audio is longer than the {_duration(self.max_seconds)} limit", self.name)

    def result(self, announced: float | None, channels: int) -> _Raw:
        if not self.runs:
            if self.failures or self.stopped:
                reason = self.failures[0][1] if self.failures else self.stopped
                raise AudioDecodeError(f"the audio stream cannot be decoded ({reason})", self.name)
            if announced:
                raise AudioDecodeError(f"the file is truncated: it announces {_duration(announced)} of audio but holds none", self.name)
            return _Raw(np.zeros((0, channels), np.float32), 0, [])
        rate, first_channels = self.runs[0][:2]
        _check_header(rate, first_channels, None, None, self.name)
        y, notes = _join_runs(self.runs)
        return _Raw(y, rate, self._loss_notes(announced) + notes)

    def _loss_notes(self, announced: float | None) -> list[str]:
        inner = [t for t, _ in self.failures if t < self.seconds]
        notes = []
        if inner:
            blocks = "1 block of audio" if len(inner) == 1 else f"{len(inner)} blocks of audio"
            notes.append(f"damaged: {blocks} could not be decoded and {'was' if len(inner) == 1 else 'were'} skipped (the first at {_duration(inner[0])})")
        if announced and self.seconds < 0.98 * announced - 0.1:
            notes.append(f"truncated: the file announces {_duration(announced)} of audio but only {_duration(self.seconds)} could be decoded")
        elif len(inner) < len(self.failures):
            notes.append("truncated: the file ends in the middle of a block of audio, which was dropped")
        elif self.stopped:
            notes.append(f"truncated: the file cannot be read past {_duration(self.seconds)} ({self.stopped})")
        return notes


def _join_runs(runs) -> tuple[np.ndarray, list[str]]:
    """Concatenate runs of frames in the first run's format, as ffmpeg's tool converts a stream that changes.

    A run with another channel count is mixed to mono and copied to each channel; one at another rate
    is resampled (soxr HQ).
    """
    rate, channels = runs[0][:2]
    parts, changes = [], []
    for run_rate, run_channels, start, frames in runs:
        a = np.concatenate(frames)
        if run_channels != channels:
            a = np.repeat(a.mean(axis=1, keepdims=True), channels, axis=1)
        if run_rate != rate:
            a = resample(a.T, run_rate, rate).T
        parts.append(a)
        if len(parts) > 1:
            changes.append((start, run_rate, run_channels))
    if not changes:
        return parts[0], []
    start, new_rate, new_channels = changes[0]
    more = f" ({len(changes)} changes in all)" if len(changes) > 1 else ""
    note = (
        f"format_change: at {_duration(start)} the stream changes from {_format(rate, channels)} to "
        f"{_format(new_rate, new_channels)}{more}; the audio after it was converted to {_format(rate, channels)}"
    )
    return np.concatenate(parts), [note]


def _format(rate: int, channels: int) -> str:
    return f"{rate:,} Hz, {channels} channel{'s' if channels > 1 else ''}"


def _announced_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        import av

        return container.duration / av.time_base
    return None


def _ffmpeg_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).split(";")[0].strip().rstrip(".")


# --- both ---------------------------------------------------------------------------------------------


def _decode(path: str | None, data: bytes | None, max_seconds: float | None, name: str | None) -> _Raw:
    import soundfile as sf

    sf_error, notes = None, []
    try:
        return _decode_soundfile(path, data, max_seconds, name)
    except AudioDecodeError:
        raise
    except _NeedsFFmpeg as e:
        notes = [e.note]
    except (sf.LibsndfileError, RuntimeError, EOFError) as e:
        sf_error = str(getattr(e, "error_string", "") or e)
    with _open_bytes(path, data) as fh:
        kind = _sniff(fh.read(64))
    if kind is None:
        raise UnsupportedAudioFormat(f"not a recognised audio format (supported: {_FORMAT_NAMES})", name)
    try:
        raw = _decode_ffmpeg(path, data, max_seconds, name)
    except (AudioTooLong, UnsupportedAudioFormat):
        raise
    except AudioDecodeError as e:
        if sf_error is not None and kind in _SOUNDFILE_KINDS:
            # libsndfile's message is the more precise one for its own formats.
            raise AudioDecodeError(f"the {kind.upper()} file is damaged or truncated ({_sndfile_reason(sf_error)})", name) from None
        raise e from None
    return raw._replace(notes=notes + raw.notes)


def _sndfile_reason(msg: str) -> str:
    # "Error opening <_io.BytesIO ...>: Supported file format but file is malformed." -> the part after the colon.
    msg = msg.split(">:", 1)[-1] if ">:" in msg else msg.split(": ", 1)[-1] if msg.startswith("Error opening") else msg
    msg = msg.replace("Error :", "").strip().rstrip(".")
    if not msg or "does not exist" in msg or "not a regular file" in msg:
        return "no valid audio frames"  # libsndfile's wording for a cut-off MP3 header is misleading
    return msg


def _to_float(y: np.ndarray, mono: bool, name: str | None) -> np.ndarray:
    """(n, C) int16 or float32 -> float32 (n,) channel mean, or (C, n)."""
    if y.dtype == np.int16:
        scale = np.float32(1.0 / 32768.0)
    else:
        scale = np.float32(1.0)
        if not np.isfinite(y).all():
            raise AudioDecodeError("the audio contains non-finite samples (NaN or infinity)", name)
    if not mono:
        return np.ascontiguousarray(y.T, dtype=np.float32) * scale
    # Summing columns one by one is ~20x faster than y.mean(axis=1) on (n, C) data.
    out = y[:, 0].astype(np.float32)
    for c in range(1, y.shape[1]):
        out += y[:, c]
    out *= scale / np.float32(y.shape[1])
    return out


def _no_samples_reason(notes: list[str]) -> str:
    for note in notes:
        kind, text = note.split(": ", 1)
        if kind == "truncated":
            return f"the file is truncated: {text}"
    return "the file contains no audio samples"


# --- public -------------------------------------------------------------------------------------------


def decode_audio(
    source: AudioInput,
    target_sr: int | None = 32000,
    mono: bool = True,
    max_seconds: float | None = MAX_DURATION_S,
) -> DecodedAudio:
    """Decode a clip into float32 samples in [-1, 1] at ``target_sr``, with the decoder's warnings.

    source: a path, the file's bytes, or a binary file object (read to its end).
    target_sr: output rate (soxr HQ resampling); None keeps the file's rate.
    mono: average the channels -> samples (n,); otherwise (C, n).
    max_seconds: refuse longer audio with AudioTooLong (None: no limit).

    A file cut short, or with damaged blocks, is decoded as far as it goes and
    ``warnings`` says so (see WARNING_KINDS). Raises UnsupportedAudioFormat for input
    that is not audio we know, AudioTooLong over the limit, AudioDecodeError when no
    audio can be had (empty, no samples, nothing but a header, undecodable stream,
    NaN/inf samples, absurd sample rate or channel count).
    """
    name = _describe(source)
    path, data = _read_input(source)
    y, rate, notes = _decode(path, data, max_seconds, name)  # (n, C)
    if y.shape[0] == 0:
        raise AudioDecodeError(_no_samples_reason(notes), name)
    samples = _to_float(y, mono, name)
    if target_sr is not None and rate != target_sr:
        samples = resample(samples, rate, target_sr)
    return DecodedAudio(samples, int(target_sr or rate), int(rate), y.shape[1], notes)


def _issue_warnings(decoded: DecodedAudio, source, stacklevel: int) -> None:
    name = _describe(source)
    for note in decoded.warnings:
        warnings.warn(AudioDecodeWarning(f"{name}: {note}" if name else note), stacklevel=stacklevel + 1)


def load_audio(
    source: AudioInput,
    target_sr: int | None = 32000,
    mono: bool = True,
    max_seconds: float | None = MAX_DURATION_S,
) -> np.ndarray:
    """:func:`decode_audio`'s samples alone; its warnings are issued as AudioDecodeWarning."""
    decoded = decode_audio(source, target_sr=target_sr, mono=mono, max_seconds=max_seconds)
    _issue_warnings(decoded, source, stacklevel=2)
    return decoded.samples


def load_audio_with_rate(source: AudioInput, mono: bool = True, max_seconds: float | None = MAX_DURATION_S) -> tuple[np.ndarray, int]:
    """Like :func:`load_audio` without resampling; returns (samples, the file's rate)."""
    decoded = decode_audio(source, target_sr=None, mono=mono, max_seconds=max_seconds)
    _issue_warnings(decoded, source, stacklevel=2)
    return decoded.samples, decoded.sample_rate


def load_audio_tensor(source: AudioInput, target_sr: int | None = 32000, mono: bool = True, max_seconds: float | None = MAX_DURATION_S):
    """:func:`load_audio` returning a torch float32 tensor."""
    import torch

    decoded = decode_audio(source, target_sr=target_sr, mono=mono, max_seconds=max_seconds)
    _issue_warnings(decoded, source, stacklevel=2)
    return torch.from_numpy(decoded.samples)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr HQ resampling along the last axis; float32 in, float32 out."""
    import soxr

    if orig_sr == target_sr:
        return y.astype(np.float32, copy=False)
    if not (MIN_SAMPLE_RATE <= target_sr <= MAX_SAMPLE_RATE):
        raise ValueError(f"target sample rate {target_sr} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        return soxr.resample(y, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(soxr.resample(y.T, orig_sr, target_sr, quality="HQ").T, dtype=np.float32)


def pad_or_trim(x, n: int):
    """Zero-pad at the end or cut the last axis to exactly ``n`` samples (numpy or torch)."""
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    length = x.shape[-1]
    if length == n:
        return x
    if length > n:
        return x[..., :n]
    if isinstance(x, np.ndarray):
        pad = np.zeros(x.shape[:-1] + (n - length,), dtype=x.dtype)
        return np.concatenate([x, pad], axis=-1)
    import torch.nn.functional as F

    return F.pad(x, (0, n - length))
