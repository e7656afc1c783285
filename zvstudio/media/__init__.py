"""Media I/O on PyAV: probing, frame-exact reading, preview proxies and export with audio."""

from zvstudio.media.probe import AudioStreamInfo, FrameIndex, MediaInfo, probe
from zvstudio.media.proxy import Proxy, build_proxy, proxy_path
from zvstudio.media.reader import FrameCache, VideoReader, fit_size
from zvstudio.media.sequence import (
    clip_audio_file,
    clip_exists,
    clip_hash,
    clip_label,
    clip_title,
    sequence_path,
)
from zvstudio.media.writer import (
    FORMATS,
    AudioSource,
    ExportSettings,
    FrameTiming,
    VideoWriter,
    check_output,
    format_for,
    output_kind,
)

__all__ = [
    "FORMATS",
    "AudioSource",
    "AudioStreamInfo",
    "ExportSettings",
    "FrameCache",
    "FrameIndex",
    "FrameTiming",
    "MediaInfo",
    "Proxy",
    "VideoReader",
    "VideoWriter",
    "build_proxy",
    "check_output",
    "clip_audio_file",
    "clip_exists",
    "clip_hash",
    "clip_label",
    "clip_title",
    "fit_size",
    "format_for",
    "output_kind",
    "probe",
    "proxy_path",
    "sequence_path",
]
