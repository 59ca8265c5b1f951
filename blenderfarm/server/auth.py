"""Who may do what: user tokens for the API, /ws/events and the dashboard; node tokens
for /ws/node and the blob downloads and uploads a render needs.

While no valid token exists the server runs open (the one-machine case; the CLI
refuses to listen beyond loopback like that without ``--insecure``). Once one
exists, every ``/api/`` call needs ``Authorization: Bearer <token>``. Failed
attempts are counted per client address and answered 429 past a limit. Tokens
are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from .tokens import TokenCache, TokenInfo

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: where the middleware leaves the request's TokenInfo for the handlers (a typed key
#: where this aiohttp has them)
TOKEN_INFO: Any = (web.RequestKey("token", TokenInfo) if hasattr(web, "RequestKey")
                   else "blenderfarm.token")
MAX_FAILURES = 20  # per address and window
WINDOW = 60.0


class Auth:
    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache
        self._failures: dict[str, deque[float]] = {}

    @property
    def required(self) -> bool:
        return self.cache.required

    async def refresh(self, force: bool = False) -> None:
        if force or self.cache.stale:
            await asyncio.to_thread(self.cache.refresh)

    async def lookup(self, secret: str | None) -> TokenInfo | None:
        info = self.cache.lookup(secret)
        if info is None and secret and self.cache.stale:  # created a moment ago?
            await self.refresh()
            info = self.cache.lookup(secret)
        return info

    def limited(self, peer: str) -> bool:
        q = self._failures.get(peer)
        if not q:
            return False
        while q and q[0] < time.monotonic() - WINDOW:
            q.popleft()
        return len(q) >= MAX_FAILURES

    def failed(self, peer: str) -> None:
        self._failures.setdefault(peer, deque()).append(time.monotonic())
        if len(self._failures) > 10_000:  # bound memory under a spray of addresses
            self._failures.pop(next(iter(self._failures)))


AUTH = web.AppKey("auth", Auth)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


def _kinds_for(request: web.Request) -> tuple[str, ...]:
    """Nodes may fetch job files and upload frames; everything else is for people."""
    p = request.path
    if p.startswith("/api/blobs/") and p != "/api/blobs/missing" and \
            request.method in ("GET", "HEAD", "PUT"):
        return ("user", "node")
    return ("user",)


def _refuse(status: int, code: str, message: str) -> web.Response:
    from .api import error_response  # one error shape for the whole API

    return error_response(status, code, message)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    auth = request.app[AUTH]
    if not auth.required:
        return await handler(request)
    peer = request.remote or "?"
    if auth.limited(peer):
        return _refuse(429, "too_many_attempts",
                       "too many failed sign-ins from this address; wait a minute")
    info = await auth.lookup(bearer(request))
    if info is None:
        auth.failed(peer)
        return _refuse(401, "unauthorized", "this server needs a valid user token: "
                       "create one with `bf-server token create --user` and pass it with "
                       "--token or BLENDERFARM_TOKEN")
    if info.kind not in _kinds_for(request):
        return _refuse(403, "forbidden", f"a {info.kind} token cannot use {request.path}")
    request[TOKEN_INFO] = info
    return await handler(request)


def token_name(request: web.Request) -> str | None:
    """The name of the token this request came with, on a farm that requires tokens."""
    info = request.get(TOKEN_INFO)
    return info.name if isinstance(info, TokenInfo) else None


def user_allowed(app: web.Application, token: str | None) -> bool:
    """True when ``token`` is a valid user token, or the server runs open."""
    auth = app[AUTH]
    if not auth.required:
        return True
    info = auth.cache.lookup(token)
    return info is not None and info.kind == "user"


async def refresh_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the tokens before serving, then re-read them every couple of seconds."""
    auth = app[AUTH]
    await auth.refresh(force=True)

    async def loop() -> None:
        while True:
            await asyncio.sleep(auth.cache.ttl)
            try:
                await auth.refresh(force=True)
            except Exception:  # a locked or broken db must not kill the refresher
                log.exception("could not re-read the tokens")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
