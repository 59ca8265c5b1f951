"""Following this file's farm jobs, without bpy: a thread that polls and posts updates.

:class:`JobWatcher` polls ``GET /api/jobs/{id}`` for the jobs it is told to watch,
every couple of seconds while one is still running, and posts :class:`JobUpdate`,
:class:`JobGone` and :class:`WatchError` messages on its queue; the add-on drains it
from a timer. Cancelling a job goes through the same thread, so a slow server never
stalls Blender. A job that ended is fetched once more, then left alone.

It must never import bpy, and never raises out of its thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

from .vendor.blenderfarm.client.api import ApiError, ServerUnreachable
from .vendor.blenderfarm.client.progress import FINAL_STATES
from .worker import Problem, Server, describe_error

log = logging.getLogger(__name__)


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
        self._watched: dict[str, bool] = {}  # job id -> still to poll
        self._cancels: list[str] = []
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
        self._wake.set()

    def watch(self, job_ids: Iterable[str]) -> None:
        """Follow exactly these jobs (new ones are polled at once)."""
        ids = list(job_ids)
        with self._lock:
            fresh = [i for i in ids if i not in self._watched]
            self._watched = {i: self._watched.get(i, True) for i in ids}
        if fresh:
            self._wake.set()

    def watched(self) -> list[str]:
        with self._lock:
            return list(self._watched)

    def refresh(self) -> None:
        """Poll every watched job on the next round, ended ones too."""
        with self._lock:
            self._watched = dict.fromkeys(self._watched, True)
        self._wake.set()

    def cancel_job(self, job_id: str) -> None:
        with self._lock:
            self._cancels.append(job_id)
            self._watched[job_id] = True
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
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a bug must not end the thread: the panel would freeze
                log.exception("Blenderfarm: polling the farm failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    def poll_once(self) -> None:
        """One round: pending cancels, then every job still to poll. Also called inline."""
        with self._lock:
            server, cancels = self._server, self._cancels
            self._cancels = []
            due = [i for i, pending in self._watched.items() if pending]
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
                if job is None:
                    continue
                self.queue.put(JobUpdate(job))
                if job.get("status") in FINAL_STATES:
                    with self._lock:
                        if job_id in self._watched:
                            self._watched[job_id] = False
        finally:
            client.close()

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
