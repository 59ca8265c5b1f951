"""Background work of the add-on, without bpy: threads that talk to the UI by messages.

A :class:`Task` runs in its own thread (or inline, in ``blender -b``) and reports only
by putting small frozen dataclasses (:class:`Progress`, :class:`MissingFiles`,
:class:`Done`, :class:`Failed`, :class:`Canceled`) on its ``queue.SimpleQueue``. The
UI side drains that queue from a timer with :func:`drain`, within a time budget, so
Blender's main thread never waits on the network or the disk.

This module must never import bpy (a thread touching bpy crashes Blender, and the
tests run it in plain Python), and never lets an exception escape a thread: every
failure becomes one sentence (:func:`describe_error`); the log keeps the traceback.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from .vendor.blenderfarm.client.api import (
    ApiError,
    Client,
    OutputConflict,
    ServerUnreachable,
    job_folder_name,
)
from .vendor.blenderfarm.client.progress import format_bytes
from .vendor.blenderfarm.protocol.frames import FrameRangeError
from .vendor.blenderfarm.protocol.jobspec import SpecError
from .vendor.blenderfarm.protocol.version import PROTOCOL_VERSION

log = logging.getLogger(__name__)

#: How long one drain may take on Blender's main thread (seconds).
DRAIN_BUDGET = 0.005
#: At most this many progress messages per second: a 500 MB upload in 1 MiB chunks
#: would otherwise post 500 of them for the UI to skip.
PROGRESS_RATE = 20.0


# --- messages: the only things a thread hands to the UI ------------------------------------


@dataclass(frozen=True)
class Progress:
    stage: str  # "Connecting", "Packing", "Hashing", "Uploading", "Queuing", "Downloading"
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0

    @property
    def fraction(self) -> float:
        if self.bytes_total > 0:
            return min(1.0, self.bytes_done / self.bytes_total)
        if self.files_total > 0:
            return min(1.0, self.files_done / self.files_total)
        return 0.0


@dataclass(frozen=True)
class MissingFiles:
    """Files the project uses that do not exist; ``ask``: the task waits for a decision."""

    paths: tuple[str, ...]
    ask: bool = True


@dataclass(frozen=True)
class Done:
    result: Any
    summary: str  # one sentence for the panel and the status bar


@dataclass(frozen=True)
class Failed:
    message: str  # one sentence: what happened and what to do


@dataclass(frozen=True)
class Canceled:
    message: str = "Canceled."


Message = Union[Progress, MissingFiles, Done, Failed, Canceled]  # noqa: UP007 - Python 3.10 in Blender 3.x


class Aborted(Exception):
    """The user stopped the task; raised inside it to unwind. The message, if any, says
    what did not happen ("Not submitted: ...")."""


class Problem(Exception):
    """A failure already put into one sentence for the user."""


def drain(
    q: queue.SimpleQueue[Any],
    handle: Callable[[Any], None],
    budget: float = DRAIN_BUDGET,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Handle queued messages until the queue is empty or ``budget`` seconds have passed.

    At least one message is handled per call, so a slow handler still makes progress;
    what is left waits for the next timer tick. Returns how many were handled.
    """
    deadline = clock() + budget
    handled = 0
    while True:
        try:
            message = q.get_nowait()
        except queue.Empty:
            return handled
        handle(message)
        handled += 1
        if clock() >= deadline:
            return handled


# --- errors as sentences -------------------------------------------------------------------


def describe_error(exc: BaseException, has_token: bool = True) -> str:
    """One sentence saying what went wrong and what to do."""
    if isinstance(exc, Problem):
        return str(exc)
    if isinstance(exc, ServerUnreachable):
        return (f"Cannot reach the farm server at {exc.url} ({exc.reason}): is bf-server "
                "running, and is the server URL in the add-on preferences right?")
    if isinstance(exc, ApiError):
        return _describe_api_error(exc, has_token)
    if isinstance(exc, OutputConflict):
        return (f"Nothing downloaded: {exc}. Tick Overwrite under Download To in the panel "
                "to replace it, or download into another folder.")
    if isinstance(exc, SpecError):
        return f"Invalid job settings: {exc}."
    if isinstance(exc, FrameRangeError):
        return f"Invalid frame range: {exc}."
    if isinstance(exc, ImportError):
        return f"The add-on is incomplete: {exc}."
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}."
    return (f"Unexpected error ({type(exc).__name__}: {exc}); "
            "the system console has the details.")


def _describe_api_error(exc: ApiError, has_token: bool) -> str:
    if exc.status == 401:
        if not has_token:
            return ("The farm server needs a token: create one with `bf-server token create "
                    "--user` and enter it in the add-on preferences.")
        return ("The farm server refused the token: check the token in the add-on "
                "preferences (`bf-server token list` shows the valid ones).")
    if exc.status == 403:
        return "That token may not do this (a node token?): use a user token."
    if exc.status == 404 and exc.code == "not_found":
        return f"The farm server does not know it: {exc}."
    return f"The farm server refused: {exc}."


def check_server(info: dict[str, Any]) -> None:
    """Raise Problem unless ``info`` (``GET /api/info``) is a server we can talk to."""
    protocol = info.get("protocol")
    version = info.get("server_version", "?")
    if protocol != PROTOCOL_VERSION:
        raise Problem(f"The farm server (Blenderfarm {version}) speaks protocol {protocol}, "
                      f"this add-on speaks {PROTOCOL_VERSION}: install the add-on that "
                      f"matches the server.")


