"""What the job's video needs to know of a scene, read INSIDE Blender.

:func:`scene_video` returns ``protocol.video.SceneVideo``'s dict form: the frame rate,
the render size, the output format and, for a movie (FFMPEG), Blender's ffmpeg
settings. The runner sends it in its ``task_done`` event (``info: {"video": ...}``) and
the server makes the job's video from it. It must read the scene as the file has it,
before the farm's overrides: a movie scene is rendered as lossless PNG stills, and
after that override its movie settings no longer show. The server validates the dict
(``SceneVideo.from_dict``); this side only reads.

Like the runner, it imports nothing but the standard library (not even blenderfarm:
Blender runs it as a plain file with its own Python) and works in Blender 3.4 to 5.x:
settings that only some versions have are read through ``getattr``, and an enum's
number (the CRF behind ``constant_rate_factor``) through RNA, so new levels need no
table here.
"""

from __future__ import annotations

MAX_CRF = 63  # the largest CRF any codec takes (Blender 5's custom CRF goes that far)


def _enum_number(owner, prop: str):
    """The number behind an enum setting (``MEDIUM`` is CRF 23), None if unknown."""
    try:
        items = owner.bl_rna.properties[prop].enum_items
        return int(items[getattr(owner, prop)].value)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _crf(ff) -> int:
    """The H.264 CRF of the scene's quality level; -1 for constant bitrate."""
    if getattr(ff, "constant_rate_factor", "") == "CUSTOM":  # Blender 5
        crf = int(getattr(ff, "custom_constant_rate_factor", 23))
    else:
        crf = _enum_number(ff, "constant_rate_factor")
    return -1 if crf is None or crf < 0 else min(crf, MAX_CRF)


def _ffmpeg(ff) -> dict:
    max_b = int(getattr(ff, "max_b_frames", 0))
    profile = _enum_number(ff, "ffmpeg_prores_profile")  # Blender 4.x and newer
    return {
        "container": str(ff.format),
        "codec": str(ff.codec),
        "crf": _crf(ff),
        "preset": str(getattr(ff, "ffmpeg_preset", "GOOD")),
        "video_bitrate": max(0, int(getattr(ff, "video_bitrate", 0))),
        "minrate": max(0, int(getattr(ff, "minrate", 0))),
        "maxrate": max(0, int(getattr(ff, "maxrate", 0))),
        "buffersize": max(0, int(getattr(ff, "buffersize", 0))),
        "gopsize": max(0, int(getattr(ff, "gopsize", 0))),
        "max_b_frames": max(0, min(16, max_b)) if getattr(ff, "use_max_b_frames", False)
        else None,
        "prores_profile": 3 if profile is None else profile,
        "audio_codec": str(getattr(ff, "audio_codec", "NONE")),
        "video_hdr": str(getattr(ff, "video_hdr", "NONE") or "NONE"),
    }


def scene_video(scene) -> dict:
    """The scene's frame rate, render size, output format and movie settings (the dict
    form of ``protocol.video.SceneVideo``). Call it before the farm's overrides."""
    render = scene.render
    settings = render.image_settings
    percent = render.resolution_percentage
    file_format = str(settings.file_format)
    info = {
        "fps": int(render.fps),
        "fps_base": float(render.fps_base),
        # Blender's own rounding of the render size (BKE_render_resolution)
        "width": max(1, render.resolution_x * percent // 100),
        "height": max(1, render.resolution_y * percent // 100),
        "file_format": file_format,
        "color_mode": str(settings.color_mode),
        "color_depth": str(getattr(settings, "color_depth", "") or ""),
        "quality": int(getattr(settings, "quality", 90)),
    }
    if file_format == "FFMPEG":
        info.update(_ffmpeg(render.ffmpeg))
    return info
