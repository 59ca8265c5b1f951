"""Blender versions in a job: the one that saved its .blend, and the range it is pinned to.

:func:`saved_version` reads the version of the Blender that saved a .blend from the
file's header (plain, gzip or zstd: the first bytes after decompression), without
Blender and without reading more than the header. :func:`parse_saved` and
:func:`parse_pin` are the job spec's grammars (``validate_spec`` calls them):

- ``blender_saved``: ``"MAJOR.MINOR"`` (``"4.5"``), the Blender that saved the file;
  a node runs the job only with that Blender or a newer one.
- ``blender``: a pin that replaces that rule: ``">=4.5"`` (4.5 or newer) or ``"4.5"``
  (4.5.x only).

Pure: the only I/O is reading the file object it is given. It must not import ``bpy``.
"""

from __future__ import annotations

import gzip
import io
import re
from functools import lru_cache
from typing import IO, Protocol, cast

Version = tuple[int, int]  # (major, minor)

MAX_PART = 99  # a major or minor above this is a typo, not a Blender
_VERSION = re.compile(r"([0-9]{1,2})\.([0-9]{1,2})")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE = 0x184D2A50  # skippable frames: 0x184D2A50..0x184D2A5F
#: enough for both headers: ``BLENDER-v304`` (12 bytes, up to Blender 4.x) and
#: ``BLENDER17-01v0500`` (17 bytes, Blender 5's header for large files)
HEADER_BYTES = 17


class BlendVersionError(ValueError):
    """A .blend whose header names no Blender version (or cannot be decompressed here)."""


def parse_header(head: bytes) -> Version:
    """The (major, minor) of the Blender that wrote the uncompressed header ``head``.

    Formats as BAT's ``blendfile/header.py`` reads them: ``BLENDER`` then either the
    legacy ``_``/``-`` (pointer size), ``v``/``V`` (endianness) and 3 digits (``304``:
    3.4), or a 2-digit header size (``17``), ``-``, a 2-digit format version, ``v`` and
    4 digits (``0500``: 5.0)."""
    if not head.startswith(b"BLENDER") or len(head) < 12:
        raise BlendVersionError("not a .blend file (no BLENDER header)")
    if head[7:8] in (b"_", b"-"):
        digits = head[9:12]
        if head[8:9] not in (b"v", b"V"):
            raise BlendVersionError("a .blend header with an unknown byte order")
    elif head[7:9] == b"17" and head[9:10] == b"-" and head[12:13] == b"v":
        digits = head[13:17]
    else:
        raise BlendVersionError("a .blend header of a format this farm does not know")
    if not digits.isdigit() or len(digits) not in (3, 4):
        raise BlendVersionError("a .blend header without a version number")
    number = int(digits)
    return number // 100, number % 100


def read_header(fileobj: IO[bytes]) -> bytes:
    """The first :data:`HEADER_BYTES` of the .blend in ``fileobj``, decompressed."""
    start = fileobj.read(4)
    rest = fileobj.read(HEADER_BYTES - len(start))
    raw = start + rest
    if raw.startswith(GZIP_MAGIC):
        with gzip.GzipFile(fileobj=_Prefixed(raw, fileobj)) as gz:
            return _read_exactly(gz)
    if raw.startswith(ZSTD_MAGIC) or (
            len(raw) >= 4 and int.from_bytes(raw[:4], "little") & ~0xF == ZSTD_SKIPPABLE):
        try:
            import zstandard  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise BlendVersionError("a zstd-compressed .blend, and the zstandard module "
                                    "is not installed") from exc
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], _Prefixed(raw, fileobj)), read_across_frames=True)
        try:
            return _read_exactly(reader)
        except zstandard.ZstdError as exc:
            raise BlendVersionError(f"a damaged zstd-compressed .blend ({exc})") from exc
    return raw


def saved_version(fileobj: IO[bytes]) -> Version:
    """The (major, minor) of the Blender that saved the .blend in ``fileobj`` (opened
    in binary mode at its start). Raises BlendVersionError."""
    try:
        head = read_header(fileobj)
    except (OSError, EOFError) as exc:  # gzip's BadGzipFile is an OSError
        raise BlendVersionError(f"a damaged compressed .blend ({exc})") from exc
    return parse_header(head)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_exactly(stream: _Readable) -> bytes:
    out = b""
    while len(out) < HEADER_BYTES:
        chunk = stream.read(HEADER_BYTES - len(out))
        if not chunk:
            break
        out += chunk
    return out


class _Prefixed(io.RawIOBase):
    """``prefix`` (bytes already read) followed by the rest of ``fileobj``."""

    def __init__(self, prefix: bytes, fileobj: IO[bytes]) -> None:
        self._prefix, self._file = prefix, fileobj

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# --- the job spec's grammar --------------------------------------------------------------


def format_version(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def parse_saved(text: str) -> Version:
    """``"4.5"`` -> (4, 5); ValueError with the grammar otherwise."""
    match = _VERSION.fullmatch(text)
    if match is None:
        raise ValueError("must be a Blender version MAJOR.MINOR such as \"4.5\"")
    return int(match[1]), int(match[2])


def parse_pin(text: str) -> tuple[Version, bool]:
    """A pin: ``">=4.5"`` -> ((4, 5), True) (that or newer), ``"4.5"`` -> ((4, 5), False)
    (4.5.x only); ValueError with the grammar otherwise."""
    at_least = text.startswith(">=")
    try:
        return parse_saved(text[2:] if at_least else text), at_least
    except ValueError:
        raise ValueError("must be a Blender version such as \"4.5\" (4.5.x only) or "
                         "\">=4.5\" (4.5 or newer)") from None


def normal_saved(text: str) -> str:
    """``blender_saved`` in its one spelling (``"4.05"`` -> ``"4.5"``); ValueError."""
    return format_version(parse_saved(text))


def normal_pin(text: str) -> str:
    """``blender`` in its one spelling (``">=4.05"`` -> ``">=4.5"``); ValueError."""
    version, at_least = parse_pin(text)
    return (">=" if at_least else "") + format_version(version)


@lru_cache(maxsize=1024)  # the scheduler asks for every node it offers a job
def node_version(text: str) -> Version | None:
    """(major, minor) of a node's Blender version string (``"3.4.1"``); None if unknown."""
    match = re.match(r"([0-9]+)\.([0-9]+)", text or "")
    return (int(match[1]), int(match[2])) if match else None


@lru_cache(maxsize=1024)
def needs(saved: str | None, pin: str | None) -> tuple[Version, bool] | None:
    """What a job needs of a node's Blender, from its (validated) spec fields: the pin,
    else the saving Blender or newer; None: any Blender (a spec from before)."""
    if pin:
        return parse_pin(pin)
    if saved:
        return parse_saved(saved), True
    return None


def satisfies(have: Version | None, need: tuple[Version, bool]) -> bool:
    version, at_least = need
    if have is None:
        return False
    return have >= version if at_least else have == version


def describe_need(need: tuple[Version, bool]) -> str:
    """``"Blender >= 4.5"`` or ``"Blender 4.5"``."""
    version, at_least = need
    return f"Blender {'>= ' if at_least else ''}{format_version(version)}"
