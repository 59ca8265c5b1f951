"""The node's blob cache stays within its bound: real files in a temporary cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from blenderfarm.node.cache import BlobCache


def _put(cache: BlobCache, data: bytes, used: float) -> str:
    """A blob in the cache, last used at ``used`` (seconds since the epoch)."""
    sha = hashlib.sha256(data).hexdigest()
    fd, tmp = cache.open_temp()
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    cache.commit(tmp, sha, sha)
    os.utime(cache.path(sha), (used, used))
    return sha


def test_the_least_recently_used_blobs_go_first_never_a_pinned_one(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "blobs")
    jobs = tmp_path / "jobs"
    old, pinned, mid, new = (_put(cache, bytes([i]) * 1000, 1000.0 + i) for i in range(4))
    assert cache.trim(4000, set(), jobs, set()).files == 0  # within its bound: untouched
    done = cache.trim(2000, {pinned}, jobs, set())
    assert (done.files, done.freed, done.size) == (2, 2000, 2000)
    assert [cache.has(s) for s in (old, pinned, mid, new)] == [False, True, False, True]
    # a pinned blob stays even past the bound; the cache says how much it holds
    done = cache.trim(0, {pinned}, jobs, set())
    assert not cache.has(new) and cache.has(pinned) and done.size == 1000


def test_a_blob_used_again_is_kept_over_one_used_long_ago(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "blobs")
    first, second = _put(cache, b"a" * 100, 1000.0), _put(cache, b"b" * 100, 2000.0)
    cache.touch([first])  # a job laid out with it just now
    cache.trim(100, set(), tmp_path / "jobs", set())
    assert cache.has(first) and not cache.has(second)


def test_job_folders_not_in_use_go_so_their_blobs_can(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "blobs")
    jobs = tmp_path / "jobs"
    a, b = _put(cache, b"x" * 500, 1000.0), _put(cache, b"y" * 500, 2000.0)
    cache.materialise({"shot.blend": a}, jobs / "done-job")
    cache.materialise({"shot.blend": b}, jobs / "open-job")
    done = cache.trim(500, set(), jobs, {"open-job"})
    # the finished job's folder went, then its blob; the open job's folder and blob stay
    assert done.jobs == ["done-job"] and not (jobs / "done-job").exists()
    assert not cache.has(a) and cache.has(b) and (jobs / "open-job" / "shot.blend").is_file()
    done = cache.trim(0, set(), jobs, {"open-job"})
    assert cache.has(b) and done.files == 0  # linked by a job in use: removing frees nothing
