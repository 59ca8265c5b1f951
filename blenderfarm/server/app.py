"""``make_app(config)``: the one factory that builds bf-server's aiohttp application.

It does no I/O: folders and the database are opened when the app starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..protocol import messages as m
from .api import errors_middleware, routes
from .auth import AUTH, Auth, auth_middleware, refresh_ctx
from .blobs import BlobStore
from .config import ServerConfig
from .events import setup_dashboard, setup_events
from .farm import Farm
from .keys import FARM
from .metrics import setup_metrics
from .node_ws import node_socket
from .store import Store
from .tokens import TokenCache
from .webhooks import setup_webhooks


def make_app(config: ServerConfig) -> web.Application:
    store = Store(config.data_dir / "farm.db")
    blobs = BlobStore(config.data_dir / "blobs", max_size=config.max_blob_size)
    farm = Farm(config, store, blobs)
    # Blob uploads stream, so the body limit only bounds JSON bodies read whole.
    app = web.Application(middlewares=[auth_middleware, errors_middleware],
                          client_max_size=m.MAX_MESSAGE * 4)
    app[FARM] = farm
    app[AUTH] = Auth(TokenCache(config.data_dir / "farm.db"))
    app.add_routes(routes)
    app.router.add_get("/ws/node", node_socket)
    app.cleanup_ctx.append(_farm_ctx)
    app.cleanup_ctx.append(refresh_ctx)
    app.on_shutdown.append(_close_sockets)
    setup_events(app)
    setup_dashboard(app)
    setup_metrics(app, farm)
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
