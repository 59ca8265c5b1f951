"""The dashboard's pages: ``/`` and ``/static/`` serve the flat files of ``dashboard/``
(HTML, CSS, JS modules; no build step) with a strict content security policy.

Only those few files are served: no folders, no dotfiles, no Python. What the
dashboard shows comes from the API and ``/ws/events`` (:mod:`.events`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
#: the dashboard loads only its own files and talks only to its own server
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' blob: data:; "
                                "connect-src 'self' ws: wss:; style-src 'self'; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag), so an upgrade shows at once
}


async def dashboard_index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(DASHBOARD_DIR / "index.html", headers=SECURITY_HEADERS)


async def dashboard_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    # Only the few flat files we ship: no folders, no dotfiles, no Python.
    if "/" in name or name.startswith(".") or not name.endswith((".js", ".css", ".svg")):
        raise web.HTTPNotFound()
    path = DASHBOARD_DIR / name
    if not await asyncio.to_thread(path.is_file):
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=SECURITY_HEADERS)


def setup_dashboard(app: web.Application) -> None:
    """Serve the dashboard at ``/`` (files from ``dashboard/``, no build step)."""
    app.router.add_get("/", dashboard_index)
    app.router.add_get("/static/{name}", dashboard_file)
