"""Trusting files, not exit codes: is a rendered frame a whole image, and what is it called.

Blender can exit 0 after a failed render and 1 after a good one, and a killed
render can leave half a file behind. Before a frame is uploaded its file is checked
here: it exists, is not empty, starts with its format's magic bytes (every still
format Blender writes; TARGA, which has none, by a plausible header) and, where the
format has one, ends with its trailer or is as long as its header says.

Pure and small: reads a few bytes from each end of a file, never decodes an image,
never imports bpy, aiohttp or anything outside ``protocol``. Callers on the event
loop run :func:`check_image` in a thread like any other file read.
"""

from __future__ import annotations

import os

from blenderfarm.protocol.naming import frame_name

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
    """Return the file's format (a name of ``jobspec.STILL_FORMATS``; both OpenEXR
    kinds are "OPEN_EXR", both TARGA kinds "TARGA"), or raise BadOutput.

    ``expected``, when given, is the format the job asked for; another one is bad.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
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
    if expected is not None and fmt != _KIND.get(expected, expected):
        raise BadOutput(f"the frame is {fmt}, but the job asked for {expected}", path)
    return fmt


#: formats that share a file kind
_KIND = {"OPEN_EXR_MULTILAYER": "OPEN_EXR", "TARGA_RAW": "TARGA"}
_HEAD = 32
#: (format, magic bytes at offset 0, smallest whole file); checked after PNG and JPEG
_MAGIC = (
    ("OPEN_EXR", EXR_MAGIC, 32),  # no trailer; a header alone is more than 32 bytes
    ("TIFF", b"II*\x00", 16), ("TIFF", b"MM\x00*", 16),
    ("HDR", b"#?RADIANCE", 16), ("HDR", b"#?RGBE", 16),
    ("DPX", b"SDPX", 2048), ("DPX", b"XPDS", 2048),  # a DPX header is 2048 bytes
    ("CINEON", b"\x80\x2a\x5f\xd7", 1024), ("CINEON", b"\xd7\x5f\x2a\x80", 1024),
    ("JPEG2000", b"\x00\x00\x00\x0cjP  \r\n\x87\n", 64), ("JPEG2000", b"\xff\x4f\xff\x51", 64),
    ("IRIS", b"\x01\xda", 512),  # an SGI header is 512 bytes
    ("BMP", b"BM", 54),  # file and info headers
)


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
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        if int.from_bytes(head[4:8], "little") + 8 > size:
            raise BadOutput("the WebP file is truncated (shorter than its RIFF size)", path)
        return "WEBP"
    for fmt, magic, least in _MAGIC:
        if head.startswith(magic):
            if size < least:
                raise BadOutput(f"the {fmt} file is truncated", path)
            if fmt == "BMP" and int.from_bytes(head[2:6], "little") > size:
                raise BadOutput("the BMP file is truncated (shorter than its header says)", path)
            return fmt
    if _is_targa(head, size):
        return "TARGA"
    raise BadOutput("the file is not an image in a format Blender writes", path)


def _is_targa(head: bytes, size: int) -> bool:
    """TARGA has no magic bytes: a plausible header (colour-map type 0 or 1, an image
    type Blender writes, a size and depth) and room for the header."""
    if size < 18 + 1 or len(head) < 18:
        return False
    cmap, kind = head[1], head[2]
    width, height = int.from_bytes(head[12:14], "little"), int.from_bytes(head[14:16], "little")
    return cmap in (0, 1) and kind in (1, 2, 3, 9, 10, 11) and width > 0 and height > 0 \
        and head[16] in (8, 15, 16, 24, 32)


def frame_file_name(output_name: str, frame: int, fmt: str) -> str:
    """The file name Blender gives a frame of a job without an output pattern:
    ``shot_0001.png`` (at least 4 digits, ``shot_-0001.png`` for frame -1)."""
    return frame_name(f"{output_name}_####", frame, fmt)
