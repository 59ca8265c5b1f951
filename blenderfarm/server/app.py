"""``make_app(config)``: the one factory that builds bf-server's aiohttp application.

It does no I/O: folders and the database are opened when the app starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from ..protocol import messages as m
from .api import UPLOAD_SLOTS, errors_middleware, routes
from .auth import AUTH, Auth, auth_middleware, origin_middleware, refresh_ctx
from .blobs import BlobStore
from .config import ServerConfig
from .events import EVENTS, setup_events
from .farm import Farm
from .inspect import setup_inspect
from .keys import FARM
from .metrics import setup_metrics
from .node_ws import node_socket
from .store import Store
from .tokens import TokenCache
from .web import setup_dashboard
from .webhooks import setup_webhooks

log = logging.getLogger(__name__)


def make_app(config: ServerConfig) -> web.Application:
    store = Store(config.data_dir / "farm.db")
    blobs = BlobStore(config.data_dir / "blobs", max_size=config.max_blob_size)
    farm = Farm(config, store, blobs)
    # Blob uploads stream, so the body limit only bounds JSON bodies read whole.
    # keepalive_timeout bounds a connection's idle time and, aiohttp closing a
    # connection that waits for its request's headers past it, their read too;
    # body_timeout bounds each wait for a body's next bytes (api.read_body)
    app = web.Application(middlewares=[origin_middleware, auth_middleware, errors_middleware],
                          client_max_size=m.MAX_MESSAGE * 4,
                          handler_args={"keepalive_timeout": config.header_timeout,
                                        # what is left of a refused body is read for
                                        # at most this long before the socket closes
                                        "lingering_time": min(2.0, config.body_timeout)})
    app[FARM] = farm
    app[UPLOAD_SLOTS] = asyncio.Semaphore(config.max_uploads)
    app[AUTH] = Auth(TokenCache(config.data_dir / "farm.db"), config.trusted_proxies)
    app.add_routes(routes)
    app.router.add_get("/ws/node", node_socket)
    app.cleanup_ctx.append(_farm_ctx)
    setup_inspect(app, config.max_inspects)
    app.cleanup_ctx.append(refresh_ctx)
    app.on_shutdown.append(_close_sockets)
    setup_events(app)
    setup_dashboard(app)
    setup_metrics(app, farm, lambda: len(app[EVENTS].clients), farm.metrics)
    setup_webhooks(app, farm)
    return app


async def _close_sockets(app: web.Application) -> None:
    for session in list(app[FARM].sessions.values()):
        session.close()


async def _farm_ctx(app: web.Application) -> AsyncIterator[None]:
    farm = app[FARM]
    await farm.start()
    yield
    await farm.stop()


def make_runner(app: web.Application, config: ServerConfig, **kwargs: Any) -> web.AppRunner:
    """The runner bf-server serves ``app`` with: it accepts at most
    :func:`connection_limit` connections at once and closes any past that at once, so
    a crowd of slow clients cannot take the file descriptors the database, the blob
    store and other clients need."""
    return _CappedRunner(app, connection_limit(config), **kwargs)


def connection_limit(config: ServerConfig) -> int:
    """``max_connections``, or (0) what the file-descriptor limit allows, after raising
    the soft limit to the hard one, less a reserve for the database, logs and uploads."""
    if config.max_connections > 0:
        return config.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 1 << 20), hard))
            soft = min(wanted, 1 << 20)
    usable = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    return max(16, usable - 64 - 2 * config.max_uploads)


class _CappedRunner(web.AppRunner):
    def __init__(self, app: web.Application, limit: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limit = limit
        self._warned = 0.0

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        accept = server.connection_made

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            accept(handler, transport)
            if len(server.connections) > self.limit:
                now = time.monotonic()
                if now - self._warned > 60:
                    self._warned = now
                    log.warning("%d connections open: closing new ones until some end "
                                "(max_connections)", self.limit)
                transport.close()

        server.connection_made = connection_made  # type: ignore[method-assign]
        return server
