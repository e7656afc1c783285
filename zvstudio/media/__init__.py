"""Media I/O on PyAV: probing, frame-exact reading, preview proxies and export with audio."""

from zvstudio.media.probe import AudioStreamInfo, FrameIndex, MediaInfo, probe
from zvstudio.media.proxy import Proxy, build_proxy, proxy_path
from zvstudio.media.reader import FrameCache, VideoReader, fit_size
from zvstudio.media.writer import (
    FORMATS,
    AudioSource,
    ExportSettings,
    FrameTiming,
    VideoWriter,
    check_output,
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
    "fit_size",
    "output_kind",
    "probe",
    "proxy_path",
]
