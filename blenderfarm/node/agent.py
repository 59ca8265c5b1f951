"""The bf-node agent: one websocket to the server, one task at a time per slot.

It connects out (with backoff, forever), says what it can do (its Blenders and its
slots), accepts tasks, each for one of its slots (:mod:`.slot`: one worker each, with
its own persistent :class:`~.runner_proc.Runner` and spare), downloads each task's
files while the slot's previous one renders (prefetch), uploads every frame as soon
as it is written, and reports. Results the server has not acknowledged survive a
lost connection: they are sent again after the next ``welcome``.

It leaves only when the server says its token is no good or its protocol differs;
any other refusal (a rate limit, its uid in use, a server error, no answer) is
waited out and retried. Names and paths from the server are checked where an
``assign`` arrives, and every path built from them is confined to the work dir
(:mod:`.safe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import logging
import math
import os
import random
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..protocol import PROTOCOL_VERSION
from ..protocol import messages as m
from ..protocol.hashing import sha256_file
from ..protocol.version import __version__
from ..protocol.video import VideoSettings
from .blender import BlenderInfo
from .cache import BlobCache, CacheError
from .config import NodeConfig
from .devices import cards, cpu_threads, slot_layout
from .encode import EncodeError, encode
from .outputs import BadOutput, check_image
from .runner_proc import Runner, RunnerError
from .safe import BadAssign, check_assign, inside
from .slot import Slot

log = logging.getLogger(__name__)

#: refusals that retrying cannot cure: a missing, wrong or revoked token, another protocol.
#: Any other refusal is retried, whatever its ``fatal`` says (a rate limit, a uid in use).
FATAL_CODES = frozenset({"unauthorized", "protocol_version"})
#: seconds between the node's pings when the server's welcome names none, and the bounds
#: of what it may name; a server silent for twice this is left (as the server does a node)
HEARTBEAT, HEARTBEAT_MIN, HEARTBEAT_MAX = 10.0, 1.0, 60.0
#: seconds a slot holding a job's Blender stays idle before it warms a spare beside it
#: (a slot with no Blender warms one at once): not while the job's next task may come
SPARE_IDLE = 1.0
#: the slot a server from before slots names in every assign (the protocol's default):
#: it means the node's first slot
LEGACY_SLOT = "0"


class FatalError(RuntimeError):
    """The server refused this node for good (its token, its protocol version)."""


class Refused(ConnectionError):
    """The server refused this connection for now (``code`` says why): retry later."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Held:
    """A task this node holds: waiting, downloading, or rendering."""

    assign: m.Assign
    prepare: asyncio.Task[None] | None = None
    canceled: bool = False
    started: bool = False
    #: an encode running (FFmpeg, not the slot's Blender): what a cancel stops
    encoding: asyncio.Future[m.OutputRef] | None = None


@dataclass
class _Rendering:
    held: Held
    done: int = 0
    uploads: list[asyncio.Task[list[m.OutputRef]]] = field(default_factory=list)


