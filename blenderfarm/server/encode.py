"""The server encodes a job's video itself when no online node has FFmpeg.

The work is ``blenderfarm/ffmpeg.py``, shared with the nodes' encode tasks: the frames
are the blob files (named by hash, in frame order), the video lands in ``out_dir``
under its settings' name. It never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import ffmpeg
from ..protocol import video
from ..protocol.video import EncodeError, VideoSettings

__all__ = ["EncodeError", "encode_on_server", "server_ffmpeg"]

#: the version of FFmpeg on the server's PATH, "" none (blocks: call it in a thread)
server_ffmpeg = ffmpeg.probe_ffmpeg


async def encode_on_server(settings: VideoSettings, frame_paths: list[Path], out_dir: Path, *,
                           on_progress: Callable[[float], None],
                           watchdog: float | None = video.DEFAULT_WATCHDOG) -> Path:
    """Encode ``frame_paths`` (in frame order) into ``out_dir / settings.output`` and
    return that path; EncodeError (one sentence) when it cannot."""
    out = out_dir / settings.output
    await ffmpeg.encode(settings, [str(p) for p in frame_paths], str(out),
                        on_progress=on_progress, watchdog=watchdog,
                        missing="No node and not the server has FFmpeg: install the ffmpeg "
                                "package on one of them.")
    return out
