"""Packing a project for the farm: a .blend and every file it needs, named by hash.

:func:`pack_project` copies the .blend with its dependencies (textures, linked
libraries, caches; also files outside the project folder) into a work folder with
blender-asset-tracer (BAT), or with ``copy=False`` copies only the .blend files and
notes where the others lie, and hashes every file into a manifest;
:func:`build_spec` turns the result into a validated job spec; :func:`upload_missing`
sends the server only the blobs it does not have yet.

Pure Python plus BAT: it must never import bpy (it runs in ``bf``, in tests and in
the add-on's worker thread) and never talk HTTP itself (that is ``api.Client``).
BAT keeps a process-wide cache of open .blend files, so one pack runs at a time.
"""

from __future__ import annotations

import collections
import contextlib
import getpass
import gzip
import os
import pathlib
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blender_asset_tracer import blendfile, bpathlib, trace
from blender_asset_tracer.blendfile import magic_compression
from blender_asset_tracer.pack import Aborted, AssetAction, Packer, filesystem, transfer
from blender_asset_tracer.pack import progress as bat_progress

from .. import blendinfo
from ..blendinfo import IMTYPES, scene_resolution  # noqa: F401 (bf reads them from here)
from ..protocol.blender_version import BlendVersionError, format_version, saved_version
from ..protocol.hashing import sha256_file
from ..protocol.jobspec import Overrides, validate_spec
from ..protocol.paths import PathError, normalize_relpath

if TYPE_CHECKING:
    from .api import Client

#: The note BAT writes at the top of every pack; a node has no use for it.
BAT_INFO_FILE = "pack-info.txt"

_pack_lock = threading.Lock()

#: files sent at once by :func:`upload_missing`, each on its own connection
UPLOAD_CONNECTIONS = 3


class PackError(Exception):
    """The project cannot be packed; ``path`` is the file at fault."""

    def __init__(self, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path)


@contextlib.contextmanager
def _as_pack_error() -> Iterator[None]:
    """blendinfo's refusals as this module's one error (bf and the add-on catch it)."""
    try:
        yield
    except blendinfo.BlendReadError as exc:
        raise PackError(exc.message, exc.path) from exc


@dataclass
class PackResult:
    """A packed project: ``root`` holds the files, ``manifest`` names them by hash."""

    root: pathlib.Path
    blend: str  # relative path of the main .blend inside root
    manifest: dict[str, str]  # relpath -> sha256
    missing: list[str]  # absolute paths of dependencies that do not exist
    sizes: dict[str, int]  # relpath -> bytes
    project_root: pathlib.Path = field(default_factory=pathlib.Path)  # where it came from
    # Files left where they are (``copy=False``): relpath -> the original to read.
    sources: dict[str, pathlib.Path] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def path_of(self, rel: str) -> pathlib.Path:
        """The file holding the bytes of manifest entry ``rel``."""
        return self.sources.get(rel) or self.root / rel


@dataclass
class UploadStats:
    files_sent: int = 0
    bytes_sent: int = 0
    files_skipped: int = 0  # already on the server, or the same bytes as another file
    bytes_skipped: int = 0


# --- packing -----------------------------------------------------------------------------


def pack_project(
    blend_path: str | os.PathLike[str],
    *,
    project_root: str | os.PathLike[str] | None = None,
    workdir: str | os.PathLike[str],
    copy: bool = True,
    progress_cb: bat_progress.Callback | None = None,
) -> PackResult:
    """Copy ``blend_path`` and its dependencies into ``workdir`` and hash them.

    ``workdir`` must be missing or empty (stale files would enter the manifest).
    ``project_root`` defaults to :func:`guess_project_root`. With ``copy=False`` only
    .blend files are copied (BAT may rewrite them, and an artist may save one during
    the upload); other files are hashed where they lie and listed in ``sources``, so
    a submit does not duplicate gigabytes of textures. Raises PackError.
    """
    blend = _check_blend(blend_path)
    target = bpathlib.make_absolute(pathlib.Path(workdir))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PackError("the pack folder must be empty", target)
    with _pack_lock:
        try:
            root = (
                bpathlib.make_absolute(pathlib.Path(project_root))
                if project_root is not None
                else guess_project_root(blend)
            )
            if not _is_inside(blend, root):
                raise PackError(f"the .blend is not inside the project folder {root}", blend)
            target.mkdir(parents=True, exist_ok=True)
            missing, out, sources = _run_packer(blend, root, target, copy, progress_cb)
        finally:
            # BAT caches open files process-wide: a long-lived add-on would otherwise
            # keep handles open (Windows then refuses to save) and read stale data.
            blendfile.close_all_cached()
    info = target / BAT_INFO_FILE
    if info.exists():
        info.unlink()
    manifest, sizes = hash_tree(target, sources)
    return PackResult(
        root=target,
        blend=_relpath(out, target),
        manifest=manifest,
        missing=missing,
        sizes=sizes,
        project_root=root,
        sources=sources,
    )


