"""OpenEXR files read and written in plain Python, for the merge of a tiled frame.

The passes of a multilayer EXR are out of bpy's reach (``Image.pixels`` is its first
pass only) and Blender's Python has no numpy or OpenImageIO (Debian's Blender), so the
merge (``tiles.py``) reads the tiles' scanline EXRs and writes the merged one here,
moving float rows as bytes. Only what tiles use: scanline files, single-part or
multi-part (Blender 5 writes a multilayer EXR as one part per pass), codecs NONE, ZIPS
and ZIP (lossless), UINT, HALF and FLOAT channels; it writes single-part files. Standard library only, no bpy: it runs
inside Blender beside the runner, and its tests run outside.
"""

from __future__ import annotations

import itertools
import struct
import zlib


def image_size(path: str) -> tuple[int, int]:
    """The pixel size of an OpenEXR file from its (first part's) header ((0, 0):
    unreadable). Not from bpy: a multilayer image there has no size until its pixels are
    read."""
    try:
        with open(path, "rb") as file:
            [attrs, *_], _ = _exr_headers(file.read())
        x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"][1])
    except (OSError, ValueError, KeyError, struct.error):
        return 0, 0
    return x1 - x0 + 1, y1 - y0 + 1


EXR_MAGIC = b"\x76\x2f\x31\x01"
PIXEL_BYTES = {0: 4, 1: 2, 2: 4}  # UINT, HALF, FLOAT
_BLOCK_LINES = {0: 1, 2: 1, 3: 16}  # NONE, ZIPS, ZIP: lossless, and what tiles use
_TILED, _LONG_NAMES, _DEEP, _MULTIPART = 0x200, 0x400, 0x800, 0x1000
_FLIP_HIGH_BIT = bytes(b ^ 0x80 for b in range(256))
_STRUCTURE = ("channels", "compression", "dataWindow", "displayWindow", "lineOrder")
#: a part's own attributes in a multi-part file (OpenEXR's ImfMultiPartInputFile)
_PART = ("name", "type", "chunkCount", "version", "view")


class Exr:
    """A scanline OpenEXR: ``channels`` ``[(name, pixel type)]`` in the file's (sorted)
    order, ``planes`` each channel's pixels as rows from the top, ``attrs`` every other
    header attribute (metadata: cryptomatte manifests, aspect) as ``name: (type, raw)``."""

    def __init__(self, width: int, height: int, channels: list[tuple[str, int]],
                 attrs: dict[str, tuple[str, bytes]], planes: dict[str, bytearray]) -> None:
        self.width, self.height = width, height
        self.channels, self.attrs, self.planes = channels, attrs, planes


def _exr_headers(data: bytes) -> tuple[list[dict[str, tuple[str, bytes]]], int]:
    """Each part's header attributes (one for a single-part file) and where the offset
    tables start (ValueError: not a scanline OpenEXR).

    Blender 5 writes a multilayer EXR as a multi-part file, one part per pass, each part
    with the full channel names (``ViewLayer.Combined.R``); older Blenders write one part."""
    if data[:4] != EXR_MAGIC:
        raise ValueError("not an OpenEXR file")
    (version,) = struct.unpack_from("<I", data, 4)
    if version & (_TILED | _DEEP):
        raise ValueError("a tiled or deep OpenEXR")
    pos, headers = 8, []
    while True:
        attrs = {}
        while data[pos] != 0:
            name_end = data.index(b"\0", pos)
            type_end = data.index(b"\0", name_end + 1)
            (size,) = struct.unpack_from("<i", data, type_end + 1)
            start = type_end + 5
            attrs[data[pos:name_end].decode("latin-1")] = (
                data[name_end + 1:type_end].decode("latin-1"), bytes(data[start:start + size]))
            pos = start + size
        pos += 1
        headers.append(attrs)
        # a multi-part file ends its list of headers with an empty one
        if not version & _MULTIPART or data[pos] == 0:
            break
    if version & _MULTIPART:
        pos += 1
        if any(attrs.get("type", ("", b""))[1].rstrip(b"\0") != b"scanlineimage"
               for attrs in headers):
            raise ValueError("a multi-part OpenEXR with a part that is not scanlines")
    return headers, pos


def _exr_channels(raw: bytes) -> list[tuple[str, int]]:
    channels, pos = [], 0
    while raw[pos] != 0:
        end = raw.index(b"\0", pos)
        ptype, xs, ys = struct.unpack_from("<i4xii", raw, end + 1)
        if ptype not in PIXEL_BYTES or (xs, ys) != (1, 1):
            raise ValueError("a channel of a subsampled or unknown pixel type")
        channels.append((raw[pos:end].decode("latin-1"), ptype))
        pos = end + 17
    return channels


def _unzip(block: bytes, size: int) -> bytes:
    """OpenEXR's ZIP block: zlib, then a byte delta predictor, then its two halves
    interleaved (OpenEXR's ImfZip.cpp)."""
    raw = zlib.decompress(block)
    if len(raw) != size:
        raise ValueError("a ZIP block of the wrong size")
    # the predictor is t[i] = t[i-1] + d[i] - 128 (mod 256), so t[i] is the plain sum of
    # d[0..i] mod 256, plus 128 where i is odd; summed and masked in C, not per byte
    plain = bytearray(map((0xFF).__and__, itertools.accumulate(raw)))
    plain[1::2] = plain[1::2].translate(_FLIP_HIGH_BIT)
    out = bytearray(size)
    half = (size + 1) // 2
    out[0::2], out[1::2] = plain[:half], plain[half:]
    return bytes(out)


