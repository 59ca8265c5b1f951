"""Supervising one persistent Blender that renders the tasks of one job.

:class:`Runner` starts ``blender -b --python runner/runner.py -- ... --blend JOB.blend``
(or, for a Python with the ``bpy`` module, ``python runner/runner.py -- ...``) in its own
process group, waits for the runner's hello on a loopback socket, then sends it
render commands and turns its JSON-line events into return values, callbacks and
:class:`RunnerError`. Blender stays alive between tasks of the same job.

A spare (``Runner.start(blender, None, ...)``) is a Blender with the runner and no
file, started ahead of need; :meth:`Runner.open` later loads a job's file into it, and
from then on its output goes to that job's log and it is a runner like any other.

Supervision follows the old Flamenco worker: stdin closed, stderr merged into
stdout, the output copied to a log file with the last lines kept for error reports,
every wait bounded, a negative return code reported by its signal's name, and
terminate -> wait -> kill of the whole process group on stop, in ``finally``, so no
Blender outlives its Runner. On Linux, Blender also gets PR_SET_PDEATHSIG=SIGKILL so
it dies with an agent that is itself killed with -9.

Blender 3.x passes no text to its ``render_stats`` handler, so this side also reads
the stats lines ("Fra:1 ... | Sample 2/4") from Blender's stdout and turns them into
the same ``progress`` events the runner sends from newer Blenders.

It must not decide about retries (it says ``retryable`` and the agent decides), must
not check output files (``outputs.py`` does), and must never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import secrets
import signal
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

from .blender import EXECUTABLE, MODULE

RUNNER_SCRIPT = os.path.join(os.path.dirname(__file__), "runner", "runner.py")
TAIL_LINES = 200
MAX_LINE = 1 << 20  # bytes; a longer line from the runner is a bug, not a message
STOP_GRACE = 5.0  # seconds Blender gets to quit, then again to terminate
PROGRESS_INTERVAL = 0.1  # at most ~10 progress callbacks a second
RUNNER_EXIT_CODE = 2  # Blender's exit code when the runner script raises (a module's: 1)
_BAD_BLEND = ("Cannot read file", "Failed to read blend file", "File format is not supported")
_STATS_LINE = re.compile(r"^Fra:(\d+)\s.*\|")
_TILES = re.compile(r"Rendered (\d+)/(\d+) Tiles")
_FRACTIONS = (
    re.compile(r"Sample (\d+)/(\d+)"),  # Cycles (of the tile being rendered, with tiles)
    re.compile(r"Rendering (\d+) / (\d+) samples"),  # Eevee
)
_PR_SET_PDEATHSIG = 1

EventCallback = Callable[[dict[str, Any]], None]


class RunnerError(Exception):
    """A task or a runner that failed; ``reason`` is machine-readable.

    Reasons: needs_denoise, needs_opengl, render_failed, no_output, bad_scene, bad_camera,
    bad_command, no_device, bad_input, tiles_engine, tiles_compositor, tiles_border,
    tiles_sequencer, tiles_denoise (from the runner); bad_blend, startup_failed, startup_timeout,
    crash, watchdog, not_running (from this side).
    """

    def __init__(self, message: str, reason: str, retryable: bool, log_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retryable = retryable
        self.log_tail = log_tail


def parse_fraction(stats: str) -> float | None:
    """The fraction done that a Blender stats line states, if it states one."""
    part = None
    for pattern in _FRACTIONS:
        m = pattern.search(stats)
        if m and int(m.group(2)) > 0:
            part = min(1.0, int(m.group(1)) / int(m.group(2)))
            break
    tiles = _TILES.search(stats)
    if tiles and int(tiles.group(2)) > 0:
        # "Rendered 11/16 Tiles, Sample 1/4000": the samples are the 12th tile's. A tile
        # whose samples are all done is counted by the next line's tiles: not twice.
        inside = part if part is not None and part < 1.0 else 0.0
        return min(1.0, (int(tiles.group(1)) + inside) / int(tiles.group(2)))
    return part


def _bad_blend(line: str, tail: str) -> RunnerError:
    """Blender's words about a file it cannot read, as one error."""
    detail = line.removeprefix("Error: ").strip()
    return RunnerError(f"Blender could not open the .blend file: {detail}", "bad_blend", False,
                       tail)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"Blender was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"Blender was killed by signal {-returncode}"
    return f"Blender exited with code {returncode}"


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL Blender when the agent dies, even by -9."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the agent died before prctl took effect
        os._exit(1)