class Agent:
    def __init__(self, config: NodeConfig, blenders: list[BlenderInfo],
                 slots: list[m.SlotCaps] | None = None, ffmpeg: str = "") -> None:
        """``slots``: the node's slots (None: as ``config`` lays them out); ``ffmpeg``:
        the version of the host's FFmpeg ("" none: it takes no encode tasks)."""
        self.config = config
        self.blenders = blenders
        self.ffmpeg = ffmpeg
        self.uid = config.node_uid()
        self.cache = BlobCache(config.work_dir / "blobs")
        self.held: dict[str, Held] = {}  # by task id, in every slot
        self.reports: dict[str, m.Message] = {}  # task_done / task_failed not yet acked
        if slots is None:
            slots = slot_layout(config.slots, cards(b.devices for b in blenders),
                                cpu_slot=config.cpu_slot, cpu_slots=config.cpu_slots)
        #: the Blenders whose spare could not start: each job starts its own, as before
        self._spare_broken: set[int] = set()
        self.slots = {caps.id: Slot(caps, blenders, config.work_dir, first=n == 0,
                                    threads=self._threads(caps, slots),
                                    broken=self._spare_broken)
                      for n, caps in enumerate(slots)}
        self._stopping = False  # handing back: no new spare
        self._outbox: asyncio.Queue[bytes] | None = None
        self._job_locks: dict[str, asyncio.Lock] = {}
        self._manifests: OrderedDict[str, dict[str, str]] = OrderedDict()  # by job, this connection
        self._laid_out: dict[str, dict[str, str]] = {}  # job -> the manifest its folder holds
        self._http: aiohttp.ClientSession | None = None
        self.connected = asyncio.Event()
        self.frames_rendered = 0
        self._trouble: str | None = None  # the kind of the last failure to connect, logged once
        self._trimming = asyncio.Lock()  # one walk of the cache at a time
        self._chores: set[asyncio.Task[None]] = set()  # referenced until they finish

    def _threads(self, caps: m.SlotCaps, slots: list[m.SlotCaps]) -> int | None:
        """A CPU slot renders with ``threads`` (None: every core), shared among the CPU
        slots where there are several; a GPU slot leaves Cycles its own."""
        if caps.device != "CPU" or sum(s.device == "CPU" for s in slots) == 1:
            return self.config.threads
        return cpu_threads(self.config.threads or os.cpu_count() or 1, slots)

    # --- connection -------------------------------------------------------------------------
    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        self._http = aiohttp.ClientSession(headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        workers = [asyncio.create_task(self._worker(slot), name=f"bf-worker-{slot.id}")
                   for slot in self.slots.values()]
        delay = 0.5
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._session()
                except Refused as exc:
                    self._retrying(f"refused:{exc.code}", "the server %s refused this node (%s): "
                                   "%s", self.config.server, exc.code, exc)
                except aiohttp.ClientResponseError as exc:  # a 429 or 5xx to the upgrade
                    self._retrying(f"http:{exc.status}", "the server %s answered the node's "
                                   "connection with HTTP %s", self.config.server, exc.status)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self._retrying(type(exc).__name__, "server %s unreachable: %s",
                                   self.config.server, exc or type(exc).__name__)
                if time.monotonic() - started > 30:
                    delay = 0.5  # it had been up for a while: start the backoff again
                await asyncio.sleep(delay * (0.75 + random.random() / 2))
                delay = min(delay * 2, self.config.reconnect_max)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await asyncio.gather(*(slot.stop() for slot in self.slots.values()))
            await self._http.close()

    def _retrying(self, kind: str, message: str, *args: object) -> None:
        """Log a failure to connect once, not once per retry, until another kind comes."""
        if kind != self._trouble:
            log.warning(message + "; retrying with backoff", *args)
        else:
            log.debug(message, *args)
        self._trouble = kind

    async def _session(self) -> None:
        assert self._http is not None
        wait = self.config.handshake_timeout
        try:
            # bounded: a server that accepts the connection but never answers (a blackhole,
            # a hung proxy) would hold the node for good
            async with asyncio.timeout(wait):
                ws = await self._http.ws_connect(self.config.ws_url, max_msg_size=m.MAX_MESSAGE)
        except TimeoutError:
            raise TimeoutError(f"no answer to the websocket upgrade within {wait:g} s") from None
        try:
            await self._talk(ws)
        finally:
            # close() answers at once after a receive timeout; a dead peer's full send
            # buffer must not stall it either
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await ws.close()

    async def _talk(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Hello, then the welcome (or a refusal), then frames until the socket goes."""
        wait = self.config.handshake_timeout
        await ws.send_bytes(m.encode(self._hello()))
        try:
            first = await ws.receive(timeout=wait)
        except TimeoutError:
            raise TimeoutError(f"the server did not answer the hello within {wait:g} s") from None
        msg = self._decode(first)
        if isinstance(msg, m.Error):
            self._refused(msg)
        if not isinstance(msg, m.Welcome):
            raise ConnectionError("the server did not welcome this node")
        self._trouble = None
        heartbeat = _heartbeat(msg.settings)
        log.info("connected to %s as %s (%s)", self.config.server, self.config.name, msg.node_id)
        outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._outbox = outbox
        self._manifests.clear()  # the server counts what it sent per connection
        self._laid_out.clear()
        for report in list(self.reports.values()):
            self.send(report)
        helpers = [asyncio.create_task(self._sender(ws, outbox)),
                   asyncio.create_task(_pinger(ws, heartbeat))]
        self.connected.set()
        try:
            while True:
                try:  # a live server answers each ping: silence means it is gone
                    frame = await ws.receive(timeout=2 * heartbeat)
                except TimeoutError:
                    raise ConnectionError(f"the server sent nothing for {2 * heartbeat:g} s, "
                                          "not even an answer to a ping") from None
                if frame.type in _CLOSED:
                    break
                msg = self._decode(frame)
                if msg is not None:
                    self._handle(msg)
        finally:
            self.connected.clear()
            self._outbox = None
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        log.warning("lost the connection to %s", self.config.server)

    def _refused(self, msg: m.Error) -> None:
        """Leave on a refusal that retrying cannot cure; retry on any other, whatever
        its ``fatal`` says (a server may call its rate limit fatal)."""
        if msg.code in FATAL_CODES:
            raise FatalError(msg.message)
        raise Refused(msg.code, msg.message)

    def _hello(self) -> m.Hello:
        blenders = [m.BlenderCaps(**b.to_dict()) for b in self.blenders]
        return m.Hello(protocol=PROTOCOL_VERSION, name=self.config.name, uid=self.uid,
                       token=self.config.token, blender=blenders[0], blenders=blenders,
                       slots=[slot.caps for slot in self.slots.values()],
                       threads=self.config.threads or os.cpu_count() or 1,
                       ram=_ram_bytes(), gpus=self._gpu_names(),
                       tags=self.config.tags, cached_blobs=0,
                       running=list(self.held) + [t for t in self.reports if t not in self.held],
                       holding={t: h.assign.slot for t, h in self.held.items()},
                       agent_version=__version__, ffmpeg=self.ffmpeg)

    def _gpu_names(self) -> list[str]:
        """Each card of the node once, by the name Cycles gives it (its key if none)."""
        names: dict[str, str] = {}
        for blender in self.blenders:
            for d in blender.devices:
                names.setdefault(d.gpu, d.name or d.gpu)
        return list(names.values())

    def _decode(self, frame: aiohttp.WSMessage) -> m.Message | None:
        if frame.type != aiohttp.WSMsgType.BINARY:
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.CLOSING):
                raise ConnectionError("the server closed the connection")
            return None
        try:
            return m.decode(frame.data, m.SERVER_MESSAGES)
        except m.ProtocolError as exc:
            log.error("bad frame from the server: %s", exc)
            return None

    @staticmethod
    async def _sender(ws: aiohttp.ClientWebSocketResponse, outbox: asyncio.Queue[bytes]) -> None:
        while True:
            data = await outbox.get()
            await ws.send_bytes(data)

    def send(self, msg: m.Message) -> None:
        """Send if connected; reports are kept in ``self.reports`` and resent anyway."""
        if self._outbox is not None:
            self._outbox.put_nowait(m.encode(msg))

    def _handle(self, msg: m.Message) -> None:
        if isinstance(msg, m.Assign):
            if not self._checked(msg) or not self._manifest_of(msg):
                return
            if msg.task_id in self.held:
                return
            # a new attempt supersedes the report of an earlier one
            self.reports.pop(msg.task_id, None)
            held = Held(msg)
            held.prepare = asyncio.create_task(self._prepare(msg))
            self.held[msg.task_id] = held
            self.slots[msg.slot].wake.set()
        elif isinstance(msg, m.Cancel):
            self._cancel(msg.task_id, msg.reason)
        elif isinstance(msg, m.Ack):
            self.reports.pop(msg.task_id, None)
        elif isinstance(msg, m.Error):
            if msg.fatal:
                self._refused(msg)
            log.error("server says: %s (%s)", msg.message, msg.code)

    def _checked(self, a: m.Assign) -> bool:
        """Check the assign's names and paths before any is used (:mod:`.safe`); False,
        with the task reported failed for good, for one the node will not use."""
        try:
            check_assign(a)
            self._place(a)
            # where it would write: refused now, not after a download
            self.job_dir(a.job_id)
            self.out_dir(a.task_id)
            self.in_dir(a.task_id)
            self.log_path(a.job_id, self.slots[a.slot])
            for ref in a.inputs:
                inside(self.in_dir(a.task_id), ref.name)
            if a.kind == m.ENCODE:
                if not self.ffmpeg:
                    raise BadAssign("the server sent an encode task, and this node has no "
                                    "FFmpeg")
                try:
                    VideoSettings.from_dict(a.video)
                except ValueError as exc:
                    raise BadAssign(f"the server sent video settings this node will not "
                                    f"use: {exc}") from None
        except BadAssign as exc:
            self.reports[a.task_id] = report = _bad_assign(a.task_id, exc)
            self.send(report)
            return False
        return True

    def _place(self, a: m.Assign) -> None:
        """Check the assign's slot and Blender, and name its slot as this node does (a
        server from before slots says "0": the first slot), or raise BadAssign."""
        if a.slot not in self.slots and a.slot == LEGACY_SLOT:
            a.slot = next(iter(self.slots))
        if a.slot not in self.slots:
            raise BadAssign(f"the server sent a task for slot {a.slot!r}, which this node "
                            f"does not have (its slots: {', '.join(self.slots)})")
        if not 0 <= a.blender < len(self.blenders):
            raise BadAssign(f"the server sent a task for Blender {a.blender}, and this node "
                            f"has {len(self.blenders)} (0 to {len(self.blenders) - 1})")

    def _manifest_of(self, a: m.Assign) -> bool:
        """Fill in a manifest the server left out (this connection carried it already);
        False, with the task reported failed, in the one case where it cannot be."""
        job_id = a.job_id
        if a.manifest:
            self._manifests[job_id] = a.manifest
        elif job_id in self._manifests:
            a.manifest = self._manifests[job_id]
        else:
            log.error("task %s came without its job's manifest, which this node lacks",
                      a.task_id)
            self.send(m.TaskFailed(task_id=a.task_id, reason="no_manifest", retryable=True,
                                   error="the server left out the job's manifest, which "
                                         "this node does not have"))
            return False
        self._manifests.move_to_end(job_id)
        while len(self._manifests) > 2 * m.MANIFESTS_REMEMBERED:  # more than the server's
            old, _ = self._manifests.popitem(last=False)
            self._laid_out.pop(old, None)
        return True

    def _cancel(self, task_id: str, reason: str) -> None:
        held = self.held.get(task_id)
        if held is None:
            return
        log.info("task %s canceled: %s", task_id, reason)
        held.canceled = True
        if held.encoding is not None:
            held.encoding.cancel()
        elif held.started:
            runner = self.slots[held.assign.slot].runner
            if runner is not None:
                runner.kill()  # the slot's worker sees the error and drops the task
        else:
            self.held.pop(task_id, None)
            if held.prepare is not None:
                held.prepare.cancel()

    # --- files ------------------------------------------------------------------------------
    async def _prepare(self, a: m.Assign) -> None:
        """Download what the cache lacks and lay out the job folder, once per manifest:
        the next tasks of the job find it laid out (one check of its .blend, not one
        per file of a project that may have thousands). A task's inputs (the tiles a
        merge reads, the frames of a video) go to its own input folder; an encode
        needs nothing else."""
        if a.inputs:
            await self._fetch_inputs(a)
        if a.kind == m.ENCODE:
            return
        lock = self._job_locks.setdefault(a.job_id, asyncio.Lock())
        async with lock:  # prefetched tasks of one job lay out the same folder
            main = inside(self.job_dir(a.job_id), a.blend)
            if self._laid_out.get(a.job_id) is a.manifest and \
                    await asyncio.to_thread(main.is_file):
                return
            shas = list(dict.fromkeys(a.manifest.values()))
            missing = await asyncio.to_thread(lambda: [s for s in shas if not self.cache.has(s)])
            for sha in missing:
                await self._download(sha)
            await asyncio.to_thread(self._lay_out, a.manifest, self.job_dir(a.job_id), shas)
            self._laid_out[a.job_id] = a.manifest
        if missing:  # the cache grew: back within its bound
            await self._trim_cache()

    async def _fetch_inputs(self, a: m.Assign) -> None:
        shas = list(dict.fromkeys(ref.sha256 for ref in a.inputs))
        missing = await asyncio.to_thread(lambda: [s for s in shas if not self.cache.has(s)])
        for sha in missing:
            await self._download(sha)
        in_dir = self.in_dir(a.task_id)
        await asyncio.to_thread(_fresh_dir, in_dir)
        await asyncio.to_thread(self._lay_out, {ref.name: ref.sha256 for ref in a.inputs},
                                in_dir, shas)

    def _lay_out(self, manifest: dict[str, str], job_dir: Path, shas: list[str]) -> None:
        self.cache.materialise(manifest, job_dir)
        self.cache.touch(shas)  # used now: the last to be trimmed

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _trim_cache(self) -> None:
        """Remove least recently used blobs past ``cache_size``; never those of a task
        this node holds (rendering, downloading or waiting), nor the folder of such a
        job or of the job the persistent Blender has open."""
        async with self._trimming:
            pinned = {sha for h in self.held.values() for sha in h.assign.manifest.values()}
            pinned |= {ref.sha256 for h in self.held.values() for ref in h.assign.inputs}
            in_use = {h.assign.job_id for h in self.held.values()}
            in_use |= {s.runner_job for s in self.slots.values() if s.runner_job is not None}
            try:
                done = await asyncio.to_thread(self.cache.trim, self.config.cache_size, pinned,
                                               self.config.work_dir / "jobs", in_use)
            except OSError as exc:  # a cache it cannot trim still serves: say so, go on
                log.warning("could not trim the blob cache: %s", exc)
                return
        for job_id in done.jobs:
            self._laid_out.pop(job_id, None)
        if done.files or done.jobs:
            log.info("cache past its bound (%d bytes): removed %d file(s), %d bytes, and "
                     "%d job folder(s); it holds %d bytes", self.config.cache_size,
                     done.files, done.freed, len(done.jobs), done.size)
        if done.size > self.config.cache_size:
            log.warning("the cache holds %d bytes, more than cache_size (%d): the files of "
                        "the tasks this node holds need that much", done.size,
                        self.config.cache_size)

    async def _download(self, sha: str) -> None:
        assert self._http is not None
        url = f"{self.config.server.rstrip('/')}/api/blobs/{sha}"
        for attempt in range(5):
            try:
                async with self._http.get(url) as resp:
                    if resp.status == 404:
                        raise CacheError(f"the server has no file {sha[:12]}", sha)
                    resp.raise_for_status()
                    fd, tmp = await asyncio.to_thread(self.cache.open_temp)
                    h = hashlib.sha256()
                    try:
                        with os.fdopen(fd, "wb") as f:
                            async for chunk in resp.content.iter_chunked(1 << 20):
                                await asyncio.to_thread(_hash_write, h, f, chunk)
                    except BaseException:
                        await asyncio.to_thread(_unlink, tmp)  # a full disk keeps no scraps
                        raise
                    await asyncio.to_thread(self.cache.commit, tmp, sha, h.hexdigest())
                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == 4:
                    raise CacheError(f"could not download {sha[:12]}: {exc}", sha) from exc
                await asyncio.sleep(0.5 * 2**attempt)

    # Every path built from the server's names comes from these, confined to the work dir.
    def job_dir(self, job_id: str) -> Path:
        return inside(self.config.work_dir, "jobs", job_id)

    def out_dir(self, task_id: str) -> Path:
        return inside(self.config.work_dir, "out", task_id)

    def in_dir(self, task_id: str) -> Path:
        """Where a task's inputs are laid out (named as their tasks reported them)."""
        return inside(self.config.work_dir, "in", task_id)

    def log_path(self, job_id: str, slot: Slot) -> Path:
        """The job's Blender log of that slot: slots write whole lines only to their own
        (the first slot's is ``<job>.log``, as on a node before slots)."""
        return inside(self.config.work_dir, "logs", f"{job_id}{slot.suffix}.log")

    # --- rendering --------------------------------------------------------------------------
    async def _worker(self, slot: Slot) -> None:
        """Render the slot's tasks one at a time, in the order they came; idle, warm a
        spare for the next job."""
        while True:
            held = next((h for h in self.held.values()
                         if not h.started and h.assign.slot == slot.id), None)
            if held is None:
                slot.wake.clear()
                if self._wants_spare(slot):
                    if slot.runner is not None:  # the job's next task may be on its way
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(slot.wake.wait(), SPARE_IDLE)
                    if not slot.wake.is_set():
                        slot.warm_spare()
                await slot.wake.wait()
                continue
            held.started = True
            try:
                report = await self._run_task(held, slot)
            except asyncio.CancelledError:
                raise
            except BadAssign as exc:  # a path found to lead out of the work dir
                report = _bad_assign(held.assign.task_id, exc)
            except Exception as exc:  # a bug must not kill the node: fail the task, go on
                log.exception("task %s crashed the agent", held.assign.task_id)
                report = m.TaskFailed(task_id=held.assign.task_id, error=f"agent error: {exc}",
                                      reason="agent")
            self.held.pop(held.assign.task_id, None)
            if report is not None and not held.canceled:
                self.reports[held.assign.task_id] = report
                self.send(report)

    async def _run_task(self, held: Held, slot: Slot) -> m.Message | None:
        a = held.assign
        t0 = time.monotonic()
        try:
            assert held.prepare is not None
            await held.prepare
        except asyncio.CancelledError:
            return None
        except (CacheError, OSError) as exc:
            return m.TaskFailed(task_id=a.task_id, error=_disk_message(exc, "download the files"),
                                reason="download_failed", retryable=True)
        out_dir = self.out_dir(a.task_id)
        await asyncio.to_thread(_fresh_dir, out_dir)
        state = _Rendering(held)
        lines: list[str] = []
        forward = asyncio.create_task(self._forward_log(a.task_id, lines))
        info: dict[str, Any] = {}
        try:
            if a.kind == m.ENCODE:
                held.encoding = asyncio.ensure_future(self._encode(a, out_dir))
                try:
                    outputs = [await held.encoding]
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if held.canceled and not (task and task.cancelling()):
                        return None  # canceled by the server (or the node stopping)
                    held.encoding.cancel()
                    raise
            else:
                runner = await self._runner_for(a, slot)
                runner.on_log = lines.append
                await self._run_in_blender(a, slot, runner, state, str(out_dir))
                info = dict(runner.last_info) if a.kind == m.RENDER else {}
                outputs = [ref for refs in await asyncio.gather(*state.uploads) for ref in refs]
        except (RunnerError, EncodeError) as exc:
            for up in state.uploads:
                up.cancel()
            if exc.reason in ("crash", "watchdog", "bad_blend", "startup_failed", "startup_timeout",
                              "not_running"):
                await slot.drop_runner()
            if held.canceled:
                return None
            return m.TaskFailed(task_id=a.task_id, error=exc.message, log_tail=exc.log_tail,
                                retryable=exc.retryable, reason=exc.reason)
        except (BadOutput, OSError) as exc:
            return m.TaskFailed(task_id=a.task_id, error=_disk_message(exc, "deliver a frame"),
                                reason="bad_output", retryable=True)
        finally:
            forward.cancel()
            self._send_log(a.task_id, lines)
            if slot.runner is not None:
                slot.runner.on_log = None
            if not self.config.persistent:
                await slot.drop_runner()
        if a.kind != m.ENCODE:
            self.frames_rendered += len({ref.frame for ref in outputs})  # not its extra outputs
        await asyncio.to_thread(shutil.rmtree, out_dir, True)
        await asyncio.to_thread(shutil.rmtree, self.in_dir(a.task_id), True)
        return m.TaskDone(task_id=a.task_id, outputs=outputs, seconds=time.monotonic() - t0,
                          info=info)

    async def _run_in_blender(self, a: m.Assign, slot: Slot, runner: Runner,
                              state: _Rendering, out_dir: str) -> None:
        """A render (whole frames, or one tile) or a merge, in the slot's Blender."""
        common: dict[str, Any] = dict(
            scene=a.scene, overrides=self._overrides(a, slot), output_dir=out_dir,
            output_name=a.output_name, output_pattern=a.output_pattern,
            on_event=self._on_event(state), watchdog=self.config.watchdog)
        if a.kind == m.MERGE:
            in_dir = self.in_dir(a.task_id)
            tiles = [{"path": str(inside(in_dir, ref.name)), "index": ref.tile.index,
                      "cols": ref.tile.cols, "rows": ref.tile.rows}
                     for ref in a.inputs if ref.tile is not None]
            await runner.merge(a.task_id, a.frames[0], tiles, **common)
            return
        await runner.render(a.task_id, a.frames, **common,
                            opengl=self.blenders[a.blender].opengl,
                            devices=slot.devices(a.blender),
                            tile=None if a.tile is None else dataclasses.asdict(a.tile))

    async def _encode(self, a: m.Assign, out_dir: Path) -> m.OutputRef:
        """Encode the task's frames (its inputs, in frame order) into the job's video."""
        settings = VideoSettings.from_dict(a.video)
        in_dir = self.in_dir(a.task_id)
        frames = [str(inside(in_dir, ref.name)) for ref in a.inputs]
        if not frames:
            raise EncodeError("The video has no frames to encode.", "bad_input", False)
        out = str(inside(out_dir, settings.output))

        def progress(fraction: float) -> None:
            self.send(m.Progress(task_id=a.task_id, fraction=max(0.0, min(1.0, fraction))))

        await encode(settings, frames, out, on_progress=progress,
                     watchdog=self.config.watchdog)
        return await self._deliver_file(a, a.inputs[0].frame, out, image=False)

    async def _forward_log(self, task_id: str, lines: list[str]) -> None:
        """Ship what Blender printed about once a second: the dashboard's live log."""
        while True:
            await asyncio.sleep(1.0)
            self._send_log(task_id, lines)

    def _send_log(self, task_id: str, lines: list[str]) -> None:
        if lines:
            self.send(m.Log(task_id=task_id, text="\n".join(lines)[-200_000:]))
            lines.clear()

    async def hand_back(self) -> None:
        """On shutdown: give every held task back to the farm, unfinished, at once."""
        self._stopping = True
        for task_id, held in list(self.held.items()):
            held.canceled = True
            if held.encoding is not None:
                held.encoding.cancel()
            self.send(m.TaskFailed(task_id=task_id, error="the node is shutting down",
                                   reason="node_stopping", retryable=True))
        for slot in self.slots.values():
            slot.kill()
        await asyncio.sleep(0.2)  # let the sender flush before the socket closes

    @staticmethod
    def _overrides(a: m.Assign, slot: Slot) -> dict[str, Any]:
        overrides = dict(a.overrides)
        if slot.threads:
            overrides["threads"] = slot.threads
        return overrides

    async def _runner_for(self, a: m.Assign, slot: Slot) -> Runner:
        """The slot's runner for the task's job and Blender (its own, its spare, or new)."""
        if slot.has_runner(a.job_id, a.blender):
            assert slot.runner is not None
            return slot.runner
        let_go = slot.runner_job not in (None, a.job_id)
        await slot.drop_runner()
        if let_go:  # the last job's folder may be no longer in use: the cache may shrink
            self._background(self._trim_cache())
        job_dir, log_path = self.job_dir(a.job_id), self.log_path(a.job_id, slot)
        await asyncio.to_thread(log_path.parent.mkdir, parents=True, exist_ok=True)
        return await slot.start_runner(
            a.job_id, a.blender, str(inside(job_dir, a.blend)), cwd=str(job_dir),
            log_path=str(log_path), allow_scripts=a.allow_scripts and self.config.allow_scripts)

    def _wants_spare(self, slot: Slot) -> bool:
        # a node whose runners are not persistent starts one per task, as it always did
        return self.config.persistent and not self._stopping and slot.wants_spare()

    def _on_event(self, state: _Rendering) -> Callable[[dict[str, Any]], None]:
        a = state.held.assign
        total = len(a.frames)

        def on_event(ev: dict[str, Any]) -> None:
            kind = ev.get("ev")
            if kind in ("frame_start", "progress"):
                frac = float(ev.get("fraction", 0.0)) if kind == "progress" else 0.0
                self.send(m.Progress(task_id=a.task_id, frame=ev.get("frame"),
                                     fraction=min(1.0, (state.done + frac) / total),
                                     frames_done=state.done, message=str(ev.get("stats", ""))[:200]))
            elif kind == "frame_done":
                state.done += 1
                extras = [str(p) for p in ev.get("extras") or []]  # File Output nodes' files
                state.uploads.append(asyncio.create_task(
                    self._deliver(a, int(ev["frame"]), str(ev["path"]), extras)))

        return on_event

    async def _deliver(self, a: m.Assign, frame: int, path: str,
                       extras: list[str]) -> list[m.OutputRef]:
        """Deliver a written frame, then the extra outputs its File Output nodes wrote
        (named by the runner, ``runner.file_output_name``) as outputs of the same frame:
        the frame first, so a frame never counts as done on the server by a pass alone."""
        return [await self._deliver_file(a, frame, p) for p in (path, *extras)]

    async def _deliver_file(self, a: m.Assign, frame: int, path: str,
                            image: bool = True) -> m.OutputRef:
        """Check a written file (an image, unless ``image`` is False: a video, which its
        encoder checked), upload it (retrying through outages), announce it."""
        await asyncio.to_thread(_regular_file, path)
        if image:
            await asyncio.to_thread(check_image, path)
        sha = await asyncio.to_thread(sha256_file, path)
        size = await asyncio.to_thread(os.path.getsize, path)
        await self._upload(sha, path, size)
        name = os.path.basename(path)
        self.send(m.FrameDone(task_id=a.task_id, frame=frame, sha256=sha, size=size, name=name))
        return m.OutputRef(frame=frame, sha256=sha, size=size, name=name)

    async def _upload(self, sha: str, path: str, size: int) -> None:
        assert self._http is not None
        url = f"{self.config.server.rstrip('/')}/api/blobs/{sha}"
        delay = 0.5
        while True:
            f = await asyncio.to_thread(open, path, "rb")
            try:
                async with self._http.put(url, data=f, headers={
                        "Content-Length": str(size),
                        "Content-Type": "application/octet-stream"}) as resp:
                    if resp.status in (200, 201):
                        return
                    text = await resp.text()
                    if resp.status < 500:
                        raise OSError(f"the server refused the frame: {resp.status} {text[:200]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("upload of %s failed (%s); retrying", os.path.basename(path), exc)
            finally:
                await asyncio.to_thread(f.close)
            await asyncio.sleep(delay)  # the server may be restarting: keep the frame, retry
            delay = min(delay * 2, self.config.reconnect_max)


_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
           aiohttp.WSMsgType.ERROR)


