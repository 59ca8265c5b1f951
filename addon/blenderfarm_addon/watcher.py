"""Following this file's farm jobs, without bpy: a thread that listens and posts updates.

:class:`JobWatcher` reads each job it is told to watch once (``GET /api/jobs/{id}``),
then follows the farm's live events (``/ws/events``) while one is still running, and
posts :class:`JobUpdate`, :class:`JobGone` and :class:`WatchError` messages on its
queue; the add-on drains it from a timer. After the stream drops it reconnects and
reads its jobs once more; a server with no event stream (an old one, a proxy) is
polled every couple of seconds instead. Cancelling a job goes through the same
thread, so a slow server never stalls Blender. A job that ended is left alone.

It must never import bpy, and never raises out of its thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

from .vendor.blenderfarm.client.api import ApiError, ServerUnreachable
from .vendor.blenderfarm.client.events import (
    EventStream,
    StreamClosed,
    StreamProtocolError,
    StreamUnavailable,
)
from .vendor.blenderfarm.client.progress import FINAL_STATES
from .worker import Problem, Server, describe_error

log = logging.getLogger(__name__)

LISTEN_SLICE = 0.2  # seconds a read of the event stream waits before looking at new requests
PROGRESS_EVERY = 0.25  # seconds between two updates of one job from in-frame progress


@dataclass(frozen=True)
class JobUpdate:
    job: dict[str, Any]  # as GET /api/jobs/{id} answers


@dataclass(frozen=True)
class JobGone:
    job_id: str  # the server no longer has it (deleted)


@dataclass(frozen=True)
class WatchError:
    message: str  # one sentence; "" once the server answers again


WatchMessage = Union[JobUpdate, JobGone, WatchError]  # noqa: UP007 - Python 3.10 in Blender 3.x


class JobWatcher:
    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.queue: queue.SimpleQueue[WatchMessage] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._watched: dict[str, bool] = {}  # job id -> still running (to follow)
        self._due: set[str] = set()  # jobs to read once on the next round
        self._cancels: list[str] = []
        # Only the watcher's thread touches these:
        self._stream: EventStream | None = None
        self._stream_for: Server | None = None
        self._no_stream: Server | None = None  # this server offers no events: poll it
        self._jobs: dict[str, dict[str, Any]] = {}  # the last view of each job posted
        self._posted: dict[str, float] = {}  # job id -> when in-frame progress was posted
        self._pending: dict[str, dict[str, Any]] = {}  # in-frame progress not posted yet
        self._last_error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- any thread -------------------------------------------------------------------------

    def configure(self, server: Server) -> None:
        with self._lock:
            if server != self._server:
                self._server = server
                self._watched = dict.fromkeys(self._watched, True)  # look again, anew
                self._due = set(self._watched)
        self._wake.set()

    def watch(self, job_ids: Iterable[str]) -> None:
        """Follow exactly these jobs (new ones are read at once)."""
        ids = list(job_ids)
        with self._lock:
            fresh = [i for i in ids if i not in self._watched]
            self._watched = {i: self._watched.get(i, True) for i in ids}
            self._due = (self._due & set(ids)) | set(fresh)
        if fresh:
            self._wake.set()

    def watched(self) -> list[str]:
        with self._lock:
            return list(self._watched)

    def refresh(self) -> None:
        """Read every watched job on the next round, ended ones too."""
        with self._lock:
            self._watched = dict.fromkeys(self._watched, True)
            self._due = set(self._watched)
        self._wake.set()

    def cancel_job(self, job_id: str) -> None:
        with self._lock:
            self._cancels.append(job_id)
            self._watched[job_id] = True
            self._due.add(job_id)
        self._wake.set()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="blenderfarm-watcher",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- the watcher's thread -----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                    self._listen()
                except Exception:  # a bug must not end the thread: the panel would freeze
                    log.exception("Blenderfarm: following the farm failed")
                    self._drop_stream()
                    self._wake.wait(self.interval)
                    self._wake.clear()
        finally:
            self._drop_stream()

    def poll_once(self) -> None:
        """One round: pending cancels, then every job due to be read. Also called inline."""
        with self._lock:
            server, cancels = self._server, self._cancels
            self._cancels = []
            due = [i for i in self._watched if i in self._due]
            self._due = set()
        if server is None or not (due or cancels):
            return
        try:
            client = server.client()
        except Problem as exc:
            self._error(str(exc))
            return
        try:
            for job_id in cancels:
                self._guarded(server, lambda j=job_id: client.cancel_job(j))
            for job_id in due:
                job = self._guarded(server, lambda j=job_id: client.get_job(j), job_id)
                if job is not None:
                    self._post(job)
        finally:
            client.close()

    def _post(self, job: dict[str, Any]) -> None:
        job_id = str(job.get("id"))
        self._jobs[job_id] = job
        self._pending.pop(job_id, None)  # this view is newer
        self.queue.put(JobUpdate(job))
        if job.get("status") in FINAL_STATES:
            with self._lock:
                if job_id in self._watched:
                    self._watched[job_id] = False

    def _following(self) -> tuple[Server | None, set[str]]:
        with self._lock:
            return self._server, {i for i, live in self._watched.items() if live}

    def _listen(self) -> None:
        """Until woken (a cancel, a new job, stop): read the farm's events, or, with no
        stream to read, wait ``interval`` and have the running jobs read again."""
        server, live = self._following()
        if server is None or not live:
            self._drop_stream()  # nothing runs: no socket held open for nothing
            self._wait(self.interval)
            return
        stream = self._open(server)
        if stream is None:
            self._wait(self.interval)
            with self._lock:
                self._due |= {i for i, running in self._watched.items() if running}
            return
        while not self._wake.is_set():
            try:
                events = stream.receive(LISTEN_SLICE)
            except StreamClosed as exc:
                log.info("Blenderfarm: the event stream dropped (%s); reconnecting", exc)
                self._drop_stream(protocol_error=isinstance(exc, StreamProtocolError))
                with self._lock:  # what changed while we were away
                    self._due |= {i for i, running in self._watched.items() if running}
                self._wait(min(1.0, self.interval))
                return
            for event in events:
                self._on_event(event)
            self._flush_progress()
            if not self._following()[1]:
                return
        self._wake.clear()

    def _flush_progress(self) -> None:
        """Post in-frame progress, the latest of each job, at most every PROGRESS_EVERY s
        (a node reports ten times a second; the panel needs far fewer redraws)."""
        now = time.monotonic()
        for job_id, job in list(self._pending.items()):
            if now - self._posted.get(job_id, 0.0) >= PROGRESS_EVERY:
                self._posted[job_id] = now
                self._post(job)

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _open(self, server: Server) -> EventStream | None:
        if self._stream is not None and self._stream_for == server:
            return self._stream
        self._drop_stream()
        if self._no_stream == server:
            return None
        try:
            self._stream = EventStream(server.url, server.token, timeout=server.timeout).open()
        except (StreamUnavailable, StreamProtocolError) as exc:
            log.info("Blenderfarm: %s Polling instead.", exc)
            self._no_stream = server
            return None
        except (ServerUnreachable, ApiError, StreamClosed) as exc:
            log.debug("Blenderfarm: no event stream now (%s)", exc)  # the poll says it
            return None
        self._stream_for = server
        with self._lock:  # an end between the last read and the subscription is not missed
            self._due |= {i for i, running in self._watched.items() if running}
        self.poll_once()
        return self._stream

    def _drop_stream(self, protocol_error: bool = False) -> None:
        if protocol_error:
            self._no_stream = self._stream_for
        if self._stream is not None:
            self._stream.close()
        self._stream, self._stream_for = None, None

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        with self._lock:
            watched = dict(self._watched)
        if kind == "job":
            job = event.get("job")
            if isinstance(job, dict) and watched.get(str(job.get("id"))):
                self._post(job)
        elif kind == "progress":
            job_id = str(event.get("job_id"))
            last = self._jobs.get(job_id)
            if watched.get(job_id) and last is not None and "eta" in event:
                self._pending[job_id] = {**last, "progress": event.get("job_progress"),
                                         "eta": event.get("eta")}
        elif kind == "job_deleted" and event.get("job_id") in watched:
            with self._lock:  # read it again: the 404 becomes JobGone
                self._due.add(str(event["job_id"]))
            self._wake.set()
        elif kind == "resync":  # the server dropped events for us: read every job again
            with self._lock:
                self._due |= set(watched)
            self._wake.set()

    def _guarded(self, server: Server, call: Any, job_id: str | None = None) -> Any:
        """Run one request; turn its failure into a WatchError (once per new sentence)."""
        try:
            result = call()
        except ApiError as exc:
            if exc.status == 404 and job_id is not None:
                with self._lock:
                    self._watched.pop(job_id, None)
                self.queue.put(JobGone(job_id))
                return None
            self._error(describe_error(exc, bool(server.token)))
            return None
        except (ServerUnreachable, Problem) as exc:
            self._error(describe_error(exc, bool(server.token)))
            return None
        if self._last_error:
            self._error("")
        return result

    def _error(self, message: str) -> None:
        if message != self._last_error:
            self._last_error = message
            self.queue.put(WatchError(message))
