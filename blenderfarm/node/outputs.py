"""Trusting files, not exit codes: is a rendered frame a whole image, and what is it called.

Blender can exit 0 after a failed render and 1 after a good one, and a killed
render can leave half a file behind. Before a frame is uploaded its file is checked
here: it exists, is not empty, starts with its format's magic bytes and, where the
format has one, ends with its trailer.

Pure and small: reads a few bytes from each end of a file, never decodes an image,
never imports bpy, aiohttp or anything outside ``protocol``. Callers on the event
loop run :func:`check_image` in a thread like any other file read.
"""

from __future__ import annotations

import os

from blenderfarm.protocol.jobspec import EXTENSIONS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the IEND chunk: zero length, type, and its fixed CRC
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG_START = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
EXR_MAGIC = b"\x76\x2f\x31\x01"
_TAIL = 64  # bytes read from the end: enough for any trailer plus padding


class BadOutput(Exception):
    """A rendered file that is missing, empty, truncated or not an image we know."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{message}: {path}")
        self.message = message
        self.path = path


def check_image(path: str, expected: str | None = None) -> str:
    """Return the file's format ("PNG", "JPEG" or "OPEN_EXR"), or raise BadOutput.

    ``expected``, when given, is the format the job asked for; another one is bad.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(PNG_SIGNATURE))
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except FileNotFoundError:
        raise BadOutput("the frame's file does not exist", path) from None
    except IsADirectoryError:
        raise BadOutput("the frame's path is a folder, not a file", path) from None
    except OSError as exc:
        raise BadOutput(f"the frame's file cannot be read ({exc.strerror})", path) from exc
    if size == 0:
        raise BadOutput("the frame's file is empty", path)
    fmt = _detect(head, tail, size, path)
    if expected is not None and fmt != expected:
        raise BadOutput(f"the frame is {fmt}, but the job asked for {expected}", path)
    return fmt


def _detect(head: bytes, tail: bytes, size: int, path: str) -> str:
    if head.startswith(PNG_SIGNATURE):
        if not tail.endswith(PNG_IEND):
            raise BadOutput("the PNG file is truncated (no IEND chunk at its end)", path)
        return "PNG"
    if head.startswith(JPEG_START):
        # some writers pad after the end marker; Blender does not, but be fair
        if size < 4 or not tail.rstrip(b"\x00").endswith(JPEG_END):
            raise BadOutput("the JPEG file is truncated (no end-of-image marker)", path)
        return "JPEG"
    if head.startswith(EXR_MAGIC):
        # EXR has no trailer; a header alone is at least the magic, version and one attribute
        if size < 32:
            raise BadOutput("the EXR file is truncated", path)
        return "OPEN_EXR"
    raise BadOutput("the file is not a PNG, JPEG or OpenEXR image", path)


def frame_file_name(output_name: str, frame: int, fmt: str) -> str:
    """The file name Blender gives a frame: ``shot_0001.png`` (at least 4 digits)."""
    try:
        extension = EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(EXTENSIONS)}") from None
    if frame < 0:
        raise ValueError("frame numbers are not negative")
    return f"{output_name}_{frame:04d}{extension}"