def blender_command(blender: str, blend_path: str | None, port: int, secret: str,
                    allow_scripts: bool, kind: str = EXECUTABLE) -> list[str]:
    """Blender with no file, the runner and the .blend it opens: loaded by the runner
    (``--blend``), by a path relative to the job's folder where it is under it, so a
    burned-in stamp and an image's "File" show the project's path on every node (a
    file named on Blender's command line is made absolute), and loaded once. Without
    ``blend_path``, a spare: the runner waits for an ``open`` command.

    ``kind`` MODULE: ``blender`` is a Python with the ``bpy`` module, which runs the
    runner as its script (``-u``: its lines reach the log as they are printed). Either
    way the runner gets the same arguments after ``--``, scripts on or off among them
    (``--scripts``): the module has no ``--enable-autoexec``, the runner sets the
    preference it stands for."""
    runner_args = ["--", "--port", str(port), "--secret", secret,
                   *(["--scripts"] if allow_scripts else []),
                   *(["--blend", blend_path] if blend_path is not None else [])]
    if kind == MODULE:
        return [blender, "-u", RUNNER_SCRIPT, *runner_args]
    return [
        blender, "-b",
        "--enable-autoexec" if allow_scripts else "--disable-autoexec",
        "--python-exit-code", str(RUNNER_EXIT_CODE),
        "--python", RUNNER_SCRIPT, *runner_args,
    ]


