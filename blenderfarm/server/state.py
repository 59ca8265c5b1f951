"""What the farm holds, and the steps its parts take from one another.

:class:`FarmState` owns the farm's state (jobs, tasks, node records, live sessions, the
scheduler, the journal) and names, as abstract methods, the steps one part of the state
machine asks of another. The parts are mixins typed against it, each in its own module
(``sessions``: nodes come and go; ``dispatch``: queued tasks go to slots; ``results``:
what nodes report), composed with the core (``farm``: start-up, jobs, the ``commit``
funnel) into :class:`~blenderfarm.server.farm.Farm`. It does no I/O and decides nothing.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .blobs import BlobStore
from .config import ServerConfig
from .eta import InFrame
from .logs import TaskLogs
from .metrics import FarmMetrics
from .models import Job, NodeRecord, Task
from .news import NodeNews
from .scheduler import Scheduler
from .store import Journal, Store

if TYPE_CHECKING:
    from ..protocol import messages as m
    from .sessions import NodeSession


class FarmState(abc.ABC):
    """The farm's state, and the steps its parts ask of one another (abstract here,
    each defined once, in the module named above it)."""

    def __init__(self, config: ServerConfig, store: Store, blobs: BlobStore) -> None:
        self.config = config
        self.store = store
        self.journal = Journal(store)
        self.blobs = blobs
        self.jobs_dir = config.data_dir / "jobs"
        self.logs = TaskLogs(config.data_dir / "logs", config.max_log_bytes)
        self.metrics = FarmMetrics()
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Task] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.sessions: dict[str, NodeSession] = {}
        self.sched = Scheduler()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        #: job id -> how far its running tasks are inside their frames (for its ETA)
        self.in_frame: dict[str, InFrame] = {}
        self._seq = 0
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: encodes the server runs itself (no online node has FFmpeg), by task id
        self._encoding: dict[str, asyncio.Task[None]] = {}
        #: every change of a node reaches watchers through here, a few times a second at most
        self.news = NodeNews(self._announce)
        self.started = time.time()

    def online(self) -> list[NodeRecord]:
        """The records of the nodes connected now, oldest Blender first."""
        return [s.record for s in self.sessions.values()]

    # --- the core (farm.py) --------------------------------------------------------------------
    @abc.abstractmethod
    def emit(self, kind: str, **data: Any) -> None: ...

    @abc.abstractmethod
    def commit(self, job: Job | None = None, tasks: list[Task] | None = None,
               nodes: list[NodeRecord] | None = None, ops: list[Any] | None = None, *,
               offer: bool | list[NodeSession] = True,
               room: Job | None = None) -> asyncio.Future[None]: ...

    @abc.abstractmethod
    def job_json(self, job: Job, nodes: bool = False) -> dict[str, Any]: ...

    @abc.abstractmethod
    def job_pace(self, job: Job) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _stop_job(self, job: Job, status: str, error: str | None,
                  settled: list[Task] | None = None) -> asyncio.Future[None]: ...

    # --- nodes (sessions.py) -------------------------------------------------------------------
    @abc.abstractmethod
    def _announce(self, uid: str) -> None: ...

    @abc.abstractmethod
    def _arm_grace(self, uid: str) -> None: ...

    @abc.abstractmethod
    def _prune_every_hour(self) -> None: ...

    # --- dispatch (dispatch.py) ----------------------------------------------------------------
    @abc.abstractmethod
    def dispatch(self, sessions: list[NodeSession] | None = None) -> None: ...

    @abc.abstractmethod
    def make_room(self, job: Job) -> None: ...

    @abc.abstractmethod
    def capable_nodes(self, job: Job) -> list[NodeRecord]: ...

    @abc.abstractmethod
    def requeue_task(self, task: Task) -> None: ...

    @abc.abstractmethod
    def _release(self, task: Task) -> None: ...

    @abc.abstractmethod
    def ready_tasks(self, job: Job, tasks: list[Task]) -> None: ...

    @abc.abstractmethod
    def encode_orphans(self) -> None: ...

    # --- results (results.py) ------------------------------------------------------------------
    @abc.abstractmethod
    def fail_task(self, rec: NodeRecord, task: Task,
                  msg: m.TaskFailed) -> asyncio.Future[None]: ...

    @abc.abstractmethod
    def encode_here(self, job: Job, task: Task) -> None: ...
