"""Who may do what to jobs and nodes: the one check every action calls.

An :class:`Actor` is who makes a request: the name of its user token and whether
that token is an admin's; on an open farm (no tokens) everyone is an admin of their
own machine's farm. Users control the jobs they submitted; admins control every job
and the nodes. Everyone sees the farm's job list (it is a shared farm); whether a
user may read another user's outputs and logs is the ``share_outputs`` setting
(default: yes, as studios share). Pure: no I/O, tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .auth import TOKEN_INFO
from .errors import FarmError
from .models import Job
from .tokens import TokenInfo


@dataclass(frozen=True)
class Actor:
    name: str
    admin: bool

    def may_control(self, job: Job) -> bool:
        return self.admin or job.owner == self.name

    def may_read(self, job: Job, share_outputs: bool) -> bool:
        return share_outputs or self.may_control(job)

    def to_json(self, share_outputs: bool) -> dict[str, Any]:
        """What the dashboard, bf and the add-on need to show what this token may do."""
        return {"name": self.name, "role": "admin" if self.admin else "user",
                "may": {"control_own_jobs": True, "control_all_jobs": self.admin,
                        "control_nodes": self.admin,
                        "read_all_outputs": self.admin or share_outputs}}


#: the actor of an open farm (no token exists): whoever can reach it owns it
OPEN = Actor(name="", admin=True)


def actor(request: web.Request) -> Actor:
    info = request.get(TOKEN_INFO)
    if isinstance(info, TokenInfo):
        return Actor(name=info.name, admin=info.admin)
    return OPEN


def require_control(who: Actor, job: Job) -> None:
    if not who.may_control(job):
        raise FarmError(f"job {job.id} belongs to {job.owner or 'nobody'}; only its owner or "
                        "an admin may change it", "forbidden", 403)


def require_read(who: Actor, job: Job, share_outputs: bool) -> None:
    if not who.may_read(job, share_outputs):
        raise FarmError(f"the outputs and logs of job {job.id} are its owner's "
                        f"({job.owner}); this farm does not share them (share_outputs)",
                        "forbidden", 403)


def require_admin(who: Actor, what: str) -> None:
    if not who.admin:
        raise FarmError(f"only an admin may {what}", "forbidden", 403)