async def _pinger(ws: aiohttp.ClientWebSocketResponse, every: float) -> None:
    """Ping the server every ``every`` seconds: its pongs keep the receive loop's
    timeout from running out on a quiet but live connection."""
    try:
        while True:
            await asyncio.sleep(every)
            await ws.ping()
    except (ConnectionError, RuntimeError, aiohttp.ClientError):
        return  # the socket is gone; the receive loop notices on its own


def _heartbeat(settings: dict[str, Any]) -> float:
    """The server's heartbeat from its welcome, bounded; the default where it names none."""
    value = settings.get("heartbeat")
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value):
        return HEARTBEAT
    return min(max(float(value), HEARTBEAT_MIN), HEARTBEAT_MAX)


def _bad_assign(task_id: str, exc: BadAssign) -> m.TaskFailed:
    log.error("refused task %r: %s", task_id, exc)
    return m.TaskFailed(task_id=task_id, error=f"this node refused the task: {exc}",
                        reason="bad_assign", retryable=False)


def _hash_write(h: Any, f: Any, chunk: bytes) -> None:
    h.update(chunk)
    f.write(chunk)


def _regular_file(path: str) -> None:
    # the runner moves only regular files into the task's folder; a link there would
    # upload whatever it points to
    if os.path.islink(path):
        raise BadOutput("the output is a symbolic link, not a file", path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _disk_message(exc: BaseException, doing: str) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"the node's disk is full: could not {doing}{where}"
    return f"could not {doing}: {exc}"


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
