"""Node events for watchers, throttled: at most one per node per interval.

A busy node reports progress many times a second, and on a fast farm changes task as
often; a browser needs a few updates a second. The first change goes out at once; later
ones within the interval leave together at its end, as one event built then (so it
carries the node's latest state). Only timers on the running loop: no I/O, never blocks,
and nothing to leak: a node's timer goes when the node is forgotten or the farm stops.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

#: a node's events reach watchers at most this often (seconds)
INTERVAL = 0.25


class NodeNews:
    """Calls ``announce(uid)`` for a node that changed, at most every ``interval``."""

    def __init__(self, announce: Callable[[str], None], interval: float = INTERVAL) -> None:
        self._announce = announce
        self.interval = interval
        self._last: dict[str, float] = {}  # uid -> when it was last announced (monotonic)
        self._due: dict[str, asyncio.TimerHandle] = {}  # uid -> its pending announcement

    def changed(self, uid: str) -> None:
        if uid in self._due:
            return  # already due: it will carry this change too
        wait = self._last.get(uid, -math.inf) + self.interval - time.monotonic()
        if wait <= 0:
            self._send(uid)
        else:
            self._due[uid] = asyncio.get_running_loop().call_later(wait, self._send, uid)

    def _send(self, uid: str) -> None:
        self._due.pop(uid, None)
        self._last[uid] = time.monotonic()
        self._announce(uid)

    def forget(self, uid: str) -> None:
        """The node's record is gone: nothing more is said of it."""
        timer = self._due.pop(uid, None)
        if timer is not None:
            timer.cancel()
        self._last.pop(uid, None)

    def close(self) -> None:
        for timer in self._due.values():
            timer.cancel()
        self._due.clear()
