"""The farm's refusals and their one JSON shape.

:class:`FarmError` is what every layer raises for a request the farm refuses; the API's
middleware (and the auth middleware, before a handler runs) turn it into
:func:`error_response`'s ``{"error": {"code", "message", "field"}}``. This module
imports nothing of the server's but the store's error, so any module may raise these.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .store import StoreError


class FarmError(Exception):
    """A request the farm refuses; ``code`` and ``status`` go to the HTTP answer."""

    def __init__(self, message: str, code: str = "bad_request", status: int = 400,
                 field: str | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.status, self.field, self.data = code, status, field, data


def store_refusal(exc: BaseException, what: str) -> FarmError:
    """The answer to a person while the database cannot be written: 507 when its disk
    is full, 503 otherwise; ``what`` says what became of their action."""
    full = isinstance(exc, StoreError) and exc.full
    cause = "the server's disk is full" if full else "the server cannot write its database"
    return FarmError(f"{cause} ({exc}); {what}. Free space on the server (or fix the "
                     "database) and try again.", "disk_full" if full else "store_unavailable",
                     507 if full else 503)


def error_response(status: int, code: str, message: str, field: str | None = None,
                   data: Any = None) -> web.Response:
    """The one error shape of the whole API."""
    body: dict[str, Any] = {"code": code, "message": message, "field": field}
    if data is not None:
        body["data"] = data
    return web.json_response({"error": body}, status=status)
