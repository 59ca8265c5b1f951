"""Content addresses: every file that travels is named by the SHA-256 of its bytes.

Also the one way a content-addressed store hands a file out (:func:`link_or_copy`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


def is_sha256(value: object) -> bool:
    """True for a lowercase hex SHA-256 digest (the only blob name we accept)."""
    return isinstance(value, str) and _SHA256.match(value) is not None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hash a file in 1 MiB reads (constant memory, whatever its size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def link_or_copy(src: Path, dest: Path) -> None:
    """Make ``dest`` hold ``src``'s bytes: a hard link where the file system allows one
    (no copy, no extra space; blobs are never modified in place), else a copy. The
    new file appears atomically, so a reader never sees half of it."""
    try:  # the common case, one system call: a new name in an existing folder
        os.link(src, dest)
        return
    except FileNotFoundError:
        if not os.path.exists(src):
            raise
    except OSError:
        pass  # already there (replaced below), or no hard links on this file system
    with contextlib.suppress(OSError):
        if os.path.samefile(src, dest):
            return  # linked already (a frame is reported twice: frame_done, task_done)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{threading.get_ident()}.bf-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    # rename() of two names of one file does nothing and leaves both: never a twin
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
