"""Webhooks: POST ``{"event": "job.completed"|"job.failed", "job": {...}}`` when a job
ends, to the job's own ``webhook`` and the server-wide ``webhook_url``.

Deliveries run in background tasks, retried with exponential backoff (1, 2, 4 ...
seconds, 6 tries) on errors and 5xx answers; a slow or dead receiver never slows
the farm. Each job end is announced once per server run.

A job's own webhook is a URL from whoever submitted it, and the server POSTs from
inside the studio's network: it may reach only public addresses, and those hosts or
networks the server's ``webhook_allow`` setting names. The check is made on the
addresses the name resolves to when the server connects (a resolver that drops the
others), so a name that points somewhere else later gains nothing. The server-wide
``webhook_url`` is the administrator's and goes anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .farm import Farm
from .keys import FARM

log = logging.getLogger(__name__)
TRIES = 6
ENDS = {"completed": "job.completed", "failed": "job.failed"}


class WebhookPolicy:
    """Where a job's own webhook may go: public addresses, plus the hosts and networks
    of ``webhook_allow``."""

    def __init__(self, allow: tuple[str, ...] = ()) -> None:
        self.hosts = {a.lower() for a in allow if not _network(a)}
        self.nets = [n for n in (_network(a) for a in allow) if n is not None]

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def address_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return ip.is_global or any(ip in n for n in self.nets)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be a job's webhook as far as can be told without a DNS
        look-up (a literal address or localhost), or None."""
        host = (urlsplit(url).hostname or "").lower()
        if self.host_allowed(host):
            return None
        if host == "localhost" or host.endswith(".localhost"):
            return "it names this machine"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: checked on what it resolves to, at delivery
        if not self.address_allowed(host):
            return f"{host} is not a public address"
        return None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


class _PolicyResolver(AbstractResolver):
    """Resolves as usual, then keeps only the addresses the policy allows."""

    def __init__(self, policy: WebhookPolicy) -> None:
        self.policy = policy
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        if self.policy.host_allowed(host):
            return found
        kept = [r for r in found if self.policy.address_allowed(r["host"])]
        if not kept:
            raise OSError(f"{host} resolves only to addresses a job's webhook may not reach "
                          "(not public, not in webhook_allow)")
        return kept

    async def close(self) -> None:
        await self.inner.close()


class Webhooks:
    def __init__(self, server_url: str | None, job_url: Callable[[str], str | None],
                 base_delay: float = 1.0, policy: WebhookPolicy | None = None) -> None:
        self.server_url = server_url
        self.job_url = job_url  # a job's own webhook, by job id
        self.base_delay = base_delay
        self.policy = policy or WebhookPolicy()
        self.session: aiohttp.ClientSession | None = None  # the administrator's URL
        self.job_session: aiohttp.ClientSession | None = None  # jobs' URLs: the policy
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
        body = {"event": name, "job": job}
        targets = [(self.server_url, self.session), (self.job_url(job["id"]), self.job_session)]
        for url, session in targets:
            if url is None or (url == self.server_url and session is self.job_session):
                continue
            task = asyncio.create_task(self._deliver(str(url), body, session))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _deliver(self, url: str, body: dict[str, Any],
                       session: aiohttp.ClientSession | None) -> None:
        assert session is not None
        for attempt in range(TRIES):
            try:
                async with session.post(url, json=body) as resp:
                    if resp.status < 500:
                        if resp.status >= 400:
                            log.warning("webhook %s refused %s: HTTP %d", url, body["event"],
                                        resp.status)
                        return
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
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

    app[WEBHOOKS] = Webhooks(farm.config.webhook_url, job_url,
                             policy=WebhookPolicy(farm.config.webhook_allow))
    app.cleanup_ctx.append(_ctx)


async def _ctx(app: web.Application) -> AsyncIterator[None]:
    hooks, farm = app[WEBHOOKS], app[FARM]
    hooks.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    hooks.job_session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=15),
        connector=aiohttp.TCPConnector(resolver=_PolicyResolver(hooks.policy)))
    farm.listeners.append(hooks.on_event)
    yield
    farm.listeners.remove(hooks.on_event)
    for task in list(hooks.tasks):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*hooks.tasks, return_exceptions=True)
    await hooks.session.close()
    await hooks.job_session.close()

