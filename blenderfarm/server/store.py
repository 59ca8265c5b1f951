"""SQLite persistence for jobs, tasks, outputs and nodes (WAL, versioned schema).

The event loop never touches SQLite: writes are queued with :meth:`Store.put`
and one writer thread commits everything queued so far in one transaction, so a
burst of a thousand task updates costs one commit. A caller that must not go on
before its write is durable (acking a node's results) awaits the future that
:meth:`Store.put` returns. Reads happen once, at start-up (:meth:`Store.load`);
after that the farm's in-memory state is the truth and this is its journal.
A job's task rows are written only once a task changes: the farm compiles the
rest again from the job's spec at start-up, so a 100,000-frame submit writes one row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models import Job, NodeRecord, Output, Task

log = logging.getLogger(__name__)

#: 2: a job's spec moved from its row to the ``specs`` table (written once, at submit);
#: 3: the tokens table is the store's, with a ``role`` (user or admin)
SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS specs (job_id TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_job ON tasks (job_id, idx);
CREATE TABLE IF NOT EXISTS outputs (
    job_id TEXT NOT NULL, name TEXT NOT NULL, task_id TEXT NOT NULL, frame INTEGER NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (job_id, name));
CREATE TABLE IF NOT EXISTS nodes (uid TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL, revoked REAL, role TEXT NOT NULL DEFAULT 'user');
"""


class StoreError(RuntimeError):
    """The database cannot be opened or written (corrupt file, full disk...); ``full``
    when the cause is a full disk."""

    def __init__(self, message: str, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


@dataclass
class Loaded:
    jobs: list[Job] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    nodes: list[NodeRecord] = field(default_factory=list)


_Op = tuple[str, Any]  # (sql, params or list of params for executemany)
_STOP = object()


#: seconds between tries to write a batch the database refused, growing to the last
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)
#: errors that say the data of one statement is bad (it would fail again and again),
#: not that the database cannot be written right now
_BAD_DATA = (OverflowError, TypeError, ValueError, sqlite3.InterfaceError,
             sqlite3.IntegrityError, sqlite3.ProgrammingError)