class Runner:
    """One Blender process with the runner script and one .blend loaded (or, a spare,
    none yet)."""

    def __init__(self, log: BinaryIO) -> None:
        self._secret = secrets.token_hex(16)
        self._log = log
        self._old_logs: list[BinaryIO] = []  # a spare's log, closed with the rest in _close()
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._exit_task: asyncio.Task[int] | None = None
        self._getter: asyncio.Task[dict[str, Any]] | None = None
        self._eof = False
        self._killed = False
        self._busy = False
        self._last_activity = asyncio.get_running_loop().time()
        self._last_progress = 0.0
        self._frame: int | None = None  # the frame being rendered, for progress
        self.hello: dict[str, Any] = {}
        #: the ``info`` of the last task's task_done ({} where it had none)
        self.last_info: dict[str, Any] = {}
        #: called with each line Blender prints (the agent forwards them as live logs)
        self.on_log: Callable[[str], None] | None = None

    # --- starting ------------------------------------------------------------------------

    @classmethod
    async def start(cls, blender: str, blend_path: str | None, *, cwd: str, log_path: str,
                    kind: str = EXECUTABLE, allow_scripts: bool = False,
                    startup_timeout: float = 120) -> Runner:
        """Start Blender on ``blend_path`` (None: a spare, see :meth:`open`) and return
        once its runner said hello. ``kind`` is the probe's (``BlenderInfo.kind``):
        EXECUTABLE (``blender -b``) or MODULE (a Python with ``bpy``)."""
        # the log is closed in _close(); file I/O goes to a thread, off the event loop
        log = await asyncio.to_thread(open, log_path, "ab")
        runner = cls(log)
        try:
            runner._server = await asyncio.start_server(
                runner._on_connect, "127.0.0.1", 0, limit=MAX_LINE)
            port = runner._server.sockets[0].getsockname()[1]
            cmd = blender_command(blender, blend_path, port, runner._secret, allow_scripts,
                                  kind)
            try:
                # PWD too: Blender 4.5 takes its working folder from it, and a stale
                # one (the agent's) made it look for the job's file in the wrong place
                runner._proc = await asyncio.create_subprocess_exec(
                    *cmd, cwd=cwd, env={**os.environ, "PWD": os.path.abspath(cwd)},
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            except OSError as exc:
                raise RunnerError(f"Could not start Blender ({blender}): {exc.strerror}.",
                                  "startup_failed", False) from exc
            assert runner._proc.stdout is not None
            pump = asyncio.create_task(runner._pump_log(runner._proc.stdout))
            runner._exit_task = asyncio.create_task(runner._watch_exit(pump))
            runner._tasks += [pump, runner._exit_task]
            await runner._wait_hello(startup_timeout)
        except BaseException:
            await runner._close()
            raise
        return runner

    async def _wait_hello(self, timeout: float) -> None:
        assert self._exit_task is not None
        waiters: set[asyncio.Future[Any]] = {self._hello, self._exit_task}
        await asyncio.wait(waiters, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if self._hello.done():
            self.hello = self._hello.result()
            return
        if self._exit_task.done():
            raise self._startup_error(self._exit_task.result())
        raise RunnerError(f"Blender did not start the render runner within {timeout:.0f} s.",
                          "startup_timeout", True, self.log_tail())

    def _startup_error(self, returncode: int) -> RunnerError:
        tail = self.log_tail()
        line = next((ln for ln in reversed(self._tail) if any(m in ln for m in _BAD_BLEND)), None)
        if line is not None:
            return _bad_blend(line, tail)
        if returncode < 0:
            return RunnerError(f"{describe_exit(returncode)} while starting.", "crash", True, tail)
        return RunnerError(f"{describe_exit(returncode)} before the render runner started; "
                           "see the log.", "startup_failed", True, tail)

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """The runner's connection: check its hello, then queue every event it sends."""
        if self._writer is not None or self._hello.done():
            writer.close()  # one runner per Runner; anyone else is turned away
            return
        try:
            first = await asyncio.wait_for(reader.readline(), 10)
            hello = json.loads(first)
            if (not isinstance(hello, dict) or hello.get("ev") != "hello"
                    or not hmac.compare_digest(str(hello.get("secret", "")), self._secret)):
                writer.close()
                return
        except (TimeoutError, ValueError, ConnectionError):
            writer.close()
            return
        self._writer = writer
        if self._server is not None:
            self._server.close()  # stop listening: the runner is here
        self._hello.set_result(hello)
        try:
            await self._read_events(reader)
        finally:
            self._eof = True
            self._events.put_nowait({"ev": "_eof"})

    async def _read_events(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, ConnectionError):  # over-long line or reset
                self._tail.append("[blenderfarm] the runner's connection broke")
                return
            if not line:
                return
            self._touch()
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and isinstance(event.get("ev"), str):
                self._events.put_nowait(event)
            else:
                self._tail.append("[blenderfarm] the runner sent a line that is not an event")

    async def open(self, blend_path: str, *, cwd: str, log_path: str,
                   allow_scripts: bool = False, timeout: float = 120) -> None:
        """Load a job's file into this spare: from now on its output goes to ``log_path``
        and it renders that job. Raises RunnerError (bad_blend, crash, startup_failed,
        startup_timeout, as :meth:`start` does) and then the spare is dead."""
        if not self.alive:
            raise RunnerError("The Blender runner is not running.", "not_running", True,
                              self.log_tail())
        log = await asyncio.to_thread(open, log_path, "ab")
        # the pump writes one chunk at a time: the next goes to the job's log
        self._old_logs.append(self._log)
        self._log = log
        self._tail.clear()  # an error report shows this job's lines only
        self._drain()
        finished = False
        try:
            await self._send({"cmd": "open", "blend": os.path.abspath(blend_path),
                              "cwd": os.path.abspath(cwd), "scripts": allow_scripts})
            async with asyncio.timeout(timeout):
                while True:
                    event = await self._next_event(None)
                    if event["ev"] == "opened":
                        self.hello["file"] = event.get("file")
                        finished = True
                        return
                    if event["ev"] == "error":
                        if event.get("reason") == "bad_blend":
                            raise _bad_blend(str(event.get("message")), self.log_tail())
                        raise RunnerError(str(event.get("message") or "The open failed."),
                                          str(event.get("reason") or "startup_failed"),
                                          bool(event.get("retryable", False)), self.log_tail())
                    if event["ev"] in ("_exit", "_eof"):
                        raise self._startup_error(await self._exit_code())
        except TimeoutError:
            raise RunnerError(f"Blender did not open the .blend file within {timeout:.0f} s.",
                              "startup_timeout", True, self.log_tail()) from None
        finally:
            if not finished:
                self.kill()

    async def _exit_code(self) -> int:
        """Blender's exit code once it is gone (killed if it lingers)."""
        assert self._exit_task is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._exit_task), STOP_GRACE)
        except TimeoutError:  # the runner hung up but Blender lingers
            self.kill()
            return await self._exit_task

    # --- Blender's output --------------------------------------------------------------------

    async def _pump_log(self, stream: asyncio.StreamReader) -> None:
        """Copy Blender's output to the log file, keep its tail, read its stats lines."""
        pending = b""
        while chunk := await stream.read(65536):
            self._touch()
            await asyncio.to_thread(self._write_log, chunk)
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            if len(pending) > MAX_LINE:
                lines.append(pending)
                pending = b""
            for raw in lines:
                self._on_line(raw.decode("utf-8", "replace").rstrip())
        if pending:
            self._on_line(pending.decode("utf-8", "replace").rstrip())

    def _write_log(self, chunk: bytes) -> None:
        self._log.write(chunk)
        self._log.flush()  # the log is read while Blender runs

    def _on_line(self, line: str) -> None:
        if not line:
            return
        self._tail.append(line)
        if self.on_log is not None:
            self.on_log(line)
        m = _STATS_LINE.match(line)
        if m and self._busy:
            self._events.put_nowait({"ev": "progress", "frame": int(m.group(1)),
                                     "fraction": parse_fraction(line) or 0.0,
                                     "stats": line})

    async def _watch_exit(self, pump: asyncio.Task[None]) -> int:
        assert self._proc is not None
        returncode = await self._proc.wait()
        await asyncio.wait({pump}, timeout=2)  # let the last lines reach the tail
        self._events.put_nowait({"ev": "_exit", "returncode": returncode})
        return returncode

    def _touch(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()

    def log_tail(self) -> str:
        """The last lines Blender printed (for error reports)."""
        return "\n".join(self._tail)

    # --- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return (self._proc is not None and self._proc.returncode is None
                and self._writer is not None and not self._eof and not self._killed)

    # --- rendering -----------------------------------------------------------------------

    async def render(self, task_id: str, frames: list[int], *, scene: str | None,
                     overrides: dict[str, Any], output_dir: str, output_name: str,
                     on_event: EventCallback, watchdog: float | None = None,
                     opengl: bool = True, output_pattern: str | None = None,
                     devices: tuple[str, list[str]] | None = None,
                     tile: dict[str, int] | None = None,
                     ) -> list[tuple[int, str]]:
        """Render ``frames`` and return ``[(frame, path)]``, or raise RunnerError.

        ``on_event`` gets each frame_start, progress and frame_done event. If the
        task does not end cleanly (a crash, the watchdog, cancellation, an exception
        in ``on_event``) Blender is killed: its state is unknown. ``devices`` is the
        slot's ``(compute_device_type, Cycles ids)``: the runner enables exactly those
        (None: it leaves Blender's device preferences as they are). ``tile``
        (``{"index", "cols", "rows"}``, ``frames`` then one frame) renders only that
        cell of the frame, as ``<output_name>.tile<index:03d>.<frame>.exr``: a float
        EXR of the cell plus the margin the scene's adaptive sampling needs.
        The task_done's ``info`` is kept as :attr:`last_info`.
        """
        return await self._run({"cmd": "render", "task_id": task_id, "frames": list(frames),
                                "scene": scene, "overrides": overrides,
                                "output_dir": os.path.abspath(output_dir),
                                "output_name": output_name, "output_pattern": output_pattern,
                                # False: the runner refuses Eevee and Workbench (needs_opengl)
                                "opengl": opengl,
                                "devices": None if devices is None else
                                {"type": devices[0], "ids": list(devices[1])},
                                "tile": None if tile is None else
                                {k: int(tile[k]) for k in ("index", "cols", "rows")}},
                               on_event, watchdog)

    async def merge(self, task_id: str, frame: int, tiles: list[dict[str, Any]], *,
                    scene: str | None, overrides: dict[str, Any], output_dir: str,
                    output_name: str, output_pattern: str | None = None,
                    on_event: EventCallback, watchdog: float | None = None,
                    ) -> list[tuple[int, str]]:
        """Assemble ``frame`` from its tile EXRs (``[{"path", "index", "cols", "rows"}]``,
        as :meth:`render` with a tile wrote them) and save it as a render of the frame
        would be, under the same name; return ``[(frame, path)]`` or raise RunnerError
        (a missing or wrong-sized tile: reason ``bad_input``). Events and killing as
        :meth:`render`."""
        return await self._run({"cmd": "merge", "task_id": task_id, "frame": int(frame),
                                "scene": scene, "overrides": overrides,
                                "output_dir": os.path.abspath(output_dir),
                                "output_name": output_name, "output_pattern": output_pattern,
                                "tiles": [{"path": os.path.abspath(str(t["path"])),
                                           **{k: int(t[k]) for k in ("index", "cols", "rows")}}
                                          for t in tiles]},
                               on_event, watchdog)

    async def _run(self, command: dict[str, Any], on_event: EventCallback,
                   watchdog: float | None) -> list[tuple[int, str]]:
        """Send one task's command and follow its events to its end."""
        if not self.alive:
            raise RunnerError("The Blender runner is not running.", "not_running", True,
                              self.log_tail())
        task_id = command["task_id"]
        self._drain()
        self._frame = None
        self.last_info = {}
        self._touch()  # the watchdog counts from now, not from the last task
        finished = False
        self._busy = True
        try:
            await self._send(command)
            done: list[tuple[int, str]] = []
            while True:
                event = await self._next_event(watchdog)
                kind = event["ev"]
                if kind == "task_done" and event.get("task_id") == task_id:
                    finished = True
                    info = event.get("info")
                    self.last_info = dict(info) if isinstance(info, dict) else {}
                    return done
                if kind == "error":
                    finished = True
                    raise RunnerError(str(event.get("message") or "The render failed."),
                                      str(event.get("reason") or "render_failed"),
                                      bool(event.get("retryable", True)), self.log_tail())
                if kind in ("_exit", "_eof"):
                    raise await self._crash_error(task_id)
                if kind == "frame_done":
                    done.append((int(event["frame"]), str(event["path"])))
                self._forward(event, on_event)
        finally:
            self._busy = False
            if not finished:
                self.kill()

    def _forward(self, event: dict[str, Any], on_event: EventCallback) -> None:
        kind = event["ev"]
        if kind == "frame_start":
            self._frame = event.get("frame")
        elif kind == "frame_done":
            self._frame = None
        elif kind == "progress":
            # stdout and the socket are not ordered: drop a late line of another frame
            if event.get("frame") != self._frame:
                return
            now = asyncio.get_running_loop().time()
            if now - self._last_progress < PROGRESS_INTERVAL and event.get("fraction") != 1.0:
                return
            self._last_progress = now
        if kind in ("frame_start", "progress", "frame_done"):
            on_event(event)

    async def _next_event(self, watchdog: float | None) -> dict[str, Any]:
        # One get() task survives timeouts, so an event is never lost to a cancel.
        loop = asyncio.get_running_loop()
        while True:
            if self._getter is None:
                self._getter = asyncio.create_task(self._events.get())
            timeout = None if watchdog is None else self._last_activity + watchdog - loop.time()
            if timeout is not None and timeout <= 0:
                self.kill()
                raise RunnerError(
                    f"Blender showed no sign of life for {watchdog:g} s and was stopped.",
                    "watchdog", True, self.log_tail())
            done, _ = await asyncio.wait({self._getter}, timeout=timeout)
            if done:
                event, self._getter = self._getter.result(), None
                return event

    def _drain(self) -> None:
        """Drop events left from an earlier task (late progress lines)."""
        while not self._events.empty():
            self._events.get_nowait()

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        try:
            self._writer.write(json.dumps(message).encode("utf-8") + b"\n")
            await self._writer.drain()
        except ConnectionError as exc:
            raise RunnerError("The connection to the Blender runner broke.", "crash", True,
                              self.log_tail()) from exc

    async def _crash_error(self, task_id: str) -> RunnerError:
        returncode = await self._exit_code()
        return RunnerError(f"{describe_exit(returncode)} while rendering task {task_id}.",
                           "crash", True, self.log_tail())

    # --- stopping --------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL Blender's whole process group now (cancel, watchdog, cleanup)."""
        if self._proc is not None and self._proc.returncode is None:
            self._killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Ask Blender to quit; terminate, then kill its process group if it will not."""
        try:
            if self.alive:
                with contextlib.suppress(RunnerError):
                    await self._send({"cmd": "quit"})
            await self._wait_or_signal(signal.SIGTERM)
            await self._wait_or_signal(signal.SIGKILL)
        finally:
            await self._close()

    async def _wait_or_signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), STOP_GRACE)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def _close(self) -> None:
        """Release everything; kill whatever is left of the process group."""
        self.kill()
        if self._proc is not None:
            await self._proc.wait()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._server is not None:
            self._server.close()
        if self._tasks:  # Blender is dead: its pipe ends, the pump finishes its last write
            await asyncio.wait(self._tasks, timeout=2)
        for task in [*self._tasks, *([self._getter] if self._getter else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._getter is not None:
            await asyncio.gather(self._getter, return_exceptions=True)
            self._getter = None
        for log in [*self._old_logs, self._log]:
            log.close()

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