def _check_blend(blend_path: str | os.PathLike[str]) -> pathlib.Path:
    with _as_pack_error():
        return blendinfo.check_blend(blend_path)


def _is_inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


_DAMAGED = blendinfo.DAMAGED


@contextlib.contextmanager
def _reading(blend: pathlib.Path) -> Iterator[None]:
    """Turn any failure to parse a .blend (or a library it links) into PackError."""
    with _as_pack_error(), blendinfo.reading(blend):
        yield


class _PromptTransfer(transfer.FileTransferer):
    """BAT's transferer, minus a second of idle waiting per pack.

    BAT waits on its queue, and ``join`` flushes progress, in 0.5 s steps, so every
    pack ended up to a second after its last file was copied: most of a small job's
    submit time. Short waits end it at once; the copying itself is BAT's.

    The loop stops on BAT's public ``has_error`` and ``abort()`` only. BAT's private
    error event is name-mangled and any release may rename it; a loop reading it would
    then miss every copy error, and since BAT's copier puts a failed file back on the
    queue, it would take that file again forever: the pack would never end.
    """

    POLL = 0.005

    def __init__(self) -> None:
        super().__init__()
        self._abort_requested = threading.Event()  # every abort (Packer's too) calls abort()

    def abort(self) -> None:
        self._abort_requested.set()
        super().abort()

    def iter_queue(self) -> Iterator[transfer.QueueItem]:
        while not (self._abort_requested.is_set() or self.has_error):
            try:
                src, dst, action = self.queue.get(timeout=self.POLL)
            except queue.Empty:
                if self.done.is_set():
                    return
                continue
            self.progress_cb.transfer_file(src, dst)
            yield src, dst, action

    def join(self, timeout: float | None = None) -> None:
        while self.is_alive():
            self.progress_cb.flush(timeout=self.POLL)
        self.progress_cb.flush()


class _PromptCopier(_PromptTransfer, filesystem.FileCopier):
    pass


class _ReferencingCopier(_PromptTransfer, filesystem.FileCopier):
    """BAT's copier, except that it notes, not copies, files other than .blend files.

    ``_copy`` is the hook BAT's own CompressedFileCopier overrides. Should a BAT
    release stop calling it, files are simply copied again: slower, still right.
    """

    def __init__(self) -> None:
        super().__init__()
        self.referenced: dict[pathlib.Path, pathlib.Path] = {}  # pack path -> original
        self._lock = threading.Lock()

    def _copy(self, srcpath: pathlib.Path, dstpath: pathlib.Path) -> None:
        if srcpath.suffix.lower() == ".blend":
            super()._copy(srcpath, dstpath)
            return
        with self._lock:
            self.referenced[pathlib.Path(dstpath)] = pathlib.Path(srcpath)


