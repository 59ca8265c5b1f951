"""``bf wait`` (and ``bf submit --wait``): follow a job to its end from a shell.

The job's state comes from the farm's live events (``client/events.py``), so the
command returns as soon as the job ends; it polls only where the server offers no
stream. Progress goes to stderr: a redrawn bar on a terminal, else a line per change.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import progress as fmt
from .api import ServerUnreachable
from .events import EventStream, StreamClosed, StreamProtocolError, StreamUnavailable

if TYPE_CHECKING:
    from .cli import Ctx

log = logging.getLogger("blenderfarm.client")
T = TypeVar("T")
UNREACHABLE_GRACE = 60.0  # seconds `bf wait` rides out a restarting server


def wait_for(
    ctx: Ctx, job_id: str, interval: float, timeout: float | None
) -> tuple[dict[str, Any], bool]:
    """Follow a job until it ends; show progress on stderr. Returns the job and
    whether it completed (False: it failed, was canceled, or ``timeout`` ran out).

    The job's state comes from the server's live events (``/ws/events``), so this
    returns as soon as the job ends; polling every ``interval`` seconds is the
    fallback when the stream cannot be opened (an old server, a proxy)."""
    interval = min(5.0, max(0.5, interval))
    start = time.monotonic()
    shown = _Shown(ctx)
    stream = _open_stream(ctx)  # before the first read: no end falls between
    job = _poll(ctx, job_id, start)
    try:
        while True:
            shown.show(job)
            if job.get("status") in fmt.FINAL_STATES:
                break
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                shown.end_line()
                ctx.say(f"Job {job_id} is still {job.get('status')} after "
                        f"{fmt.format_duration(timeout)}; stopped waiting.")
                return job, False
            left = None if timeout is None else max(0.0, start + timeout - now)
            if stream is None:
                time.sleep(interval if left is None else min(interval, left))
                job = _poll(ctx, job_id, start)
                continue
            try:
                job = _follow(stream, job, job_id, ctx, start,
                              1.0 if left is None else min(1.0, left))
            except StreamClosed as exc:
                stream.close()
                stream = _reopen(ctx, exc)
                job = _poll(ctx, job_id, start)  # what changed while we were away
    finally:
        if stream is not None:
            stream.close()
    shown.end_line()
    return job, _report_end(ctx, job, time.monotonic() - start)


class _Shown:
    """The progress line on stderr: a redrawn bar on a terminal, else a line per change."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.tty = ctx.err.isatty()
        self.rates = fmt.RateWindow()
        self.last_line, self.last_done, self.last_draw = -1e9, -1, -1e9
        self.last_fraction = -1.0

    def show(self, job: dict[str, Any]) -> None:
        now = time.monotonic()
        done = int(job.get("frames_done") or 0)
        self.rates.add(now, done)
        rate = self.rates.rate_per_min(now)
        final = job.get("status") in fmt.FINAL_STATES
        if self.tty:
            if now - self.last_draw < 0.1 and not final:  # events come fast; 10 draws a second
                return
            self.last_draw = now
            width = shutil.get_terminal_size((100, 20)).columns - 1
            print(f"\r{fmt.progress_bar_line(job, rate, width)}\x1b[K", end="",
                  file=self.ctx.err, flush=True)
        elif not self.ctx.json and (done != self.last_done or now - self.last_line >= 30
                                    or abs(fmt.job_fraction(job) - self.last_fraction) >= 0.05):
            # a line a frame, or a twentieth of the job inside long frames, or each 30 s
            self.ctx.say(fmt.progress_text(job, rate))
            self.last_line, self.last_done = now, done
            self.last_fraction = fmt.job_fraction(job)

    def end_line(self) -> None:
        if self.tty:
            print(file=self.ctx.err)


def _follow(stream: EventStream, job: dict[str, Any], job_id: str, ctx: Ctx, start: float,
            timeout: float) -> dict[str, Any]:
    """The job after the events of up to ``timeout`` seconds (those of other jobs skipped)."""
    for ev in stream.receive(timeout):
        kind = ev.get("type")
        if kind == "job" and isinstance(ev.get("job"), dict) and ev["job"].get("id") == job_id:
            job = ev["job"]
        elif kind == "progress" and ev.get("job_id") == job_id and "eta" in ev:
            job = {**job, "progress": ev.get("job_progress"), "eta": ev.get("eta")}
        elif kind == "resync":  # the server dropped events for us: read the job anew
            job = _poll(ctx, job_id, start)
        elif kind == "job_deleted" and ev.get("job_id") == job_id:
            job = _poll(ctx, job_id, start)  # the server's 404 says it in its words
    return job


def _open_stream(ctx: Ctx) -> EventStream | None:
    """The live events, or None (and a note) when the server offers none."""
    client = ctx.client
    try:
        return _riding_out(ctx, lambda: EventStream(client.server_url, client.token,
                                                    timeout=client.timeout).open(), 1.0)
    except (StreamUnavailable, StreamProtocolError) as exc:
        ctx.say(f"Note: {exc} Checking the job every few seconds instead.")
        return None


def _reopen(ctx: Ctx, exc: StreamClosed) -> EventStream | None:
    """After the stream dropped: open it again, or poll if the server broke the protocol."""
    if isinstance(exc, StreamProtocolError):
        ctx.say(f"Note: the live events stopped ({exc}); checking the job every few "
                "seconds instead.")
        return None
    log.debug("events stream dropped (%s); reconnecting", exc)
    return _open_stream(ctx)


def _poll(ctx: Ctx, job_id: str, start: float) -> dict[str, Any]:
    """GET the job; ride out a server restart for UNREACHABLE_GRACE seconds."""
    return _riding_out(ctx, lambda: ctx.client.get_job(job_id), 2.0)


def _riding_out(ctx: Ctx, call: Callable[[], T], pause: float) -> T:
    """``call()``, tried again every ``pause`` seconds while the server is unreachable,
    for up to UNREACHABLE_GRACE seconds (a restarting server), said once."""
    since: float | None = None
    while True:
        try:
            return call()
        except ServerUnreachable as exc:
            now = time.monotonic()
            if since is None:
                since = now
                ctx.say(f"\n{exc} Retrying for {int(UNREACHABLE_GRACE)} s...")
            elif now - since >= UNREACHABLE_GRACE:
                raise
            time.sleep(pause)


def _report_end(ctx: Ctx, job: dict[str, Any], waited: float) -> bool:
    status = job.get("status")
    if status == "completed":
        ctx.say(f"Job {job.get('id')} completed: {job.get('frames_done')} frame(s); "
                f"waited {fmt.format_duration(waited)}.")
        return True
    reason = job.get("error")
    ctx.say(f"Job {job.get('id')} {status}: {reason}" if reason else f"Job {job.get('id')} {status}.")
    return False
