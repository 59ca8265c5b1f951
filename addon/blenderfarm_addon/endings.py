"""What the add-on says when a job it follows ends: one sentence for the status bar.

An artist submits and goes back to work in another editor; the panel is out of sight.
When a followed job ends, the timer in ``status.py`` puts :func:`ending`'s sentence in
Blender's status bar. Only a change the add-on saw is news: a job it knew as queued,
active or paused that is now completed, failed or canceled. A job that had already
ended when the add-on first read it (the file was opened after the render) says
nothing, and neither does reading an ended job again (Refresh, a new server URL).

Pure: it must never import bpy (the tests import it in plain Python).
"""

from __future__ import annotations

from typing import Any

from .vendor.blenderfarm.client.api import short_id

#: the statuses of a job that can still end (a job the add-on has not read yet has "")
LIVE = ("queued", "active", "paused")
NO_ERROR = "see its log in the dashboard."


def ending(before: str, job: dict[str, Any], error: str = "") -> str:
    """``Farm: shot completed (8 frames)``, ``Farm: shot failed: <error>``,
    ``Farm: shot canceled``; "" when this view of the job is no news.

    ``before`` is the status the add-on showed until now; ``error`` the job's error as
    the panel words it (``wording.farm_error``), since the status bar speaks Blender's
    language too.
    """
    status = str(job.get("status") or "")
    if before not in LIVE or status in LIVE:
        return ""
    name = str(job.get("name") or short_id(str(job.get("id") or "")))
    if status == "completed":
        frames = int(job.get("frames_done") or 0)
        return f"Farm: {name} completed ({frames} frame{'' if frames == 1 else 's'})"
    if status == "failed":
        return f"Farm: {name} failed: {error or NO_ERROR}"
    if status == "canceled":
        return f"Farm: {name} canceled"
    return ""  # "deleted" (the farm forgot it) or a status from a newer server
