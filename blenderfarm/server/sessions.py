"""Nodes come and go: their live websockets (:class:`NodeSession`), and connect,
reconcile, disconnect, seen, the grace period, lost, and forgetting old records.

A node's record outlives its connection: when its socket drops, what it holds waits
:attr:`~ServerConfig.grace_period` seconds for it to come back before going back to the
queue. What a reconnecting node says it holds is matched with what the farm thinks
(:meth:`SessionsMixin._reconcile`). No I/O here but frames queued on a session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from ..protocol import messages as m
from . import slots
from .models import JOB_FINAL, TASK_FINAL, TASK_HELD, NodeRecord, Task
from .state import FarmState

log = logging.getLogger(__name__)

#: a node heard from (any frame: a message, a ping, a pong) is news for watchers when its
#: last_seen moved this far since they last heard, and worth a row write this far since
#: the last one: heartbeats never cost a journal write each
SEEN_NEWS = 5.0
SEEN_SAVE = 60.0


class NodeSession:
    """One live websocket of a node: frames to send wait in a queue."""

    def __init__(self, record: NodeRecord) -> None:
        self.record = record
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self._manifests: OrderedDict[str, None] = OrderedDict()  # jobs, most recent last

    def has_manifest(self, job_id: str) -> bool:
        """Whether the node has this job's manifest from this connection; either way it
        counts as sent now (the caller sends it when the answer is no)."""
        known = job_id in self._manifests
        self._manifests[job_id] = None
        self._manifests.move_to_end(job_id)
        if len(self._manifests) > m.MANIFESTS_REMEMBERED:
            self._manifests.popitem(last=False)
        return known

    def send(self, msg: m.Message) -> bool:
        """Queue a frame; False (and nothing sent) when it cannot be encoded."""
        if self.closed:
            return True
        try:
            data = m.encode(msg)
        except m.ProtocolError as exc:
            log.error("not sent to node %s: %s", self.record.name, exc)
            return False
        self.outbox.put_nowait(data)
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


class SessionsMixin(FarmState):
    """The farm's side of nodes connecting, staying and going."""

    def node_connected(self, hello: m.Hello, session: NodeSession) -> None:
        rec = session.record
        self._add_session(session)
        timer = self._timers.pop(rec.uid, None)
        if timer:
            timer.cancel()
        rec.online, rec.lost_at, rec.connected_at = True, None, time.time()
        rec.last_seen = rec.seen_saved = time.time()  # the commit below writes the row
        rec.frames.clear()
        changed = self._reconcile(rec, session, hello.running, hello.holding)
        log.info("node %s (%s) connected: Blender %s, %d slot(s), holds %d task(s)", rec.name,
                 rec.uid, ", ".join(b.version for b in rec.blenders), len(rec.slots),
                 len(rec.tasks))
        # only this node's room changed, unless it gave tasks back to the queue
        self.commit(tasks=changed, nodes=[rec], offer=True if changed else [session])

    def _reconcile(self, rec: NodeRecord, session: NodeSession, claimed: list[str],
                   holding: dict[str, str]) -> list[Task]:
        """Match what a (re)connecting node says it holds, and in which slot, with what we
        think it holds."""
        kept: list[str] = []
        changed: list[Task] = []
        for tid in dict.fromkeys(claimed):  # a task named twice is held once
            task = self.tasks.get(tid)
            job = self.jobs.get(task.job_id) if task else None
            if task is None or job is None or task.status in TASK_FINAL or job.status in JOB_FINAL:
                session.send(m.Cancel(task_id=tid, reason="no longer wanted"))
                continue
            if rec.uid not in task.assignees:  # a claim on a task it was never given
                session.send(m.Cancel(task_id=tid, reason="never given to this node"))
                continue
            if task.status == "queued" and job.status == "paused":
                # a paused job's tasks wait in no queue; this one waits with them
                session.send(m.Cancel(task_id=tid, reason="job paused"))
                continue
            if task.status in TASK_HELD and task.node != rec.uid:
                session.send(m.Cancel(task_id=tid, reason="given to another node"))
                continue
            if not slots.place(rec, holding, task):  # back to the queue, below
                session.send(m.Cancel(task_id=tid, reason="held in a slot the node does "
                                      "not have"))
                continue
            if self.sched.discard(tid):
                task.status = "assigned"
                changed.append(task)
            if tid not in rec.tasks:
                self.sched.hold(job.owner)
            task.node = rec.uid
            if rec.uid not in task.assignees:
                task.assignees.append(rec.uid)
            kept.append(tid)
        for tid in list(rec.tasks):  # a copy: requeue_task removes from rec.tasks
            if tid not in kept and tid in self.tasks and self.tasks[tid].node == rec.uid:
                self.requeue_task(self.tasks[tid])  # the node lost it (restarted)
                changed.append(self.tasks[tid])
        rec.tasks = kept
        return changed

    def _add_session(self, session: NodeSession) -> None:
        """Keep ``sessions`` in order of Blender version, oldest first: dispatch offers
        work in this order, so a job goes to the oldest Blender that can open its file
        (the closest to the artist's). Re-sorted only when a node joins out of order."""
        self.sessions.pop(session.record.uid, None)
        last = next(reversed(self.sessions.values()), None)
        self.sessions[session.record.uid] = session
        if last is not None and _blender_order(session) < _blender_order(last):
            ordered = sorted(self.sessions.values(), key=_blender_order)  # stable
            self.sessions.clear()
            self.sessions.update((s.record.uid, s) for s in ordered)

    def node_disconnected(self, session: NodeSession) -> None:
        rec = session.record
        session.close()
        if self.sessions.get(rec.uid) is not session:
            return
        del self.sessions[rec.uid]
        rec.online, rec.lost_at = False, time.time()
        log.info("node %s (%s) disconnected; holding %d task(s) for %.0fs", rec.name, rec.uid,
                 len(rec.tasks), self.config.grace_period)
        self._arm_grace(rec.uid)
        self.commit(nodes=[rec], offer=False)

    def node_seen(self, rec: NodeRecord) -> None:
        """Any frame from the node (a message, a ping, a pong) says it is alive. Watchers
        hear of it every :data:`SEEN_NEWS` seconds and its row is written every
        :data:`SEEN_SAVE`, so an idle node looks alive and heartbeats stay cheap."""
        now = rec.last_seen = time.time()
        if now - rec.seen_saved >= SEEN_SAVE:
            rec.seen_saved = now
            self.journal.add(nodes=(rec,))
        if now - rec.seen_told >= SEEN_NEWS:
            self.news.changed(rec.uid)

    def _announce(self, uid: str) -> None:
        """:attr:`news`' voice: the node's view as it is now, to every watcher."""
        rec = self.nodes.get(uid)
        if rec is not None:
            rec.seen_told = rec.last_seen
            self.emit("node", node=self.node_json(rec))

    def node_json(self, rec: NodeRecord) -> dict[str, Any]:
        """A node's view, with what each busy slot renders now (``current``: the first
        busy slot's)."""
        busy = slots.doing(rec, self.tasks, self.jobs)
        current = next((busy[s.id] for s in rec.slots if s.id in busy), None)
        return rec.to_json(current, busy)

    def _arm_grace(self, uid: str) -> None:
        loop = asyncio.get_running_loop()
        old = self._timers.pop(uid, None)
        if old:
            old.cancel()
        self._timers[uid] = loop.call_later(self.config.grace_period, self._node_lost, uid)

    def _node_lost(self, uid: str) -> None:
        self._timers.pop(uid, None)
        rec = self.nodes.get(uid)
        if rec is None or rec.online:
            return
        lost = [self.tasks[t] for t in rec.tasks if t in self.tasks]
        for task in lost:
            self.requeue_task(task)
        rec.tasks = []
        if lost:
            log.warning("node %s (%s) gone for %.0fs: requeued %d task(s)", rec.name, uid,
                        self.config.grace_period, len(lost))
        self.commit(tasks=lost)
        self.encode_orphans()

    def _prune_every_hour(self) -> None:
        self.prune_nodes()
        self._timers["\0prune"] = asyncio.get_running_loop().call_later(
            3600, self._prune_every_hour)

    def prune_nodes(self, now: float | None = None) -> list[str]:
        """Forget the records of nodes offline for longer than ``node_retention_days``
        and, past ``max_nodes`` records, of the longest-offline ones; never of a node
        that is online or holds a task. Returns the uids forgotten."""
        now = time.time() if now is None else now
        idle = sorted((r for r in self.nodes.values()
                       if not r.online and not r.tasks and r.uid not in self.sessions),
                      key=lambda r: r.last_seen)
        cutoff = now - self.config.node_retention_days * 86400
        excess = len(self.nodes) - self.config.max_nodes
        gone = [r.uid for i, r in enumerate(idle) if r.last_seen < cutoff or i < excess]
        for uid in gone:
            del self.nodes[uid]
            timer = self._timers.pop(uid, None)
            if timer:
                timer.cancel()
            self.news.forget(uid)
            self.emit("node_deleted", node_id=uid)
        if gone:
            log.info("forgot %d node record(s) offline since before %s, or past max_nodes",
                     len(gone), time.strftime("%Y-%m-%d", time.localtime(cutoff)))
            self.commit(ops=[("DELETE FROM nodes WHERE uid=?", [(u,) for u in gone])],
                        offer=False)
        return gone


def _blender_order(session: NodeSession) -> tuple[int, int]:
    return session.record.oldest_key