class _Packer(Packer):
    def __init__(self, *args: Any, copy: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.copy = copy
        self.referencing: _ReferencingCopier | None = None
        # BAT drops its own reference when the copying ends; this one tells a failed
        # copy from a user's abort afterwards.
        self.transferer: _PromptTransfer | None = None
        self.rewritten: list[tuple[pathlib.Path, magic_compression.Compression]] = []

    def _create_file_transferer(self) -> transfer.FileTransferer:
        if self.copy:
            self.transferer = _PromptCopier()
        else:
            self.transferer = self.referencing = _ReferencingCopier()
        return self.transferer

    # BAT gzips every compressed .blend it rewrites, stamping the gzip header with the
    # time and its temporary file's random name: the same project packed twice gave two
    # blobs, and each submit uploaded the .blend again. These two hooks note which
    # files BAT rewrote and compress those again, the artist's way, deterministically.
    def _rewrite_paths(self) -> None:
        self.rewritten.clear()
        super()._rewrite_paths()
        for path, compression in self.rewritten:
            recompress(path, compression)

    def _apply_rewrites_to_blendfile(self, bfile: blendfile.BlendFile,
                                     action: AssetAction) -> None:
        # Here ``bfile.filepath`` still holds the original's bytes (BAT copied them and
        # reads a decompressed twin); BAT compresses it when it closes the file.
        with pathlib.Path(bfile.filepath).open("rb") as f:
            compression = magic_compression.find_compression_type(f)
        super()._apply_rewrites_to_blendfile(bfile, action)
        if bfile.is_modified and bfile.is_compressed:
            self.rewritten.append((pathlib.Path(bfile.filepath), compression))


#: zstd's default level
ZSTD_LEVEL = 3


def recompress(path: pathlib.Path, compression: magic_compression.Compression) -> None:
    """Compress the .blend at ``path`` again with ``compression``, the same bytes for the
    same content every time: zstd (Blender 3.0+) single-threaded at a fixed level,
    gzip (older Blender, which reads no zstd) with no time and no file name."""
    if compression not in (magic_compression.Compression.GZIP,
                           magic_compression.Compression.ZSTD):
        return
    fresh = path.with_name(path.name + ".bf-tmp")
    info = magic_compression.open(path, "rb", 1 << 20)
    try:
        with info.fileobj as plain, fresh.open("wb") as out:
            plain.seek(0)
            if compression is magic_compression.Compression.GZIP:
                with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
                    shutil.copyfileobj(plain, gz, 1 << 20)
            else:
                import zstandard  # BAT needed it to read this file in the first place

                zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0).copy_stream(plain, out)
        os.replace(fresh, path)
    finally:
        fresh.unlink(missing_ok=True)


def _run_packer(
    blend: pathlib.Path,
    root: pathlib.Path,
    target: pathlib.Path,
    copy: bool,
    progress_cb: bat_progress.Callback | None,
) -> tuple[list[str], pathlib.Path, dict[str, pathlib.Path]]:
    packer = _Packer(blend, root, str(target), copy=copy)
    with packer:
        if progress_cb is not None:
            packer.progress_cb = progress_cb
        with _reading(blend):
            packer.strategise()
        try:
            packer.execute()
        except _DAMAGED as exc:  # rewriting paths re-reads the files
            raise PackError(f"not a readable .blend file ({exc})", blend) from exc
        except Aborted as exc:
            failed = packer.transferer
            if failed is not None and failed.has_error:
                # BAT says which file: "Error transferring SRC to DST"
                raise PackError(f"cannot copy the project: {failed.error_message()}",
                                blend) from exc
            raise PackError(f"packing stopped: {exc or 'aborted'}", blend) from exc
        except OSError as exc:
            raise PackError(f"cannot copy the project: {exc}", exc.filename or blend) from exc
        missing = sorted(str(p) for p in packer.missing_files)
        referenced = packer.referencing.referenced if packer.referencing else {}
        sources = {_relpath(dst, target): src for dst, src in referenced.items()}
        return missing, pathlib.Path(packer.output_path), sources


def _relpath(path: pathlib.Path, root: pathlib.Path) -> str:
    try:
        return normalize_relpath(path.relative_to(root).as_posix())
    except PathError as exc:
        raise PackError(f"the farm cannot carry this file name: {exc}", path) from exc


