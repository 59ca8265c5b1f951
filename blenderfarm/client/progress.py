"""How ``bf`` shows progress and state to a person: bars, rates, ETAs, sizes, tables.

Pure functions (and one small class that only stores numbers it is given): no I/O,
no clock, no terminal queries. The caller passes the time and the width, so every
result here is unit-testable; printing is the command line's job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..protocol.frames import format_frames

FINAL_STATES = frozenset({"completed", "failed", "canceled"})


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units, one decimal above bytes."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``'1m15s'``, ``3725`` -> ``'1h02m'``; ``'--'`` when unknown."""
    if seconds is None or math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return "--"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_age(timestamp: float | None, now: float) -> str:
    """How long ago ``timestamp`` was: ``'3m05s ago'``; ``'--'`` when unknown."""
    if timestamp is None:
        return "--"
    return f"{format_duration(max(0.0, now - timestamp))} ago"


def bar(fraction: float, width: int) -> str:
    """``[######----]`` of ``width`` characters in all (brackets included)."""
    inner = max(1, width - 2)
    f = min(1.0, max(0.0, fraction))
    filled = int(f * inner)
    return "[" + "#" * filled + "-" * (inner - filled) + "]"


class RateWindow:
    """Frames per minute over at least the last ``window`` seconds of observations.

    Measuring from a point ``window`` seconds back (not between the last two frames)
    keeps the rate steady when frames land in bursts, and lets it fall while a job
    stalls, which is the honest answer. Only stores what ``add`` is given.
    """

    def __init__(self, window: float = 120.0) -> None:
        self.window = window
        self._points: list[tuple[float, int]] = []  # (time, frames done) at changes

    def add(self, t: float, done: int) -> None:
        if self._points and done < self._points[-1][1]:
            self._points.clear()  # frames were requeued: the history no longer adds up
        if not self._points or done != self._points[-1][1]:
            self._points.append((t, done))
        # Keep one point older than the window as the reference, drop the rest.
        while len(self._points) > 2 and self._points[1][0] <= t - self.window:
            self._points.pop(0)

    def rate_per_min(self, now: float) -> float | None:
        """Frames per minute, or None before the first frame completes under watch."""
        if len(self._points) < 2:
            return None
        t0, d0 = self._points[0]
        done = self._points[-1][1] - d0
        if done <= 0 or now <= t0:
            return None
        return done * 60.0 / (now - t0)


def eta_seconds(remaining: int, rate_per_min: float | None) -> float | None:
    if remaining <= 0:
        return 0.0
    if not rate_per_min or rate_per_min <= 0:
        return None
    return remaining * 60.0 / rate_per_min


def job_eta(job: Mapping[str, Any], rate_per_min: float | None) -> float | None:
    """Seconds left: the server's ``eta`` when its view has one (it counts the parts of
    frames being rendered), else from the rate seen here (an older server)."""
    if "eta" in job:
        eta = job["eta"]
        return float(eta) if isinstance(eta, (int, float)) and not isinstance(eta, bool) else None
    done = int(job.get("frames_done") or 0)
    return eta_seconds(int(job.get("frames_total") or 0) - done, rate_per_min)


def job_fraction(job: Mapping[str, Any]) -> float:
    """How much of the job is done, 0..1: the server's ``progress`` (inside frames too)
    when it has one, else whole frames."""
    progress = job.get("progress")
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        return min(1.0, max(0.0, float(progress)))
    total = int(job.get("frames_total") or 0)
    return int(job.get("frames_done") or 0) / total if total else 0.0


def progress_text(job: Mapping[str, Any], rate_per_min: float | None) -> str:
    """``'12/250 frames  4.8%  3.2 frames/min  ETA 1h14m  active'``."""
    done = int(job.get("frames_done") or 0)
    total = int(job.get("frames_total") or 0)
    pct = 100.0 * job_fraction(job)
    rate = "--" if rate_per_min is None else f"{rate_per_min:.1f}"
    eta = format_duration(job_eta(job, rate_per_min))
    status = str(job.get("status", "?"))
    failed = int(job.get("tasks_failed") or 0)
    extra = f"  {failed} task(s) failed" if failed else ""
    tiles = int(job.get("tiles_total") or 0)
    parts = f"  {int(job.get('tiles_done') or 0)}/{tiles} tiles" if tiles else ""
    if job.get("video"):  # its encode's state: queued (waits for the frames), running...
        parts += "  video " + ("ready" if job.get("encode") == "done" else str(job.get("encode")))
    return (f"{done}/{total} frames{parts}  {pct:5.1f}%  {rate} frames/min  ETA {eta}  "
            f"{status}{extra}")


def progress_bar_line(job: Mapping[str, Any], rate_per_min: float | None, width: int) -> str:
    """A bar plus :func:`progress_text`, fitted into ``width`` columns."""
    text = progress_text(job, rate_per_min)
    fraction = job_fraction(job)
    bar_width = min(40, width - len(text) - 1)
    if bar_width < 10:
        return text[: max(0, width)]
    return f"{bar(fraction, bar_width)} {text}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; ``None`` shows as ``-``."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    return "\n".join(lines)


