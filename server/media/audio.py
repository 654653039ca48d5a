"""Audio in: WAV/FLAC/OGG (soundfile) -> mono float32 at the model's rate, band-limited resampling.

The cost of a decode follows from header values checked against `AudioLimits` before the work: the
format (by its magic bytes, then as libsndfile reports it), the sample rate, the channels and the
duration. Resampling then costs memory within a fixed budget, whatever the two rates are.
Everything here is CPU work: call it off the event loop. Bad input raises `ServeError`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from server.errors import ErrorCode, ServeError
from server.limits import DEFAULT_LIMITS, MIN_AUDIO_SAMPLE_RATE, AudioLimits

READ_FRAMES = 65_536  # source frames read (and mixed to mono) at once, whatever the channel count
BLOCK_ELEMENTS = 2**19  # outputs x filter taps resampled at once: ~10 MB of indices, samples and weights
TABLE_ELEMENTS = 2**18  # phases x taps of a precomputed filter table; past it, weights are computed per block


def _is_wav(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WAVE"  # any WAVE format tag, WAVE_FORMAT_EXTENSIBLE included


# Setting name -> (magic test, the libsndfile major formats it may open as).
FORMATS: dict[str, tuple[Callable[[bytes], bool], frozenset[str]]] = {
    "WAV": (_is_wav, frozenset({"WAV", "WAVEX"})),
    "FLAC": (lambda data: data[:4] == b"fLaC", frozenset({"FLAC"})),
    "OGG": (lambda data: data[:4] == b"OggS", frozenset({"OGG"})),
}


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # (N,) float32 mono at the requested rate
    source_rate: int
    source_channels: int


def sniff_audio(data: bytes) -> str | None:
    """The format the magic bytes say `data` is ("WAV", "FLAC", "OGG"), or None."""
    return next((name for name, (matches, _) in FORMATS.items() if matches(data)), None)


def decode_audio(
    data: bytes, *, sample_rate: int, max_samples: int, limits: AudioLimits = DEFAULT_LIMITS.audio
) -> Audio:
    """An allowed audio file -> mono float32 at `sample_rate`, at most `max_samples` samples
    (only the span needed is decoded). Channels are averaged; other rates are resampled."""
    import soundfile

    if not data:
        raise ServeError(ErrorCode.INVALID_INPUT, "the audio part is empty")
    accepted = ", ".join(limits.formats)
    name = sniff_audio(data)
    if name is None or name not in limits.formats:
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"audio is not a file of an accepted format ({accepted})")
    try:
        sound = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError, EOFError):
        raise ServeError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"audio is not a readable {name} file") from None
    with sound:
        if sound.format not in FORMATS[name][1]:
            raise ServeError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f"audio starts as {name} but reads as {sound.format}; accepted formats: {accepted}",
            )
        rate, channels = sound.samplerate, sound.channels
        _check_header(rate, channels, sound.frames, limits)
        # Enough source samples for `max_samples` outputs plus the resampling filter's reach.
        wanted = math.ceil(max_samples * rate / sample_rate) + (
            0 if rate == sample_rate else filter_reach(rate, sample_rate)
        )
        mono = _read_mono(sound, min(wanted, sound.frames))
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
    return Audio(mono[:max_samples].numpy(), rate, channels)


def _check_header(rate: int, channels: int, frames: int, limits: AudioLimits) -> None:
    if rate < MIN_AUDIO_SAMPLE_RATE:
        raise ServeError(
            ErrorCode.INVALID_INPUT,
            f"audio header declares {rate} Hz; sample rates from "
            f"{MIN_AUDIO_SAMPLE_RATE} to {limits.max_sample_rate} Hz are accepted",
        )
    if rate > limits.max_sample_rate:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"audio header declares {rate} Hz; at most {limits.max_sample_rate} Hz is accepted (max_audio_sample_rate)",
        )
    if channels < 1:
        raise ServeError(ErrorCode.INVALID_INPUT, f"audio header declares {channels} channels")
    if channels > limits.max_channels:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"audio header declares {channels} channels; at most "
            f"{limits.max_channels} are accepted (max_audio_channels)",
        )
    if frames > limits.max_seconds * rate:
        raise ServeError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"audio is {frames / rate:.0f} s long; at most {limits.max_seconds:g} s are accepted (max_audio_seconds)",
        )


def _read_mono(sound: Any, frames: int) -> torch.Tensor:
    """The first `frames` frames mixed to mono, read a block at a time: (n,) float32."""
    import soundfile

    out = np.empty(frames, dtype=np.float32)
    done = 0
    while done < frames:
        try:
            block = sound.read(min(READ_FRAMES, frames - done), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
            raise ServeError(ErrorCode.INVALID_INPUT, f"audio could not be decoded: {str(exc)[:200]}") from None
        if not len(block):
            break  # the header promised more frames than the file holds
        if not np.isfinite(block).all():
            raise ServeError(ErrorCode.INVALID_INPUT, "audio contains NaN or infinite samples")
        out[done : done + len(block)] = torch.from_numpy(block).mean(dim=1).numpy()
        done += len(block)
    return torch.from_numpy(out[:done])


def filter_reach(orig_rate: int, new_rate: int, *, zero_crossings: int = 16, rolloff: float = 0.945) -> int:
    """Input samples each side of an output that the resampling filter reads."""
    return math.ceil(zero_crossings / (rolloff * min(1.0, new_rate / orig_rate)))


def resample(
    signal: torch.Tensor,
    orig_rate: int,
    new_rate: int,
    *,
    zero_crossings: int = 16,
    rolloff: float = 0.945,
    beta: float = 8.6,
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Band-limited resampling of (N,) samples -> (ceil(N * new / orig),).

    Output n sits at input time n * orig / new = whole + phase / new; it is the input
    convolved with a Kaiser-windowed sinc centred there, cut off at `rolloff` x the lower of
    the two Nyquist rates (so downsampling does not alias). The filter depends only on the
    phase, of which there are new / gcd(orig, new) (160 for 44.1 -> 48 kHz): one table when
    it is small, else the weights of each block are computed for its own phases.

    Memory is within `block_elements` (outputs x taps per block, taps split when one output's
    filter alone is wider) and the table, whatever the rates: the filter widens as orig / new.
    """
    if orig_rate == new_rate:
        return signal
    n = signal.shape[0]
    cutoff = rolloff * min(1.0, new_rate / orig_rate)  # relative to the input's Nyquist rate
    half_width = filter_reach(orig_rate, new_rate, zero_crossings=zero_crossings, rolloff=rolloff)
    step = math.gcd(orig_rate, new_rate)
    width = 2 * half_width  # taps run from -half_width + 1 to half_width, as offsets from `whole`
    scale = torch.special.i0(torch.tensor(beta, dtype=torch.float64))

    def weights(phases: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """(len(phases), last - first) float32 filter weights of taps [first, last) at phases (in 1 / new)."""
        taps = torch.arange(first - half_width + 1, last - half_width + 1)
        offset = phases[:, None] - taps[None, :].double()  # output time - input time
        window = torch.special.i0(beta * (1 - (offset / half_width).clamp(-1, 1) ** 2).sqrt())
        return (cutoff * torch.sinc(cutoff * offset) * window / scale).to(torch.float32)

    table = None
    if (new_rate // step) * width <= TABLE_ELEMENTS:
        table = weights(torch.arange(0, new_rate, step, dtype=torch.float64) / new_rate, 0, width)  # (P, 2W)
    source_signal = signal.float()
    span = min(width, block_elements)  # taps per pass
    # Outputs per block; computing weights takes several float64 temporaries per element: a quarter as many.
    rows = max(1, (block_elements if table is not None else block_elements // 4) // span)
    out_len = math.ceil(n * new_rate / orig_rate)
    out = torch.empty(out_len, dtype=torch.float32)
    for start in range(0, out_len, rows):
        scaled = torch.arange(start, min(start + rows, out_len), dtype=torch.int64) * orig_rate
        whole, phase = scaled // new_rate, (scaled % new_rate) // step
        total = None
        for first in range(0, width, span):
            last = min(first + span, width)
            source = whole[:, None] + torch.arange(first - half_width + 1, last - half_width + 1)[None, :]
            inside = (source >= 0) & (source < n)  # the filter reads zeros past both ends
            values = torch.where(inside, source_signal[source.clamp(0, max(n - 1, 0))], 0.0)
            w = (
                table[phase, first:last]
                if table is not None
                else weights((phase * step).double() / new_rate, first, last)
            )
            part = (values * w).sum(dim=1)
            total = part if total is None else total + part
        assert total is not None
        out[start : start + len(scaled)] = total
    return out.to(signal.dtype)
