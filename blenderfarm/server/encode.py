"""The server encodes a job's video itself when no online node has FFmpeg.

:func:`encode_on_server` is the twin of the node's ``node/encode.py``: the frames (blob
files, named by hash, in frame order) are linked as numbered files in a temporary
folder under ``out_dir``, FFmpeg runs the command ``protocol.video`` builds in its own
process group with stdin closed, its stderr kept as a tail, killed on cancel, on the
watchdog and in ``finally``; the file is checked (exists, non-empty, ffprobe's codec
and packet count) and renamed into place, so an interrupted encode leaves no half
video. Everything the two decide is in ``protocol/video.py``; only the small process
part is written twice, because the server never imports the node (nor the node the
server) and ``protocol`` does no I/O.

It must never block the event loop: file work goes to threads, FFmpeg runs as an
asyncio subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from ..protocol import video
from ..protocol.video import EncodeError, VideoSettings

PROBE_TIMEOUT = 10.0  # seconds `ffmpeg -version` may take (ffprobe: six times that)
MAX_LINE = 1 << 20  # bytes; FFmpeg's lines are short, a longer one ends the reading
_PR_SET_PDEATHSIG = 1


def server_ffmpeg() -> str:
    """The version of ``ffmpeg`` on the server's PATH, "" when there is none or it does
    not answer within PROBE_TIMEOUT. Blocks: call it from a thread (``asyncio.to_thread``)."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return ""
    try:
        proc = subprocess.run([exe, "-hide_banner", "-version"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace",
                              timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return video.parse_version(proc.stdout) if proc.returncode == 0 else ""


def _die_with_server() -> None:
    """preexec_fn: have the kernel SIGKILL FFmpeg when the server dies, even by -9."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        os._exit(1)


def _heads(frames: list[Path]) -> list[bytes | None]:
    heads: list[bytes | None] = []
    for path in frames:
        try:
            with open(path, "rb") as f:
                heads.append(f.read(video.HEAD_BYTES))
        except OSError:
            heads.append(None)
    return heads


def _link(frames: list[Path], folder: str, ext: str) -> None:
    for i, path in enumerate(frames):
        os.symlink(os.path.abspath(path), os.path.join(folder, video.link_name(i, ext)))


async def encode_on_server(settings: VideoSettings, frame_paths: list[Path], out_dir: Path, *,
                           on_progress: Callable[[float], None],
                           watchdog: float | None = video.DEFAULT_WATCHDOG) -> Path:
    """Encode ``frame_paths`` (in frame order) into ``out_dir / settings.output`` and
    return that path; ``on_progress`` gets the fraction done. Raises EncodeError (one
    sentence, a reason from ``protocol.video``); on cancel, FFmpeg is killed and
    CancelledError goes on."""
    ffmpeg = await asyncio.to_thread(shutil.which, "ffmpeg")
    if ffmpeg is None:
        raise EncodeError("No node and not the server has FFmpeg: install the ffmpeg "
                          "package on one of them.", video.NO_FFMPEG, True)
    ext = video.input_extension([str(p) for p in frame_paths],
                                await asyncio.to_thread(_heads, frame_paths))
    out = out_dir / settings.output
    work = await asyncio.to_thread(tempfile.mkdtemp, prefix=".encode-", dir=out_dir)
    try:
        await asyncio.to_thread(_link, frame_paths, work, ext)
        part = os.path.join(work, "video." + settings.extension)
        args = video.ffmpeg_args(settings, video.input_pattern(ext), part)
        await _run([ffmpeg, *args[1:]], work, len(frame_paths), on_progress, watchdog)
        await _check(settings, part, len(frame_paths))
        await asyncio.to_thread(os.replace, part, out)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    return out


async def _run(args: list[str], cwd: str, total: int, on_progress: Callable[[float], None],
               watchdog: float | None) -> None:
    """Run FFmpeg to its end; EncodeError unless it exits 0."""
    tail: deque[str] = deque(maxlen=video.TAIL_LINES)
    loop = asyncio.get_running_loop()
    last = [loop.time()]  # the last sign of life: a progress or a message line
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=MAX_LINE,
            preexec_fn=_die_with_server if sys.platform.startswith("linux") else None)
    except OSError as exc:
        raise EncodeError(f"Could not start FFmpeg: {exc.strerror}.", video.NO_FFMPEG,
                          True) from exc

    async def progress() -> None:
        assert proc.stdout is not None
        with contextlib.suppress(ValueError):  # an over-long line: the watchdog decides
            while line := await proc.stdout.readline():
                last[0] = loop.time()
                done = video.progress_frame(line.decode("ascii", "replace"))
                if done is not None:
                    on_progress(min(1.0, done / total))

    async def messages() -> None:
        assert proc.stderr is not None
        with contextlib.suppress(ValueError):
            while line := await proc.stderr.readline():
                last[0] = loop.time()
                tail.append(line.decode("utf-8", "replace").rstrip())

    readers = [asyncio.create_task(progress()), asyncio.create_task(messages())]
    waiter = asyncio.create_task(proc.wait())
    try:
        while not waiter.done():
            timeout = None if watchdog is None else last[0] + watchdog - loop.time()
            if timeout is not None and timeout <= 0:
                raise EncodeError(f"FFmpeg showed no progress for {watchdog:g} s and was "
                                  "stopped.", video.WATCHDOG, True, "\n".join(tail))
            await asyncio.wait({waiter}, timeout=timeout)
        await asyncio.wait(readers, timeout=2)  # the last messages reach the tail
        if proc.returncode != 0:
            raise video.failure(proc.returncode or 0, "\n".join(tail))
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(waiter)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, waiter, return_exceptions=True)


async def _check(settings: VideoSettings, path: str, frames: int) -> None:
    """The file FFmpeg wrote exists, is not empty and (by ffprobe) is what was asked."""
    try:
        size = (await asyncio.to_thread(os.stat, path)).st_size
    except OSError:
        size = 0
    if size == 0:
        raise EncodeError("FFmpeg exited cleanly but wrote no video.", video.BAD_OUTPUT, True)
    ffprobe = await asyncio.to_thread(shutil.which, "ffprobe")
    if ffprobe is None:
        return  # nothing more to check with
    proc = await asyncio.create_subprocess_exec(
        ffprobe, *video.ffprobe_args(path)[1:], stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT * 6)
    except TimeoutError:
        return  # a slow probe says nothing about the file
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    try:
        problem = video.check_probe(settings, json.loads(out), frames)
    except ValueError:
        problem = "ffprobe could not read the file FFmpeg wrote"
    if problem is not None:
        raise EncodeError(f"The video is wrong: {problem}.", video.BAD_OUTPUT, True)
