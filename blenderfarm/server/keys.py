"""Typed keys for what the aiohttp application holds."""

from aiohttp import web

from .farm import Farm

FARM = web.AppKey("farm", Farm)