def job_row(job: Mapping[str, Any], now: float) -> list[Any]:
    """One line of ``bf jobs``: id, name, status, priority, frames, failed, updated."""
    return [
        job.get("id"),
        job.get("name"),
        job.get("status"),
        job.get("priority"),
        f"{job.get('frames_done', 0)}/{job.get('frames_total', 0)}",
        job.get("tasks_failed", 0),
        format_age(job.get("updated"), now),
    ]


JOB_HEADERS = ("ID", "NAME", "STATUS", "PRIO", "FRAMES", "FAILED", "UPDATED")


def pick_columns(
    items: Sequence[Mapping[str, Any]], preferred: Sequence[str], limit: int = 8
) -> list[str]:
    """The ``preferred`` keys that some item has, in that order, at most ``limit``.

    Tasks and nodes are shown this way so that a field the server adds or renames
    costs a column, not a crash.
    """
    present = {k for item in items for k in item}
    return [k for k in preferred if k in present][:limit]


def cell(value: Any) -> Any:
    """Render a JSON value compactly for a table cell."""
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return format_frames(value)
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        if "version" in value:  # a node's Blender: its version says enough
            return str(value["version"])
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return value



TASK_COLUMNS = ("id", "kind", "status", "frames", "tile", "waiting", "node_name", "node",
                "node_id", "attempts", "attempt", "progress", "seconds", "updated", "error")
TIME_KEYS = frozenset({"created", "updated", "last_seen", "started", "finished", "connected"})


def item_table(items: Sequence[Mapping[str, Any]], preferred: Sequence[str], now: float) -> str:
    """A table of tasks or nodes: the preferred columns present, times as ages."""
    columns = pick_columns(items, preferred)

    def show(key: str, value: Any) -> Any:
        if key in TIME_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
            return format_age(value, now)
        text = cell(value)
        return text[:57] + "..." if isinstance(text, str) and len(text) > 60 else text

    rows = [[show(k, item.get(k)) for k in columns] for item in items]
    return format_table([c.upper() for c in columns], rows)


def node_state(node: Mapping[str, Any]) -> str:
    """What a node does, in words: ``idle``, ``rendering shot010 frame 12``, ``draining``
    (still finishing its task), ``drained``, ``disabled`` or ``offline``. A server that
    sends no ``current`` yet (older) gets its plain ``state``."""
    state = str(node.get("state") or "?")
    current = node.get("current")
    doing = ""
    if isinstance(current, Mapping):
        doing = str(current.get("job_name") or current.get("job_id") or "")
        if isinstance(current.get("frame"), int):
            doing += f" frame {current['frame']}"
        doing = doing.strip()
    if state in ("offline", "disabled"):
        return state
    if state == "drained":
        return f"draining ({doing})" if doing else ("draining" if node.get("tasks") else state)
    if state == "rendering" and doing:
        return f"rendering {doing}"
    return state


def node_rows(nodes: Sequence[Mapping[str, Any]], now: float) -> list[list[Any]]:
    """The lines of ``bf nodes``: a node goes by its name (with the start of its id when
    two share a name), then what it does now, then what it has."""
    names = [str(n.get("name") or n.get("id") or "?") for n in nodes]
    rows = []
    for node, name in zip(nodes, names, strict=True):
        if names.count(name) > 1:
            name += f" ({str(node.get('id'))[:8]})"
        state = node_state(node)
        slots = node.get("slots") or [{"busy": node.get("current")}]  # an older server
        rows.append([name, state[:57] + "..." if len(state) > 60 else state,
                     f"{sum(1 for s in slots if s.get('busy'))}/{len(slots)}",
                     node_blenders(node), node_devices(node), cell(node.get("tags", [])),
                     format_age(node.get("last_seen"), now), node.get("frames_rendered", 0)])
    return rows


NODE_HEADERS = ("NAME", "STATE", "SLOTS", "BLENDERS", "DEVICES", "TAGS", "LAST SEEN", "FRAMES")


def node_blenders(node: Mapping[str, Any]) -> str:
    """``3.4.1, 5.0.1 (module)``: each Blender of a node, a Python's bpy module marked."""
    blenders = node.get("blenders") or [{"version": node.get("blender")}]
    return ", ".join(str(b.get("version") or "?") + (" (module)" if b.get("kind") == "module"
                                                     else "") for b in blenders)


def node_devices(node: Mapping[str, Any]) -> str:
    """``CPU, CUDA, OPTIX, FFmpeg``: what its Blenders render with, each backend once,
    and FFmpeg where its host has one (it encodes videos)."""
    kinds = dict.fromkeys(["CPU"] + [str(d.get("type")) for b in node.get("blenders") or ()
                                     for d in b.get("devices") or ()])
    if node.get("ffmpeg"):
        kinds["FFmpeg"] = None
    return ", ".join(kinds)


def can_run_on(nodes: Sequence[Mapping[str, Any]]) -> str:
    """A job's ``nodes`` in one line: ``box; not plain (has no GPU slot)``."""
    able = [str(n.get("name")) for n in nodes if n.get("can")]
    unable = [f"not {n.get('name')}" + (f" ({n['why']})" if n.get("why") else "")
              for n in nodes if not n.get("can")]
    return "; ".join(able + unable) or "no node is online"
