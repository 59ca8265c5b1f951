"""Manifest paths: relative, normalised, confined to the job folder.

A manifest maps such a path to the SHA-256 of the file's bytes. Every party that
writes a manifest path to disk goes through :func:`normalize_relpath` first.
"""

from __future__ import annotations

import re

_DRIVE = re.compile(r"^[A-Za-z]:")
_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {
    f"lpt{i}" for i in range(1, 10)
}
MAX_PATH = 1024


class PathError(ValueError):
    """A manifest path that is absolute, escapes its folder or is otherwise unsafe."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{message}: {path!r}")
        self.path = path


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: JSON's ``\\ud800`` escape makes a string that
    cannot, and every file, database and message the farm writes needs one that can."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_relpath(path: str) -> str:
    """Return ``path`` with forward slashes and no ``.`` parts, or raise PathError."""
    if not isinstance(path, str) or not path:
        raise PathError("empty path", str(path))
    if len(path) > MAX_PATH:
        raise PathError("path too long", path[:60] + "...")
    if "\x00" in path or any(ord(c) < 32 for c in path):
        raise PathError("control character in path", path)
    if not is_utf8(path):
        raise PathError("not valid UTF-8 (a lone surrogate)", path.encode("utf-8", "replace")
                        .decode())
    p = path.replace("\\", "/")
    if p.startswith("/") or _DRIVE.match(p):
        raise PathError("absolute path", path)
    parts = [part for part in p.split("/") if part not in ("", ".")]
    if not parts:
        raise PathError("empty path", path)
    for part in parts:
        if part == "..":
            raise PathError("'..' in path", path)
        if part.split(".")[0].lower() in _RESERVED:
            raise PathError("reserved file name", path)
        if part.endswith((" ", ".")) and part != part.rstrip(" ."):
            raise PathError("name ends in a dot or space", path)
    return "/".join(parts)