# --- the task thread -----------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    token: str | None = None
    timeout: float = 30.0

    def client(self, cls: type[Client] = Client) -> Client:
        try:
            return cls(self.url, self.token, timeout=self.timeout)
        except ValueError as exc:
            raise Problem(f"The server URL {self.url!r} is not an http(s) URL: fix it in "
                          "the add-on preferences.") from exc


class Task:
    """One piece of background work: ``work()`` runs in a thread and returns Done.

    Subclasses check ``self.check()`` between steps so that :meth:`cancel` stops them
    promptly, and report with :meth:`progress`, which rate-limits itself.
    """

    kind = "task"

    def __init__(self, server: Server) -> None:
        self.server = server
        self.queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_progress = 0.0

    # --- the UI's side
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"blenderfarm-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def canceled(self) -> bool:
        return self._cancel.is_set()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the thread's side
    def run(self) -> None:
        """The thread's body; also called directly where there is no event loop."""
        try:
            self.post(self.work())
        except Aborted as exc:
            self.post(Canceled(str(exc) or Canceled.message))
        except (Problem, ServerUnreachable, ApiError, OutputConflict, SpecError,
                FrameRangeError) as exc:
            log.debug("%s failed", self.kind, exc_info=True)
            self.post(Failed(describe_error(exc, bool(self.server.token))))
        except Exception as exc:  # a bug: the user gets a sentence, the console the trace
            log.exception("Blenderfarm %s failed", self.kind)
            self.post(Failed(describe_error(exc, bool(self.server.token))))
        finally:
            self.cleanup()

    def work(self) -> Done:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Runs in the thread after work(), whatever happened."""

    def check(self) -> None:
        if self._cancel.is_set():
            raise Aborted()

    def post(self, message: Message) -> None:
        self.queue.put(message)

    def progress(self, message: Progress, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress >= 1.0 / PROGRESS_RATE:
            self._last_progress = now
            self.post(message)


# --- small tasks: test the connection, download results ------------------------------------


class ConnectionTest(Task):
    """``GET /api/info``: the server's version and node count, or the exact problem."""

    kind = "connection"

    def work(self) -> Done:
        client = self.server.client()
        try:
            info = client.info()
        finally:
            client.close()
        check_server(info)
        online, known = info.get("nodes_online", 0), info.get("nodes_known", 0)
        return Done(info, f"Connected to Blenderfarm {info.get('server_version', '?')} "
                          f"(protocol {info.get('protocol')}): {online} of {known} node(s) "
                          "online.")


@dataclass
class DownloadResult:
    folder: str
    written: list[str] = field(default_factory=list)
    total: int = 0


class DownloadTask(Task):
    """Fetch a job's frames into a folder, skipping those already there.

    With ``per_job`` (the default) the frames go into ``<folder>/<job name>-<short id>/``,
    so two jobs of the same name never share files; a file there whose content differs
    is replaced only with ``overwrite`` (the client's rule, shared with ``bf download``).
    """

    kind = "download"

    def __init__(self, server: Server, job_id: str, folder: str, label: str = "",
                 per_job: bool = True, overwrite: bool = False) -> None:
        super().__init__(server)
        self.job_id = job_id
        self.folder = folder
        self.label = label or folder  # how the user wrote the folder (//renders/)
        self.per_job = per_job
        self.overwrite = overwrite

    def work(self) -> Done:
        client = self.server.client()
        try:
            return self._download(client)
        finally:
            client.close()

    def _download(self, client: Client) -> Done:
        self.progress(Progress("Downloading"), force=True)
        folder, label = self.folder, self.label
        if self.per_job:
            job = client.get_job(self.job_id)
            sub = job_folder_name(str(job.get("name") or ""), str(job.get("id") or self.job_id))
            folder = os.path.join(folder, sub)
            label = label.rstrip("/\\") + "/" + sub + "/"
        outputs = client.list_outputs(self.job_id)
        if not outputs:
            raise Problem("The job has no rendered frames yet.")
        result = DownloadResult(folder, total=len(outputs))
        total_bytes = sum(int(o.get("size") or 0) for o in outputs)
        done = [0, 0]

        def on_file(path: str, fetched: bool) -> None:
            done[0] += 1
            done[1] += _size(path)
            self.progress(Progress("Downloading", done[0], len(outputs), done[1], total_bytes))
            self.check()

        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise Problem(f"Cannot create the download folder {folder}: "
                          f"{exc.strerror}.") from exc
        result.written = client.download_outputs(self.job_id, folder, on_file,
                                                 overwrite=self.overwrite)
        kept = result.total - len(result.written)
        extra = f" ({kept} already there)" if kept else ""
        return Done(result, f"Downloaded {len(result.written)} frame(s) to {label}{extra}.")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def progress_text(p: Progress) -> str:
    """``Uploading: 3/10 files, 12.0 MiB / 500.0 MiB``: what the progress bar says."""
    parts = []
    if p.files_total:
        parts.append(f"{p.files_done}/{p.files_total} files")
    elif p.files_done:
        parts.append(f"{p.files_done} files")
    if p.bytes_total:
        parts.append(f"{format_bytes(p.bytes_done)} / {format_bytes(p.bytes_total)}")
    return f"{p.stage}: {', '.join(parts)}" if parts else f"{p.stage}..."
