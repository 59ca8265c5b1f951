"""OpenEXR files read and written in plain Python, for the merge of a tiled frame.

The passes of a multilayer EXR are out of bpy's reach (``Image.pixels`` is its first
pass only) and Blender's Python has no numpy or OpenImageIO (Debian's Blender), so the
merge (``tiles.py``) reads the tiles' scanline EXRs and writes the merged one here,
moving float rows as bytes. Only what tiles use: scanline files, codecs NONE, ZIPS and
ZIP (lossless), UINT, HALF and FLOAT channels. Standard library only, no bpy: it runs
inside Blender beside the runner, and its tests run outside.
"""

from __future__ import annotations

import itertools
import struct
import zlib


def image_size(path: str) -> tuple[int, int]:
    """The pixel size of an OpenEXR file from its header ((0, 0): unreadable). Not from
    bpy: a multilayer image there has no size until its pixels are read."""
    try:
        with open(path, "rb") as file:
            attrs, _ = _exr_header(file.read())
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


class Exr:
    """A scanline OpenEXR: ``channels`` ``[(name, pixel type)]`` in the file's (sorted)
    order, ``planes`` each channel's pixels as rows from the top, ``attrs`` every other
    header attribute (metadata: cryptomatte manifests, aspect) as ``name: (type, raw)``."""

    def __init__(self, width: int, height: int, channels: list[tuple[str, int]],
                 attrs: dict[str, tuple[str, bytes]], planes: dict[str, bytearray]) -> None:
        self.width, self.height = width, height
        self.channels, self.attrs, self.planes = channels, attrs, planes


def _exr_header(data: bytes) -> tuple[dict[str, tuple[str, bytes]], int]:
    """The header's attributes and where the offset table starts (ValueError: not a
    single-part scanline OpenEXR)."""
    if data[:4] != EXR_MAGIC:
        raise ValueError("not an OpenEXR file")
    (version,) = struct.unpack_from("<I", data, 4)
    if version & (_TILED | _DEEP | _MULTIPART):
        raise ValueError("a tiled, deep or multi-part OpenEXR")
    pos, attrs = 8, {}
    while data[pos] != 0:
        name_end = data.index(b"\0", pos)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack_from("<i", data, type_end + 1)
        start = type_end + 5
        attrs[data[pos:name_end].decode("latin-1")] = (
            data[name_end + 1:type_end].decode("latin-1"), bytes(data[start:start + size]))
        pos = start + size
    return attrs, pos + 1


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
    """A scanline OpenEXR of codec NONE, ZIPS or ZIP (ValueError, OSError otherwise)."""
    with open(path, "rb") as file:
        data = file.read()
    try:
        attrs, pos = _exr_header(data)
        channels = _exr_channels(attrs["channels"][1])
        codec = attrs["compression"][1][0]
        x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"][1])
    except (KeyError, IndexError, struct.error) as exc:
        raise ValueError(f"a broken OpenEXR header ({exc})") from None
    if codec not in _BLOCK_LINES:
        raise ValueError(f"OpenEXR compression {codec}, which the merge does not read")
    width, height, lines = x1 - x0 + 1, y1 - y0 + 1, _BLOCK_LINES[codec]
    rows = [(name, width * PIXEL_BYTES[ptype]) for name, ptype in channels]
    line = sum(size for _, size in rows)
    planes = {name: bytearray(size * height) for name, size in rows}
    try:
        offsets = struct.unpack_from(f"<{-(-height // lines)}Q", data, pos)
        for offset in offsets:
            y, size = struct.unpack_from("<ii", data, offset)
            count = min(lines, y1 + 1 - y)
            block = data[offset + 8:offset + 8 + size]
            # OpenEXR stores a block that would not shrink as it is
            if codec != 0 and size < count * line:
                block = _unzip(block, count * line)
            if len(block) != count * line:
                raise ValueError("a scanline block of the wrong size")
            at = 0
            for row in range(y - y0, y - y0 + count):
                for name, size in rows:
                    planes[name][row * size:(row + 1) * size] = block[at:at + size]
                    at += size
    except (struct.error, zlib.error) as exc:
        raise ValueError(f"broken OpenEXR pixels ({exc})") from None
    return Exr(width, height, channels, {k: v for k, v in attrs.items()
                                         if k not in _STRUCTURE}, planes)


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