def read_exr(path: str) -> Exr:
    """A scanline OpenEXR of codec NONE, ZIPS or ZIP, single- or multi-part, as one
    :class:`Exr` of every part's channels (ValueError, OSError otherwise). The metadata is
    the first part's (Blender's multi-part files keep it there)."""
    with open(path, "rb") as file:
        data = file.read()
    try:
        headers, pos = _exr_headers(data)
        (version,) = struct.unpack_from("<I", data, 4)
        multipart = bool(version & _MULTIPART)
        parts = [_Part(attrs) for attrs in headers]
    except (KeyError, IndexError, struct.error) as exc:
        raise ValueError(f"a broken OpenEXR header ({exc})") from None
    first = parts[0]
    if any(part.window != first.window for part in parts):
        raise ValueError("an OpenEXR whose parts have different data windows")
    channels = sorted(c for part in parts for c in part.channels)
    if len({name for name, _ in channels}) != len(channels):
        raise ValueError("an OpenEXR with a channel in two parts")
    planes = {name: bytearray(PIXEL_BYTES[ptype] * first.width * first.height)
              for name, ptype in channels}
    try:
        for index, part in enumerate(parts):
            count = part.chunks if multipart else -(-part.height // part.lines)
            offsets = struct.unpack_from(f"<{count}Q", data, pos)
            pos += 8 * count
            for offset in offsets:
                if multipart:  # each chunk starts with its part's number
                    (number,) = struct.unpack_from("<i", data, offset)
                    if number != index:
                        raise ValueError("a chunk of another part in a part's table")
                    offset += 4
                _read_block(data, offset, part, planes)
    except (struct.error, zlib.error) as exc:
        raise ValueError(f"broken OpenEXR pixels ({exc})") from None
    return Exr(first.width, first.height, channels,
               {k: v for k, v in first.attrs.items() if k not in _STRUCTURE + _PART}, planes)


class _Part:
    """One part's layout, from its header."""

    def __init__(self, attrs: dict[str, tuple[str, bytes]]) -> None:
        self.attrs = attrs
        self.channels = _exr_channels(attrs["channels"][1])
        codec = attrs["compression"][1][0]
        if codec not in _BLOCK_LINES:
            raise ValueError(f"OpenEXR compression {codec}, which the merge does not read")
        self.codec, self.lines = codec, _BLOCK_LINES[codec]
        self.window = struct.unpack("<4i", attrs["dataWindow"][1])
        x0, y0, x1, y1 = self.window
        self.width, self.height = x1 - x0 + 1, y1 - y0 + 1
        self.chunks = struct.unpack("<i", attrs["chunkCount"][1])[0] \
            if "chunkCount" in attrs else -(-self.height // self.lines)
        self.rows = [(name, self.width * PIXEL_BYTES[ptype]) for name, ptype in self.channels]
        self.line = sum(size for _, size in self.rows)


def _read_block(data: bytes, offset: int, part: _Part, planes: dict[str, bytearray]) -> None:
    """Copy one scanline block at ``offset`` (its y, size and pixels) into ``planes``."""
    y, size = struct.unpack_from("<ii", data, offset)
    y0, y1 = part.window[1], part.window[3]
    if not y0 <= y <= y1:
        raise ValueError("a scanline block outside the data window")
    count = min(part.lines, y1 + 1 - y)
    block = data[offset + 8:offset + 8 + size]
    # OpenEXR stores a block that would not shrink as it is
    if part.codec != 0 and size < count * part.line:
        block = _unzip(block, count * part.line)
    if len(block) != count * part.line:
        raise ValueError("a scanline block of the wrong size")
    at = 0
    for row in range(y - y0, y - y0 + count):
        for name, size in part.rows:
            planes[name][row * size:(row + 1) * size] = block[at:at + size]
            at += size


def write_exr(path: str, exr: Exr) -> None:
    """Write ``exr`` as an uncompressed scanline OpenEXR (it lives only for the merge)."""
    box = struct.pack("<4i", 0, 0, exr.width - 1, exr.height - 1)
    attrs = {"pixelAspectRatio": ("float", struct.pack("<f", 1.0)),
             "screenWindowCenter": ("v2f", struct.pack("<2f", 0.0, 0.0)),
             "screenWindowWidth": ("float", struct.pack("<f", 1.0)),
             **exr.attrs,
             "channels": ("chlist", b"".join(name.encode("latin-1") + b"\0"
                                             + struct.pack("<iB3xii", ptype, 0, 1, 1)
                                             for name, ptype in exr.channels) + b"\0"),
             "compression": ("compression", b"\0"), "dataWindow": ("box2i", box),
             "displayWindow": ("box2i", box), "lineOrder": ("lineOrder", b"\0")}
    header = b"".join(name.encode("latin-1") + b"\0" + kind.encode("latin-1") + b"\0"
                      + struct.pack("<i", len(value)) + value
                      for name, (kind, value) in attrs.items()) + b"\0"
    names = [*attrs, *(name for name, _ in exr.channels)]
    version = 2 | (_LONG_NAMES if any(len(n.encode("latin-1")) > 31 for n in names) else 0)
    rows = [(name, exr.width * PIXEL_BYTES[ptype]) for name, ptype in exr.channels]
    line = sum(size for _, size in rows)
    first = 8 + len(header) + 8 * exr.height
    with open(path, "wb") as file:
        file.write(EXR_MAGIC + struct.pack("<I", version) + header)
        file.write(struct.pack(f"<{exr.height}Q", *(first + y * (8 + line)
                                                    for y in range(exr.height))))
        for y in range(exr.height):
            file.write(struct.pack("<ii", y, line))
            for name, size in rows:
                file.write(exr.planes[name][y * size:(y + 1) * size])


# --- the merge --------------------------------------------------------------------------
