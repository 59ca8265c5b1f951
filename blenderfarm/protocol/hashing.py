"""Content addresses: every file that travels is named by the SHA-256 of its bytes."""

from __future__ import annotations

import hashlib
import os
import re

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
