"""Media files in and out: images (`image`), video (`video`: .npy/.npz frame arrays, mp4/webm/avi through
PyAV), audio (`audio`: WAV/FLAC/OGG through soundfile, resampling), and the files answers are written as
(`encoders`: mp4, wav); flow fields have their own formats (`flow`). Every limit a decoder applies is a
setting, passed in as `ImageLimits` / `VideoLimits` / `AudioLimits` (`server.limits`).

Everything here is CPU work: call it off the event loop. Bad input raises `ServeError`
(413 over a limit, 415 a format that is not accepted or not readable, 422 a corrupt or ill-shaped file).
"""

from __future__ import annotations

from server.media.audio import Audio, decode_audio, filter_reach, resample, sniff_audio
from server.media.encoders import pyav_available, write_mp4, write_wav
from server.media.image import decode_image, probe_image
from server.media.video import Video, decode_clip, decode_video, fit_frames, sniff_container

__all__ = [
    "Audio",
    "Video",
    "decode_audio",
    "decode_clip",
    "decode_image",
    "decode_video",
    "filter_reach",
    "fit_frames",
    "probe_image",
    "pyav_available",
    "resample",
    "sniff_audio",
    "sniff_container",
    "write_mp4",
    "write_wav",
]
