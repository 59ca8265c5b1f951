"""The node's blob cache and the job folders made from it.

One cache for every job (``<work>/blobs/ab/abcdef...``): a texture shared by ten
jobs is downloaded once. A job folder (``<work>/jobs/<job>/``) is the manifest
laid out with hard links into the cache (copies where links are impossible), so
Blender sees the project exactly as the artist packed it. Every path from a
manifest is resolved and confined (:func:`~.safe.inside`) before a file is placed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ..protocol.hashing import is_sha256, link_or_copy
from ..protocol.paths import normalize_relpath
from .safe import inside


class CacheError(RuntimeError):
    """A blob that could not be fetched or placed (``sha256`` names it)."""

    def __init__(self, message: str, sha256: str | None = None) -> None:
        super().__init__(message)
        self.sha256 = sha256


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise CacheError(f"not a sha256: {sha256[:80]!r}", sha256)
        return inside(self.root, sha256[:2], sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def count(self) -> int:
        return sum(1 for d in self.root.iterdir() if d.name != "tmp" and d.is_dir()
                   for _ in d.iterdir())

    def open_temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.tmp)

    def commit(self, tmp_name: str, sha256: str, digest: str) -> None:
        """Move a downloaded file into place once its hash is checked."""
        try:
            if digest != sha256:
                raise CacheError(f"downloaded blob hashes to {digest}, expected {sha256}", sha256)
            dest = self.path(sha256)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def materialise(self, manifest: dict[str, str], job_dir: Path) -> None:
        """Lay out the job folder; files already right (same inode) are left alone."""
        job_dir.mkdir(parents=True, exist_ok=True)
        for raw, sha in manifest.items():
            rel = normalize_relpath(raw)  # never trust a path, even from our server
            dest = inside(job_dir, rel)  # a link in the folder must not lead out of it
            src = self.path(sha)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samefile(src, dest):
                    continue
            link_or_copy(src, dest)