def guess_project_root(blend: pathlib.Path) -> pathlib.Path:
    """The .blend's folder, widened to hold every file it names with a relative path.

    Widening keeps relative paths such as ``//../textures/a.png`` as they are, so BAT
    need not rewrite the .blend: the packed file is byte-identical to the artist's,
    and its blob is already on the server from the last submit. If the common parent
    would be the filesystem root (or another drive), keep the .blend's folder and let
    BAT move those files under ``_outside_project/`` with rewritten paths instead.
    """
    folder = blend.parent
    folders = [folder]
    with _reading(blend):
        for usage in trace.deps(blend):
            if usage.asset_path.is_blendfile_relative():
                folders.append(bpathlib.make_absolute(usage.abspath).parent)
    try:
        common = pathlib.Path(os.path.commonpath([str(f) for f in folders]))
    except ValueError:  # different drives
        return folder
    if common == pathlib.Path(common.anchor):
        return folder
    return common


def hash_tree(
    root: pathlib.Path, sources: Mapping[str, pathlib.Path] | None = None
) -> tuple[dict[str, str], dict[str, int]]:
    """SHA-256 and size of every file under ``root`` plus those in ``sources``
    (normalised relpath -> a file elsewhere), keyed by normalised relpath."""
    files: dict[str, pathlib.Path] = dict(sources or {})
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = pathlib.Path(dirpath, name)
            files[_relpath(path, root)] = path
    # hashlib releases the GIL on big buffers, so threads do overlap here.
    workers = min(8, (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bf-hash") as pool:
        digests = dict(zip(files, pool.map(sha256_file, files.values()), strict=True))
    sizes = {rel: path.stat().st_size for rel, path in files.items()}
    return dict(sorted(digests.items())), dict(sorted(sizes.items()))


# --- reading the scene without bpy: blendinfo's, its errors as PackError ---------------------


def scene_frame_range(
    blend_path: str | os.PathLike[str], scene: str | None = None
) -> tuple[int, int]:
    """The frame range (start, end) of ``scene``, or of the file's active scene.

    Read with BAT's .blend reader, so no Blender is needed. Raises PackError for a
    missing or unreadable file or an unknown scene name.
    """
    with _as_pack_error():
        return blendinfo.scene_frame_range(blend_path, scene)


def scene_output(
    blend_path: str | os.PathLike[str], scene: str | None = None
) -> tuple[str, str | None]:
    """The output path (``//render/shot_###``) and file format (``"PNG"``, ``"FFMPEG"``;
    None for one this reader does not know) of ``scene`` or the file's active scene,
    read like :func:`scene_frame_range`."""
    with _as_pack_error():
        return blendinfo.scene_output(blend_path, scene)


# --- the job spec and the upload -------------------------------------------------------------


def build_spec(
    pack_result: PackResult,
    *,
    name: str | None = None,
    frames: str,
    chunk: int = 1,
    priority: int = 50,
    overrides: Overrides | Mapping[str, Any] | None = None,
    scene: str | None = None,
    paused: bool = False,
    scripts: bool = False,
    user: str | None = None,
    tags: list[str] | None = None,
    output_pattern: str | None = None,
    scene_format: str | None = None,
    blender_saved: str | None = None,
    blender: str | None = None,
    tiles: int | str | None = None,
    video: bool = False,
    resolution: list[int] | None = None,
) -> dict[str, Any]:
    """The job spec for a packed project, validated; raises protocol's SpecError.

    ``user`` (default: this machine's login name) is who the farm shares its nodes
    fairly with; a farm with tokens uses the token's name instead. ``blender_saved``
    (default: read from the packed main .blend's header, the file the nodes get) keeps
    the job off nodes with an older Blender; ``blender`` pins a range instead
    (``">=4.5"``, ``"4.5"``)."""
    if isinstance(overrides, Overrides):
        override_dict = overrides.to_dict()
    else:
        override_dict = {k: v for k, v in (overrides or {}).items() if v is not None}
    data: dict[str, Any] = {
        "blend": pack_result.blend,
        "manifest": dict(pack_result.manifest),
        "frames": frames,
        "chunk": chunk,
        "priority": priority,
        "overrides": override_dict,
        "paused": paused,
        "scripts": scripts,
    }
    if name is not None:
        data["name"] = name
    if scene is not None:
        data["scene"] = scene
    user = user or login_name()
    if user:
        data["user"] = user
    if tags:  # every one is required of the node that renders it
        data["tags"] = list(tags)
    if output_pattern is not None:  # the scene's naming (jobspec.safe_pattern of its path)
        data["output_pattern"] = output_pattern
    if scene_format is not None:
        data["scene_format"] = scene_format
    data["blender_saved"] = blender_saved or saved_blender(pack_result.path_of(pack_result.blend))
    if blender:
        data["blender"] = blender
    if tiles is not None:  # per frame, merged by the farm
        data["tiles"] = tiles
    if video:
        data["video"] = True
    if resolution is not None:  # for tiles "auto"
        data["resolution"] = list(resolution)
    return validate_spec(data).to_dict()


def saved_blender(blend: pathlib.Path) -> str:
    """``"MAJOR.MINOR"`` of the Blender that saved ``blend`` (its header); PackError."""
    try:
        with open(blend, "rb") as f:
            return format_version(saved_version(f))
    except BlendVersionError as exc:
        raise PackError(f"cannot tell which Blender saved it: {exc}", blend) from exc


def login_name() -> str | None:
    """Who is submitting, as far as this machine knows; None when it cannot tell."""
    try:
        name = getpass.getuser()
    except Exception:  # no such user entry, e.g. a container with an unnamed uid
        return None
    return name[:64] if name and name.strip() else None


def upload_missing(
    client: Client,
    pack_result: PackResult,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    connections: int = UPLOAD_CONNECTIONS,
) -> UploadStats:
    """PUT the blobs the server lacks, each distinct hash once.

    ``on_progress(bytes_sent, bytes_to_send)`` is called as bytes go out, under a lock
    (so the count it hears only moves forward, except for a resend's take-back), from
    the threads that send: up to ``connections`` files go at once, each thread on its
    own connection, so one file's transfer overlaps the server's hashing and fsync of
    another. The first error (or an exception ``on_progress`` raises, to cancel) stops
    the other threads at their next chunk and is raised here.
    """
    first_path: dict[str, str] = {}
    for rel, digest in pack_result.manifest.items():
        first_path.setdefault(digest, rel)
    missing = set(client.missing_blobs(list(first_path)))
    to_send = [(d, rel) for d, rel in first_path.items() if d in missing]
    stats = UploadStats()
    stats.files_skipped = len(pack_result.manifest) - len(to_send)
    stats.bytes_skipped = pack_result.total_bytes - sum(pack_result.sizes[r] for _, r in to_send)
    total = sum(pack_result.sizes[rel] for _, rel in to_send)
    lock = threading.Lock()
    stop = threading.Event()

    def sent(n: int) -> None:
        if stop.is_set():
            raise _Stopped()
        with lock:
            stats.bytes_sent += n
            if on_progress is not None:
                on_progress(stats.bytes_sent, total)

    def put(digest: str, rel: str) -> None:
        client.put_blob(digest, pack_result.path_of(rel), on_bytes=sent)
        with lock:
            stats.files_sent += 1

    if len(to_send) <= 1 or connections <= 1:
        for digest, rel in to_send:
            put(digest, rel)
        return stats
    # Biggest first: the last file to start is then a small one, and no thread idles long.
    todo = collections.deque(sorted(to_send, key=lambda t: -pack_result.sizes[t[1]]))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not stop.is_set():
                try:
                    digest, rel = todo.popleft()
                except IndexError:
                    return
                put(digest, rel)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the calling thread
            errors.append(exc)
            stop.set()
        finally:
            # This thread's connection, maybe half-way through a request (stand-ins
            # for the Client in tests have no connection to close).
            close = getattr(client, "close", None)
            if close is not None:
                close()

    threads = [threading.Thread(target=work, name=f"bf-upload-{i}", daemon=True)
               for i in range(min(connections, len(to_send)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C in the calling thread: stop the senders too
        stop.set()
        raise
    if errors:
        raise errors[0]
    return stats


class _Stopped(Exception):
    """Another upload thread failed: this one stops at its next chunk."""
