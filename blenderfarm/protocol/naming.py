"""How Blender names a frame's file, and which frames a file name can be.

A job's frames are named from an output pattern, the file part of the scene's output
path (``jobspec.JobSpec.output_pattern``), exactly as Blender names them: the last run
of ``#`` becomes the frame, zero-padded to as many digits as there are ``#`` (C's
``%.*d``: ``-5`` in ``###`` is ``-005``); a pattern without ``#`` gets four at its end;
then the format's extension is kept when the name already ends in one of its own,
replaces another image extension, or is added (``image_format.cc``,
``do_add_image_extension``).

The node lets Blender itself name the file (``frame_path``); the server uses
:func:`frames_named` to check a name a node reports: it must be the name of exactly
the frame it claims, and no other frame's. Pure: no I/O, no bpy.
"""

from __future__ import annotations

from .frames import MAX_FRAME
from .jobspec import EXTENSIONS

DEFAULT_DIGITS = 4  # Blender's padding for a path without '#'
#: every extension Blender replaces rather than appends to (imbuf's imb_ext_image)
IMAGE_EXTENSIONS = (".png", ".tga", ".bmp", ".jpg", ".jpeg", ".sgi", ".rgb", ".rgba",
                    ".tif", ".tiff", ".tx", ".jp2", ".j2c", ".hdr", ".dds", ".dpx", ".cin",
                    ".exr", ".psd", ".pdd", ".psb", ".webp")


def _digits(frame: int, width: int) -> str:
    sign = "-" if frame < 0 else ""
    return f"{sign}{abs(frame):0{width}d}"


def _split(pattern: str) -> tuple[str, int, str]:
    """``pattern`` as (before, digits, after) around its last run of '#'."""
    end = pattern.rfind("#")
    if end < 0:
        return pattern, DEFAULT_DIGITS, ""
    start = end
    while start and pattern[start - 1] == "#":
        start -= 1
    return pattern[:start], end + 1 - start, pattern[end + 1:]


def frame_base(pattern: str, frame: int) -> str:
    """Blender's ``BLI_path_frame``: the pattern with the frame in place, no extension."""
    before, width, after = _split(pattern)
    return before + _digits(frame, width) + after


def with_extension(base: str, extensions: tuple[str, ...]) -> str:
    """``base`` with a format's extension as Blender adds it (``extensions[0]`` unless it
    ends in one of them already, case aside; another image extension is replaced)."""
    lower = base.lower()
    if lower.endswith(extensions):
        return base
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return base[: -len(ext)] + extensions[0]
    return base + extensions[0]


def frame_name(pattern: str, frame: int, fmt: str) -> str:
    """The file Blender writes for ``frame`` with output pattern ``pattern`` in ``fmt``."""
    try:
        extensions = EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(EXTENSIONS)}") \
            from None
    return with_extension(frame_base(pattern, frame), extensions)


def frames_named(pattern: str, name: str) -> set[int]:
    """Every frame whose file, in some still format, is called ``name``: one frame for a
    frame's name, none for any other name. Checked by naming each candidate frame again,
    so the answer is never looser than :func:`frame_name`."""
    _, dot, ext = name.rpartition(".")
    ext = "." + ext.lower()
    if not dot:
        return set()
    groups = {exts for exts in EXTENSIONS.values() if ext in exts}
    before, _, _ = _split(pattern)
    if not groups or not name.startswith(before):
        return set()
    rest = name[len(before):]
    sign = "-" if rest.startswith("-") else ""
    run = rest[len(sign):]
    n = 0
    while n < len(run) and run[n].isascii() and run[n].isdigit():
        n += 1
    found: set[int] = set()
    for k in range(1, n + 1):  # the frame's digits are a prefix of the run
        frame = int(sign + run[:k])
        if abs(frame) <= MAX_FRAME and any(
                with_extension(frame_base(pattern, frame), exts) == name for exts in groups):
            found.add(frame)
    return found



def pattern_of(output_pattern: str | None, output_name: str) -> str:
    """The pattern a job's frames are named by: the scene's own, or for a spec (or an
    assign from a server) that names none, ``<output_name>_####``."""
    return f"{output_name}_####" if output_pattern is None else output_pattern
