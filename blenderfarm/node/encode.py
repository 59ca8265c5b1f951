"""The node's encode task: FFmpeg turns a job's frames into its video.

The work is ``blenderfarm/ffmpeg.py``, shared with the server's own encodes; this is
the node's name for it, and the sentence it fails with where the node has no FFmpeg.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import ffmpeg
from ..protocol import video
from ..protocol.video import EncodeError, VideoSettings

__all__ = ["EncodeError", "encode", "probe_ffmpeg"]

probe_ffmpeg = ffmpeg.probe_ffmpeg


async def encode(settings: VideoSettings, frames: list[str], out_path: str, *,
                 on_progress: Callable[[float], None],
                 watchdog: float | None = video.DEFAULT_WATCHDOG) -> None:
    """Encode ``frames`` (paths, in frame order) into ``out_path`` (``ffmpeg.encode``)."""
    await ffmpeg.encode(settings, frames, out_path, on_progress=on_progress,
                        watchdog=watchdog,
                        missing="This node has no FFmpeg (install the ffmpeg package).")