class Journal:
    """Coalesces the farm's writes. Changes gather while the previous batch commits
    (group commit), then leave as one batch: one transaction, each job, task and node
    row once, at its latest state. Under load batches grow by themselves (a thousand
    completions of one job write the job's row once, not a thousand times); on a
    quiet farm a change leaves on the next pass of the event loop. Rows are built when
    the batch leaves, on the loop, so they are consistent snapshots; other statements
    keep their order and run after the rows (so a job's deletion wins over its last
    updates).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: dict[str, Job] = {}
        self._tasks: dict[str, Task] = {}
        self._nodes: dict[str, NodeRecord] = {}
        self._ops: list[_Op] = []
        self._fut: asyncio.Future[None] | None = None  # the gathering batch's
        self._busy = False  # a batch is with the store
        self._failures = 0  # batches refused in a row
        #: why the database refuses what the journal holds (it retries), else None
        self.failure: StoreError | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._healthy: asyncio.Future[None] | None = None  # resolves at the next success

    def add(self, jobs: Iterable[Job] = (), tasks: Iterable[Task] = (),
            nodes: Iterable[NodeRecord] = (), ops: Iterable[_Op] = ()) -> asyncio.Future[None]:
        """Queue rows and statements; the future resolves once they are committed."""
        for job in jobs:
            self._jobs[job.id] = job
        for task in tasks:
            self._tasks[task.id] = task
        for node in nodes:
            self._nodes[node.uid] = node
        self._ops.extend(ops)
        return self._gathering()

    def _gathering(self) -> asyncio.Future[None]:
        if self._fut is None:
            loop = asyncio.get_running_loop()
            self._fut = loop.create_future()
            # a failure is logged by the store; nobody need await a batch's future
            self._fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            if not self._busy and self._retry is None:  # else it leaves after those
                loop.call_soon(self._send)
        return self._fut

    def healthy(self) -> asyncio.Future[None]:
        """A future that resolves at the next successful commit (at once if the last
        one succeeded): what was refused before is written by then."""
        loop = asyncio.get_running_loop()
        if self._failures == 0 and self._retry is None:
            done = loop.create_future()
            done.set_result(None)
            return done
        if self._healthy is None or self._healthy.done():
            self._healthy = loop.create_future()
        return self._healthy

    def _send(self) -> None:
        if not self._busy and self._retry is None:
            self.flush()

    def _rows(self) -> list[_Op]:
        """The gathered rows as statements. A row that cannot be written (it cannot
        happen to a value that passed validation) is logged and left out: one bad row
        must not stop every save."""
        ops: list[_Op] = []
        for job in self._jobs.values():
            try:
                ops.append(Store.job_op(job))
            except Exception:
                log.exception("cannot save job %s; it is left out of this save", job.id)
        for node in self._nodes.values():
            try:
                ops.append(Store.node_op(node))
            except Exception:
                log.exception("cannot save node %s; it is left out of this save", node.uid)
        if self._tasks:
            tasks = []
            for task in self._tasks.values():
                try:
                    tasks.append(Store.task_row(task))
                except Exception:
                    log.exception("cannot save task %s; it is left out of this save", task.id)
            ops.append((Store.TASK_SQL, tasks))
        return ops

    def flush(self) -> None:
        """Hand everything gathered to the store now (also called before it closes)."""
        fut, self._fut = self._fut, None
        if fut is None:
            return
        jobs, tasks, nodes, extra = self._jobs, self._tasks, self._nodes, self._ops
        ops = self._rows() + extra
        self._jobs, self._tasks, self._nodes, self._ops = {}, {}, {}, []
        if not ops:
            fut.set_result(None)
            return
        self._busy = True
        committed = self.store.put(ops)

        def done(c: asyncio.Future[None]) -> None:
            self._busy = False
            error = c.exception()
            if error is None:
                self._failures = 0
                self.failure = None
                if self._healthy is not None and not self._healthy.done():
                    self._healthy.set_result(None)
                if not fut.done():
                    fut.set_result(None)
                if self._fut is not None:  # gathered while this one committed
                    self.flush()
                return
            # Keep what was refused and try again: memory is the truth, and the disk
            # must catch up with it. Rows gathered since are newer and win; statements
            # keep their order (the refused ones first).
            for job_id, job in jobs.items():
                self._jobs.setdefault(job_id, job)
            for task_id, task in tasks.items():
                self._tasks.setdefault(task_id, task)
            for uid, node in nodes.items():
                self._nodes.setdefault(uid, node)
            self._ops[:0] = extra
            self._failures += 1
            self.failure = error if isinstance(error, StoreError) else StoreError(str(error))
            delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS)) - 1]
            self._retry = asyncio.get_running_loop().call_later(delay, self._try_again)
            if not fut.done():
                fut.set_exception(error)

        committed.add_done_callback(done)

    def _try_again(self) -> None:
        self._retry = None
        self._gathering()
        self.flush()

    async def drain(self, timeout: float = 5.0) -> None:
        """Before the store closes: write what is gathered, waiting for the batch in
        flight; give up after ``timeout`` seconds of a database that refuses writes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._fut is not None or self._busy) and loop.time() < deadline:
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            if not self._busy:
                self.flush()
            await asyncio.sleep(0.01)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        #: the failure last logged: a journal retrying a full disk logs it once, not per try
        self._logged_error: str | None = None

    # --- lifecycle --------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA synchronous=NORMAL")
            prepare(db, self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc
        return db

    async def open(self) -> Loaded:
        self._loop = asyncio.get_running_loop()
        db = await asyncio.to_thread(self._connect)
        loaded = await asyncio.to_thread(self._load, db)
        self._thread = threading.Thread(target=self._writer, args=(db,), name="bf-store",
                                        daemon=True)
        self._thread.start()
        return loaded

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    # --- writes ---------------------------------------------------------------------------
    def put(self, ops: Iterable[_Op]) -> asyncio.Future[None]:
        """Queue writes; the future resolves once they are committed."""
        assert self._loop is not None, "store not open"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((list(ops), fut))
        return fut

    def _writer(self, db: sqlite3.Connection) -> None:
        """The one thread that writes. It cannot die: whatever one batch raises is
        logged and answered to that batch's futures, and the next batch is taken."""
        while True:
            batch = [self._queue.get()]
            while True:  # take everything queued so far: one transaction for the burst
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            items = [item for item in batch if item is not _STOP]
            try:
                error = self._commit(db, items) if items else None
            except BaseException as exc:  # noqa: BLE001 - the writer outlives any batch
                log.exception("the database writer failed on a batch")
                error = StoreError(f"database write failed: {exc!r}")
                with contextlib.suppress(Exception):
                    db.execute("ROLLBACK")
            for _ops, fut in items:
                self._resolve(fut, error)
            if stop:
                with contextlib.suppress(Exception):
                    db.close()
                return

    def _commit(self, db: sqlite3.Connection, items: list[Any]) -> StoreError | None:
        ops = [op for item_ops, _fut in items for op in item_ops]
        try:
            self._run(db, ops, careful=False)
        except _BAD_DATA as exc:
            # One statement's data is bad; find it, leave it out, write the rest.
            log.error("a database write had bad data (%s); writing statement by statement",
                      exc)
            with contextlib.suppress(Exception):
                db.execute("ROLLBACK")
            try:
                self._run(db, ops, careful=True)
            except (sqlite3.Error, OSError) as exc2:
                return self._refused(db, exc2)
        except (sqlite3.Error, OSError) as exc:
            return self._refused(db, exc)
        self.commits += 1
        self._logged_error = None
        return None

    def _run(self, db: sqlite3.Connection, ops: list[_Op], careful: bool) -> None:
        db.execute("BEGIN")
        for sql, params in ops:
            if careful:
                db.execute("SAVEPOINT op")
            try:
                if isinstance(params, list):
                    db.executemany(sql, params)
                else:
                    db.execute(sql, params)
            except _BAD_DATA as exc:
                if not careful:
                    raise
                db.execute("ROLLBACK TO op")
                log.error("left out a write the database refused: %s (%s)", sql[:80], exc)
            if careful:
                db.execute("RELEASE op")
        db.execute("COMMIT")

    def _refused(self, db: sqlite3.Connection, exc: BaseException) -> StoreError:
        full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc) or \
            getattr(exc, "errno", None) == 28
        if self._logged_error != str(exc):  # once per kind of failure, not once per retry
            log.error("database write failed: %s; the farm keeps its state in memory and "
                      "tries again", exc)
        self._logged_error = str(exc)
        with contextlib.suppress(Exception):
            db.execute("ROLLBACK")
        return StoreError(f"database write failed: {exc}", full=full)

    def _resolve(self, fut: asyncio.Future[None], error: Exception | None) -> None:
        assert self._loop is not None

        def done() -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

        self._loop.call_soon_threadsafe(done)

    # --- row helpers (pure) ------------------------------------------------------------
    @staticmethod
    def job_op(job: Job) -> _Op:
        return ("INSERT OR REPLACE INTO jobs (id, seq, data) VALUES (?, ?, ?)",
                (job.id, job.seq, json.dumps(job.to_row())))

    TASK_SQL = "INSERT OR REPLACE INTO tasks (id, job_id, idx, data) VALUES (?, ?, ?, ?)"

    @staticmethod
    def task_row(t: Task) -> tuple[str, str, int, str]:
        return (t.id, t.job_id, t.index, json.dumps(t.to_json()))

    @staticmethod
    def output_op(o: Output) -> _Op:
        return ("INSERT OR REPLACE INTO outputs (job_id, name, task_id, frame, sha256, size, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (o.job_id, o.name, o.task_id, o.frame, o.sha256, o.size, o.created))

    @staticmethod
    def node_op(n: NodeRecord) -> _Op:
        data = {"uid": n.uid, "name": n.name, "info": n.info, "drained": n.drained,
                "disabled": n.disabled,
                "last_seen": n.last_seen, "frames_rendered": n.frames_rendered,
                "tiles_rendered": n.tiles_rendered,
                "token_id": n.token_id}
        return ("INSERT OR REPLACE INTO nodes (uid, data) VALUES (?, ?)", (n.uid, json.dumps(data)))

    @staticmethod
    def spec_op(job: Job) -> _Op:
        return ("INSERT OR REPLACE INTO specs (job_id, spec) VALUES (?, ?)",
                (job.id, json.dumps(job.spec.to_dict())))

    @staticmethod
    def delete_job_ops(job_id: str) -> list[_Op]:
        return [("DELETE FROM outputs WHERE job_id=?", (job_id,)),
                ("DELETE FROM tasks WHERE job_id=?", (job_id,)),
                ("DELETE FROM specs WHERE job_id=?", (job_id,)),
                ("DELETE FROM jobs WHERE id=?", (job_id,))]

    # --- reads (start-up only) ------------------------------------------------------------
    @staticmethod
    def _load(db: sqlite3.Connection) -> Loaded:
        out = Loaded()
        for data, spec in db.execute("SELECT j.data, s.spec FROM jobs j JOIN specs s "
                                     "ON s.job_id = j.id ORDER BY j.seq"):
            out.jobs.append(Job.from_row(json.loads(data), json.loads(spec)))
        for (data,) in db.execute("SELECT data FROM tasks ORDER BY job_id, idx"):
            out.tasks.append(Task.from_json(json.loads(data)))
        for row in db.execute("SELECT job_id, task_id, frame, name, sha256, size, created "
                              "FROM outputs"):
            out.outputs.append(Output(*row))
        for (data,) in db.execute("SELECT data FROM nodes"):
            d = json.loads(data)
            out.nodes.append(NodeRecord(uid=d["uid"], name=d["name"], info=d.get("info", {}),
                                        drained=d.get("drained", False),
                                        disabled=d.get("disabled", False),
                                        last_seen=d.get("last_seen", 0.0),
                                        frames_rendered=d.get("frames_rendered", 0),
                                        tiles_rendered=d.get("tiles_rendered", 0),
                                        token_id=d.get("token_id")))
        return out


def prepare(db: sqlite3.Connection, path: Path) -> None:
    """Bring a connection's database to this schema: the one place every user of
    ``farm.db`` (the server's store, ``bf-server token`` from a shell) goes through."""
    db.execute("PRAGMA journal_mode=WAL")
    # A tokens table made before schema 3 (by ``bf-server token`` alone, even before
    # the server first ran) lacks the role column; CREATE ... IF NOT EXISTS keeps it.
    db.executescript(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(tokens)")}
    if "role" not in columns:
        db.execute("ALTER TABLE tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'user'")
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer bf-server "
                         f"(schema {row[0]} > {SCHEMA_VERSION}); upgrade bf-server")
    elif int(row[0]) < SCHEMA_VERSION:
        _migrate(db, int(row[0]))


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring an older database to :data:`SCHEMA_VERSION`, in one transaction."""
    db.execute("BEGIN")
    if version < 2:  # specs out of the job rows
        for job_id, data in db.execute("SELECT id, data FROM jobs").fetchall():
            row = json.loads(data)
            spec = row.pop("spec", None)
            if spec is not None:
                db.execute("INSERT OR REPLACE INTO specs (job_id, spec) VALUES (?, ?)",
                           (job_id, json.dumps(spec)))
                db.execute("UPDATE jobs SET data=? WHERE id=?", (json.dumps(row), job_id))
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
    db.execute("COMMIT")
