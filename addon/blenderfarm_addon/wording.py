"""What the add-on says, in Blender's words: farm errors, job lines, wrapped labels.

The farm and its nodes word their errors for ``bf`` ("submit with --no-denoise"); a
user in Blender has the panel instead. :func:`farm_error` translates a job's failure
(its reason code, else the message) at the add-on's edge, once, into what to do in
the panel. :func:`job_summary` is the line that tells a file's jobs apart,
:func:`wrap_lines` splits a sentence to a panel's width, :func:`online_access` reads
Blender 4.2+'s "Allow Online Access".

Pure: it must never import bpy (the tests import it in plain Python), and draws only
through the layout object it is handed.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

from .vendor.blenderfarm.client.api import short_id

DENOISE_ADVICE = ("The scene has Cycles denoising on, but no node on the farm can denoise "
                  "(no OpenImageDenoise): set Denoise to Off in the panel's Overrides, or "
                  "add a node whose Blender can denoise.")
CAMERA_ADVICE = ("The scene has no active camera: pick a Camera in the panel's Overrides, "
                 "or set the scene's camera in the Scene properties.")
OFFLINE = ("Online access is off, so the add-on does not connect to the farm: turn on "
           "Preferences > System > Network > Allow Online Access.")

# The runner's and the server's reason codes (and old names for them).
_REASONS = {"needs_denoise": DENOISE_ADVICE, "needs_oidn": DENOISE_ADVICE,
            "bad_camera": CAMERA_ADVICE, "no_camera": CAMERA_ADVICE}
# Where no reason came along: a phrase the farm's message always contains.
_PHRASES = (("OpenImageDenoise", DENOISE_ADVICE), ("no active camera", CAMERA_ADVICE))


def farm_error(message: str, reason: str = "") -> str:
    """A job's failure as the panel says it: what to change in Blender, not in ``bf``."""
    advice = _REASONS.get(reason)
    if advice is None:
        advice = next((a for phrase, a in _PHRASES if phrase in message), None)
    return advice or message


def job_summary(job: dict[str, Any], now: float | None = None) -> str:
    """``3fa2b1 · 14:02 · frames 1-250 · 7 samples, camera Cam`` for one job."""
    parts = [short_id(str(job.get("id") or ""))]
    created = job.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        now = time.time() if now is None else now
        fmt = "%H:%M" if now - created < 20 * 3600 else "%b %d %H:%M"
        parts.append(time.strftime(fmt, time.localtime(created)))
    if job.get("frames"):
        parts.append(f"frames {job['frames']}")
    overrides = describe_overrides(job.get("overrides") or {})
    if overrides:
        parts.append(overrides)
    tags = job.get("tags") or []
    if isinstance(tags, list) and tags:
        parts.append("tags " + " ".join(str(t) for t in tags))
    return " · ".join(parts)


def describe_overrides(overrides: dict[str, Any]) -> str:
    """``7 samples, 50%, PNG, camera Cam, denoise off, GPU, persistent data on``; ""
    when none."""
    words = []
    if overrides.get("samples") is not None:
        words.append(f"{overrides['samples']} samples")
    if overrides.get("resolution_percent") is not None:
        words.append(f"{overrides['resolution_percent']}%")
    if overrides.get("format"):
        words.append(str(overrides["format"]))
    if overrides.get("camera"):
        words.append(f"camera {overrides['camera']}")
    if overrides.get("denoise") is not None:
        words.append("denoise " + ("on" if overrides["denoise"] else "off"))
    if overrides.get("device"):
        words.append(str(overrides["device"]))
    if overrides.get("persistent_data") is not None:
        words.append("persistent data " + ("on" if overrides["persistent_data"] else "off"))
    return ", ".join(words)


def wrap_lines(text: str, width_px: float, ui_scale: float = 1.0) -> list[str]:
    """Split a sentence into lines that fit ``width_px``; a URL is never split or cut."""
    chars = max(20, int(width_px / (7 * ui_scale)) - 4)
    return textwrap.wrap(text, chars, break_long_words=False, break_on_hyphens=False) or [""]


def wrapped_label(layout: Any, context: Any, text: str, icon: str = "NONE") -> None:
    """Labels do not wrap: one label per line, the icon on the first."""
    region = getattr(context, "region", None)
    width = region.width if region is not None and region.width > 1 else 400
    col = layout.column(align=True)
    for i, line in enumerate(wrap_lines(text, width, context.preferences.view.ui_scale)):
        col.label(text=line, icon=icon if i == 0 else "BLANK1")


def online_access(app: Any) -> bool:
    """Whether Blender lets add-ons go online (``bpy.app.online_access``, 4.2+;
    older Blenders have no such setting: yes)."""
    return bool(getattr(app, "online_access", True))
