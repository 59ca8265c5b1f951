"""Typed keys for what the aiohttp application holds.

Imports nothing of the server's at run time (the farm's type is for the checker only),
so any module that serves a request may import it without a circle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .farm import Farm

FARM: web.AppKey[Farm] = web.AppKey("farm")
