"""Webhooks: POST ``{"event": "job.completed"|"job.failed", "job": {...}}`` when a job
ends, to the job's own ``webhook`` and the server-wide ``webhook_url``.

Deliveries run in background tasks, retried with exponential backoff (1, 2, 4 ...
seconds, 6 tries) on errors and 5xx answers; a slow or dead receiver never slows
the farm. Each job end is announced once per server run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from .farm import Farm
from .keys import FARM

log = logging.getLogger(__name__)
TRIES = 6
ENDS = {"completed": "job.completed", "failed": "job.failed"}


class Webhooks:
    def __init__(self, server_url: str | None, job_url: Callable[[str], str | None],
                 base_delay: float = 1.0) -> None:
        self.server_url = server_url
        self.job_url = job_url  # a job's own webhook, by job id
        self.base_delay = base_delay
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.sent: set[tuple[str, str]] = set()

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") != "job":
            return
        job = event["job"]
        name = ENDS.get(job.get("status"))
        if name is None or (job["id"], name) in self.sent:
            return
        self.sent.add((job["id"], name))
        for url in {self.job_url(job["id"]), self.server_url} - {None}:
            task = asyncio.create_task(self._deliver(str(url), {"event": name, "job": job}))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        assert self.session is not None
        for attempt in range(TRIES):
            try:
                async with self.session.post(url, json=body) as resp:
                    if resp.status < 500:
                        if resp.status >= 400:
                            log.warning("webhook %s refused %s: HTTP %d", url, body["event"],
                                        resp.status)
                        return
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            delay = self.base_delay * 2**attempt
            log.warning("webhook %s for job %s failed (%s); retry in %.0fs", url,
                        body["job"]["id"], reason, delay)
            await asyncio.sleep(delay)
        log.error("webhook %s for job %s gave up after %d tries", url, body["job"]["id"], TRIES)


WEBHOOKS = web.AppKey("webhooks", Webhooks)


def setup_webhooks(app: web.Application, farm: Farm) -> None:
    def job_url(job_id: str) -> str | None:
        job = farm.jobs.get(job_id)
        return job.spec.webhook if job is not None else None

    app[WEBHOOKS] = Webhooks(farm.config.webhook_url, job_url)
    app.cleanup_ctx.append(_ctx)


async def _ctx(app: web.Application) -> AsyncIterator[None]:
    hooks, farm = app[WEBHOOKS], app[FARM]
    hooks.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    farm.listeners.append(hooks.on_event)
    yield
    farm.listeners.remove(hooks.on_event)
    for task in list(hooks.tasks):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*hooks.tasks, return_exceptions=True)
    await hooks.session.close()

