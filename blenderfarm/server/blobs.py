"""The content-addressed blob store: ``blobs/ab/abcdef...`` under the data dir.

A blob is written to a temporary file while its bytes are hashed, fsynced, checked
against the name it was uploaded under, and only then renamed into place, so a
blob file that exists is always complete and correct. Disk work runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from ..protocol.hashing import is_sha256, link_or_copy

#: bytes hashed and written per trip to a thread while the next ones arrive
BATCH = 1 << 20


class BlobError(ValueError):
    """An upload that does not match its name, or is too large."""

    def __init__(self, message: str, sha256: str, code: str = "bad_blob") -> None:
        super().__init__(message)
        self.sha256 = sha256
        self.code = code


class BlobStore:
    def __init__(self, root: Path, max_size: int = 64 * 1024**3) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.max_size = max_size

    def prepare(self) -> None:
        """Create the folders and drop temporary files a crash left behind."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise BlobError("not a sha256", str(sha256)[:80], "bad_hash")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def missing(self, hashes: list[str]) -> list[str]:
        return [h for h in dict.fromkeys(hashes) if not self.exists(h)]

    async def write(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the streamed bytes under ``sha256``; raise BlobError if they hash otherwise.

        Received chunks are gathered into batches of about :data:`BATCH` bytes, and each
        batch is hashed and written in a thread while the loop goes on receiving the next
        one (at most one batch in flight, so memory stays bounded and order kept). No
        byte is copied on the way: hashlib and the write both take the chunks as they are.
        """
        final = self.path(sha256)
        f, tmp_name = await asyncio.to_thread(self._open_temp, sha256)
        h = hashlib.sha256()
        loop = asyncio.get_running_loop()
        size = 0
        batch: list[bytes] = []
        batched = 0
        pending: asyncio.Future[None] | None = None  # the batch being written, if any
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_size:
                    raise BlobError(f"blob larger than {self.max_size} bytes", sha256, "too_large")
                batch.append(chunk)
                batched += len(chunk)
                if batched >= BATCH:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, _write_hash, f, h, batch)
                    batch, batched = [], 0
            if pending is not None:
                await pending
            pending = None
            await asyncio.to_thread(_write_hash, f, h, batch, True)
            digest = h.hexdigest()
            if digest != sha256:
                raise BlobError(f"content hashes to {digest}, not {sha256}", sha256, "hash_mismatch")
            await asyncio.to_thread(_place, Path(tmp_name), final)
            return size
        finally:
            if pending is not None:  # failed midway: let the thread finish with the file first
                await asyncio.wait([pending])
                if not pending.cancelled():
                    pending.exception()  # seen: the error that brought us here is the news
            await asyncio.to_thread(_discard, f, tmp_name)

    def _open_temp(self, sha256: str) -> tuple[BinaryIO, str]:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix=sha256[:12] + ".")
        return os.fdopen(fd, "wb"), name

    def adopt(self, path: Path) -> tuple[str, int]:
        """Take a file the server made itself (a video it encoded) into the store: it is
        hashed, synced and moved in (``path`` is gone after); its sha256 and size.
        ``path`` must be on the store's file system (the data dir). Blocks: a thread."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
            os.fsync(f.fileno())
        sha = h.hexdigest()
        size = path.stat().st_size
        _place(path, self.path(sha))
        return sha, size

    def link_to(self, sha256: str, dest: Path) -> None:
        """Make ``dest`` a copy of the blob (hard link where the file system allows)."""
        link_or_copy(self.path(sha256), dest)


def _write_hash(f: BinaryIO, h: hashlib._Hash, data: list[bytes], final: bool = False) -> None:
    for chunk in data:
        h.update(chunk)  # releases the GIL: the loop runs on while a batch is hashed
    f.writelines(data)
    if final:
        f.flush()
        os.fsync(f.fileno())


def _discard(f: BinaryIO, tmp_name: str) -> None:
    f.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp_name)  # gone already when the blob was placed


def _place(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
