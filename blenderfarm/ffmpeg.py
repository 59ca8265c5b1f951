"""FFmpeg on this machine: its version, and a supervised encode of frames into a video.

One implementation for both sides that encode: a node's encode task (``node/agent.py``)
and the server's own encode where no online node has FFmpeg (``server/encode.py``).
It imports only ``protocol`` (where every decision is: ``protocol/video.py``), never
the server or the node, which both import it.

:func:`encode` links the frames (in frame order) as numbered files in a temporary
folder next to the output, runs the command ``protocol.video`` builds, and supervises
FFmpeg as ``node/runner_proc`` supervises Blender: its own process group, stdin closed,
stderr kept as a tail for the error report, every wait bounded by the watchdog, the
whole group killed on cancel, on the watchdog and in ``finally`` (and by the kernel
when its parent dies), so no FFmpeg outlives its task. It trusts the file, not the exit
code: the video must exist, be non-empty and (where ffprobe is installed) hold a stream
of the codec asked for with one packet per frame. It is written under a temporary name
and renamed into place, so an interrupted encode never leaves half a video at
``out_path``. The settings were checked by ``VideoSettings.from_dict``; the caller
decides where the file goes. It never blocks the event loop.
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

from .protocol import video
from .protocol.video import EncodeError, VideoSettings

__all__ = ["EncodeError", "encode", "probe_ffmpeg"]

#: whose FFmpeg is missing, in the sentence an encode without one fails with
NO_FFMPEG_HERE = "This machine has no FFmpeg (install the ffmpeg package)."

PROBE_TIMEOUT = 10.0  # seconds `ffmpeg -version` may take (ffprobe: six times that)
MAX_LINE = 1 << 20  # bytes; FFmpeg's lines are short, a longer one ends the reading
_PR_SET_PDEATHSIG = 1


def probe_ffmpeg() -> str:
    """The version of ``ffmpeg`` on PATH ("5.1.6-0+deb12u1"); "" when there is none or it
    does not answer within PROBE_TIMEOUT. Blocks: call it from a thread."""
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


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL FFmpeg when its parent (the node's agent, the
    server) dies, even by -9."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _heads(frames: list[str]) -> list[bytes | None]:
    heads: list[bytes | None] = []
    for path in frames:
        try:
            with open(path, "rb") as f:
                heads.append(f.read(video.HEAD_BYTES))
        except OSError:
            heads.append(None)
    return heads


def _link(frames: list[str], folder: str, ext: str) -> None:
    for i, path in enumerate(frames):
        os.symlink(os.path.abspath(path), os.path.join(folder, video.link_name(i, ext)))


async def encode(settings: VideoSettings, frames: list[str], out_path: str, *,
                 on_progress: Callable[[float], None],
                 watchdog: float | None = video.DEFAULT_WATCHDOG,
                 missing: str = NO_FFMPEG_HERE) -> None:
    """Encode ``frames`` (paths, in frame order) into ``out_path`` as ``settings`` say;
    ``on_progress`` gets the fraction done. Raises EncodeError (one sentence, a reason
    from ``protocol.video``); on cancel, FFmpeg is killed and CancelledError goes on."""
    ffmpeg = await asyncio.to_thread(shutil.which, "ffmpeg")
    if ffmpeg is None:
        raise EncodeError(missing, video.NO_FFMPEG, True)
    ext = video.input_extension(frames, await asyncio.to_thread(_heads, frames))
    out_dir = os.path.dirname(out_path) or os.curdir  # callers give absolute paths
    work = await asyncio.to_thread(tempfile.mkdtemp, prefix=".encode-", dir=out_dir)
    try:
        await asyncio.to_thread(_link, frames, work, ext)
        part = os.path.join(work, "video." + settings.extension)
        args = video.ffmpeg_args(settings, video.input_pattern(ext), part)
        await _run([ffmpeg, *args[1:]], work, len(frames), on_progress, watchdog)
        await _check(settings, part, len(frames))
        await asyncio.to_thread(os.replace, part, out_path)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


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
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    except OSError as exc:
        raise EncodeError(f"Could not start FFmpeg: {exc.strerror}.", video.NO_FFMPEG, True) from exc

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
