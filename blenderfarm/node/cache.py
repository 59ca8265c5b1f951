"""The node's blob cache and the job folders made from it.

One cache for every job (``<work>/blobs/ab/abcdef...``): a texture shared by ten
jobs is downloaded once. A job folder (``<work>/jobs/<job>/``) is the manifest
laid out with hard links into the cache (copies where links are impossible), so
Blender sees the project exactly as the artist packed it. Every path from a
manifest is resolved and confined (:func:`~.safe.inside`) before a file is placed.

The cache is bounded (:meth:`BlobCache.trim`, the node's ``cache_size``): least
recently used blobs go first (laying out a job marks its blobs used), but never one a
held task needs (the caller pins them) nor the folder of a job in use. A job folder
holds links to its blobs, so trimming removes the folders of jobs not in use before
it removes blobs: a blob still linked from a folder would free nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.hashing import is_sha256, link_or_copy
from ..protocol.paths import normalize_relpath
from .safe import inside

log = logging.getLogger(__name__)


class CacheError(RuntimeError):
    """A blob that could not be fetched or placed (``sha256`` names it)."""

    def __init__(self, message: str, sha256: str | None = None) -> None:
        super().__init__(message)
        self.sha256 = sha256


@dataclass
class Trimmed:
    """What :meth:`BlobCache.trim` removed, and what the cache holds after."""

    jobs: list[str] = field(default_factory=list)  # job folders removed
    files: int = 0
    freed: int = 0  # bytes
    size: int = 0  # bytes the cache holds now


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

    def touch(self, shas: Collection[str]) -> None:
        """Mark blobs used now: :meth:`trim` removes the least recently used first."""
        for sha in shas:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path(sha))

    def _blobs(self) -> list[tuple[float, int, str, Path]]:
        """(last used, size, sha256, path) of every blob."""
        found = []
        for d in self.root.iterdir():
            if d.name == "tmp" or not d.is_dir():
                continue
            for f in d.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    st = f.stat()
                    found.append((st.st_mtime, st.st_size, f.name, f))
        return found

    def trim(self, limit: int, pinned: Collection[str], jobs_dir: Path,
             jobs_in_use: Collection[str]) -> Trimmed:
        """Bring the cache to at most ``limit`` bytes: first remove the folders in
        ``jobs_dir`` of jobs not in ``jobs_in_use``, then the least recently used blobs,
        never one in ``pinned`` nor one a remaining job folder links. A cache within its
        bound is left as it is. Runs in a thread (it walks the disk)."""
        blobs = self._blobs()
        out = Trimmed(size=sum(b[1] for b in blobs))
        if out.size <= limit:
            return out
        with contextlib.suppress(FileNotFoundError):
            for folder in jobs_dir.iterdir():
                if folder.name not in jobs_in_use and folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)
                    out.jobs.append(folder.name)
        for _used, size, sha, path in sorted(blobs):
            if out.size <= limit:
                break
            if sha in pinned:
                continue
            try:
                if path.stat().st_nlink > 1:  # a job in use links it: removing frees nothing
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            out.files += 1
            out.freed += size
            out.size -= size
        return out

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

