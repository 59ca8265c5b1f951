"""Who may do what: user tokens for the API, /ws/events and the dashboard; node tokens
for /ws/node and the blob downloads and uploads a render needs.

While no valid token exists the server runs open (the one-machine case; the CLI
refuses to listen beyond loopback like that without ``--insecure``). Once one
exists, every ``/api/`` call needs ``Authorization: Bearer <token>``. Tokens are
never logged.

Admission is one function, :meth:`Auth.admit`, for the API, the node socket and the
dashboard's event socket. A valid token always gets in: only failures are counted,
per client address, and past a limit only further failures from that address are
answered 429 (a crowd of wrong tokens behind a proxy must not lock out the farm).
The client address is the socket's peer, or, when that peer is one of the
``trusted_proxies``, the nearest address in ``X-Forwarded-For`` that is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from .errors import error_response
from .tokens import TokenCache, TokenInfo

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: where the middleware leaves the request's TokenInfo for the handlers (a typed key
#: where this aiohttp has them)
TOKEN_INFO: Any = (web.RequestKey("token", TokenInfo) if hasattr(web, "RequestKey")
                   else "blenderfarm.token")
MAX_FAILURES = 20  # per address and window
WINDOW = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a party was not let in: an HTTP status, a code and one sentence."""

    status: int
    code: str
    message: str


NEED_USER = ("this server needs a valid user token: create one with `bf-server token create "
             "--user` and pass it with --token or BLENDERFARM_TOKEN")
NEED_NODE = ("this node's token is missing, wrong or revoked; create one with "
             "`bf-server token create --node` and start bf-node with --token")
LIMITED = "too many failed sign-ins from this address; wait a minute"


class Auth:
    def __init__(self, cache: TokenCache, trusted_proxies: tuple[str, ...] = ()) -> None:
        self.cache = cache
        self._failures: dict[str, deque[float]] = {}
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    async def admit(self, peer: str, secret: str | None, kinds: tuple[str, ...]
                    ) -> TokenInfo | Refusal | None:
        """The token's record when ``secret`` is a valid token of one of ``kinds``;
        None on an open farm; else why not. The token is checked before the
        address's failures: a valid token is never refused for others' mistakes."""
        if not self.required:
            return None
        info = await self.lookup(secret)
        if info is not None and info.kind in kinds:
            return info
        if self.limited(peer):
            return Refusal(429, "rate_limited", LIMITED)
        self.failed(peer)
        if info is not None and kinds == ("node",):
            return Refusal(401, "unauthorized", f"a {info.kind} token cannot enroll a node; "
                           "create a node token with `bf-server token create --node`")
        if info is not None:
            return Refusal(403, "forbidden", f"a {info.kind} token cannot do this")
        return Refusal(401, "unauthorized", NEED_NODE if kinds == ("node",) else NEED_USER)

    def client_address(self, request: web.Request) -> str:
        """Who the request comes from, for counting failures: the peer, or behind a
        trusted proxy the nearest untrusted hop of X-Forwarded-For."""
        peer = request.remote or "?"
        if not self.trusted or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", ()))
                .split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop[:64]
        return peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

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
    return error_response(status, code, message)  # one error shape for the whole API


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    auth = request.app[AUTH]
    got = await auth.admit(auth.client_address(request), bearer(request), _kinds_for(request))
    if isinstance(got, Refusal):
        return _refuse(got.status, got.code, got.message)
    if got is not None:
        request[TOKEN_INFO] = got
    return await handler(request)


#: methods that change nothing (the rest must come from the farm's own pages)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: body types a page of another site can POST without the browser asking first
SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def same_origin(request: web.Request) -> bool:
    """Whether a browser's request comes from a page of this server (requests without
    ``Origin`` come from no browser page: bf, the add-on, scripts)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        host = URL(origin).host_port_subcomponent
    except ValueError:
        return False
    # A page cannot set X-Forwarded-Host; a proxy in front of us can.
    return host is not None and host in (request.url.host_port_subcomponent,
                                         request.headers.get("X-Forwarded-Host"))


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Another web site's page must not drive the farm through the artist's browser:
    on an open farm it needs no token, and a form or a ``fetch`` with a text body
    needs no permission from us. Changes must come with no ``Origin`` or our own, and
    a body, if any, as JSON (which a foreign page cannot send without asking first)."""
    if request.method in SAFE_METHODS or not request.path.startswith("/api/"):
        return await handler(request)
    if not same_origin(request):
        return _refuse(403, "cross_site", "requests from pages of other web sites are "
                       "refused; use the farm's own dashboard, bf or the add-on")
    if request.method == "POST" and request.can_read_body and \
            request.content_type.lower() in SIMPLE_TYPES:
        return _refuse(415, "json_required", "send the body as JSON "
                       "(Content-Type: application/json)")
    return await handler(request)


def token_name(request: web.Request) -> str | None:
    """The name of the token this request came with, on a farm that requires tokens."""
    info = request.get(TOKEN_INFO)
    return info.name if isinstance(info, TokenInfo) else None


def user_allowed(app: web.Application, token: str | None) -> bool:
    """Whether ``token`` is (still) a valid user token, or the server runs open; for
    re-checking a socket that was admitted already (a revoked token ends it)."""
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
