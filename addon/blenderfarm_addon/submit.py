"""Submitting the open file to the farm, without bpy: plan the copy, pack, upload, queue.

:func:`plan_copy` decides where the copy the operator saves first goes: always a
copy of the state in memory, never the saved file as it is, because Python edits
(``scene.cycles.samples = 7`` from a script or a startup script) do not set
``bpy.data.is_dirty``. The copy goes next to the original under a hidden name, so
every ``//`` relative path in it means the same file; the user's own file is never
written. :class:`SubmitTask` then, in its
thread: checks the server, packs with the vendored client (BAT traces every
dependency; files outside the project folder are packed too), deletes the copy, asks
about missing files, uploads what the server lacks with byte progress, and creates
the job.

It must never import bpy; the operator does the one bpy step (saving the copy) before
the thread starts. Packing code lives in the client, not here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .vendor import load_bat
from .vendor.blenderfarm.client.api import Client
from .vendor.blenderfarm.client.progress import format_bytes
from .vendor.blenderfarm.protocol.jobspec import (
    MOVIE_FORMATS,
    STILL_FORMATS,
    safe_pattern,
    validate_spec,
)
from .worker import (
    Aborted,
    Done,
    MissingFiles,
    Problem,
    Progress,
    Server,
    Task,
    check_server,
)

log = logging.getLogger(__name__)

MISSING_ASK, MISSING_CONTINUE, MISSING_CANCEL = "ask", "continue", "cancel"
COPY_PREFIX = ".blenderfarm-"


def load_pack() -> ModuleType:
    """The vendored ``client.pack`` module; BAT is imported on first use.

    Called on Blender's main thread before a submit, so that a missing BAT is a
    sentence at once rather than a failure to enable the add-on.
    """
    load_bat()
    from .vendor.blenderfarm.client import pack

    return pack


# --- what to pack --------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyPlan:
    save_to: str | None  # save a copy of the open file here first; None: pack it as it is
    blend: str  # the .blend to pack
    main_name: str  # the name the .blend gets in the pack: the user's file name
    temp_dir: str | None = None  # a folder made for the copy, removed with it


def plan_copy(filepath: str, *, folder_writable: bool | None = None,
              tag: str | None = None) -> CopyPlan:
    """Where the submit's .blend is saved, for an open file at ``filepath`` ("" if unsaved).

    Always a copy of what is in memory (Blender cannot tell whether a script changed
    it). The copy is saved beside the file, so relative paths stay valid; if that
    folder is read-only, or the file was never saved, into a temporary folder
    (Blender then rewrites relative paths for the new place, and BAT packs files from
    outside the project under ``_outside_project/``). Uploads go by content, so the
    textures and libraries of an unchanged project are not sent again.
    """
    tag = tag or secrets.token_hex(4)
    if filepath:
        folder, name = os.path.split(filepath)
        if folder_writable is None:
            folder_writable = os.access(folder, os.W_OK)
        if folder_writable:
            stem = os.path.splitext(name)[0]
            copy = os.path.join(folder, f"{COPY_PREFIX}{stem}-{tag}.blend")
            return CopyPlan(copy, copy, name)
    else:
        name = "untitled.blend"
    temp_dir = tempfile.mkdtemp(prefix="blenderfarm-")
    copy = os.path.join(temp_dir, name)
    return CopyPlan(copy, copy, name, temp_dir)


def as_saved(filepath: str) -> CopyPlan:
    """Pack the file on disk as it is (``bf submit`` does; tests without Blender too)."""
    return CopyPlan(None, filepath, os.path.basename(filepath))


def discard_copy(plan: CopyPlan) -> None:
    """Delete what :func:`plan_copy` had saved; never the user's own file."""
    if plan.save_to is None:
        return
    if plan.temp_dir is not None:
        shutil.rmtree(plan.temp_dir, ignore_errors=True)
        return
    for path in (plan.save_to, plan.save_to + "1"):  # and a .blend1 backup, if any
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete the temporary copy %s: %s", path, exc)


# --- what to submit ------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitRequest:
    plan: CopyPlan
    name: str
    frames: str
    chunk: int = 1
    priority: int = 50
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    scene: str | None = None
    on_missing: str = MISSING_ASK
    tags: tuple[str, ...] = ()  # node tags the job requires (spec["tags"])
    #: the scene's output naming and format (scene_naming), read from bpy
    output_pattern: str | None = None
    scene_format: str | None = None
    blender: str | None = None  # a pin of the nodes' Blender, ">=4.5" or "4.5"
    #: the Blender that saves the copy, "4.5" (bpy.app.version): no older node gets it
    blender_saved: str | None = None
    tiles: int | str | None = None  # per frame (spec["tiles"]): a count or "auto"
    video: bool = False  # also a video of the frames (spec["video"])
    #: the scene's render size in pixels (for tiles "auto"), read from bpy
    resolution: tuple[int, int] | None = None


def parse_tags(text: str) -> tuple[str, ...]:
    """The panel's Tags field, ``gpu, big-ram`` (commas or spaces), as the spec's list."""
    return tuple(dict.fromkeys(t for t in text.replace(",", " ").split() if t))


def panel_overrides(settings: Any) -> dict[str, Any]:
    """The job spec's ``overrides`` from the panel's settings (``Scene.blenderfarm``, or
    anything with its attributes): only what the user set, the rest is the scene's."""
    out: dict[str, Any] = {}
    if settings.use_samples:
        out["samples"] = settings.samples
    if settings.use_resolution:
        out["resolution_percent"] = settings.resolution_percent
    if settings.file_format != "SCENE":
        out["format"] = settings.file_format
    if settings.denoise != "SCENE":
        out["denoise"] = settings.denoise == "ON"
    if settings.device != "SCENE":
        out["device"] = settings.device
    if settings.persistent_data != "SCENE":
        out["persistent_data"] = settings.persistent_data == "ON"
    if settings.camera is not None:
        out["camera"] = settings.camera.name
    return out


def scene_naming(output_path: str, file_format: str) -> dict[str, str]:
    """The spec's ``output_pattern`` and ``scene_format`` for a scene with this output
    path and format: frames come back named as Blender names them."""
    fields = {"output_pattern": safe_pattern(output_path)}
    if file_format in STILL_FORMATS + MOVIE_FORMATS:
        fields["scene_format"] = file_format
    return fields


def check_settings(*, name: str, frames: str, chunk: int, priority: int,
                   overrides: dict[str, Any], scene: str | None, on_missing: str,
                   tags: tuple[str, ...] = (), blender: str | None = None,
                   tiles: int | str | None = None, video: bool = False) -> None:
    """Check a submit's settings against the job schema before anything slow: SpecError."""
    if on_missing not in (MISSING_ASK, MISSING_CONTINUE, MISSING_CANCEL):
        raise ValueError(f"on_missing must be ask, continue or cancel, not {on_missing!r}")
    placeholder = "placeholder.blend"
    spec: dict[str, Any] = {
        "blend": placeholder, "manifest": {placeholder: "0" * 64}, "frames": frames,
        "chunk": chunk, "priority": priority, "name": name, "scene": scene,
        "overrides": overrides,
    }
    if tags:  # only then: a spec without tags stays valid for a server without them
        spec["tags"] = list(tags)
    if blender:
        spec["blender"] = blender
    if tiles is not None:
        spec["tiles"] = tiles
    if video:
        spec["video"] = True
    validate_spec(spec)


def panel_tiles(settings: Any) -> int | str | None:
    """The spec's ``tiles`` from the panel's Tiles setting (None: whole frames)."""
    mode = getattr(settings, "tiles_mode", "OFF")
    if mode == "AUTO":
        return "auto"
    return int(settings.tiles) if mode == "COUNT" else None


def frame_range(start: int, end: int, step: int = 1) -> str:
    """The job spec's frame syntax for a scene-style range: ``1-250``, ``1-250x2``, ``7``."""
    if end < start:
        raise Problem(f"The frame range {start}-{end} is empty: the end comes before the start.")
    if start == end:
        return str(start)
    return f"{start}-{end}" + (f"x{step}" if step > 1 else "")


class SubmitTask(Task):
    kind = "submit"

    def __init__(self, server: Server, request: SubmitRequest, pack: ModuleType) -> None:
        super().__init__(server)
        self.request = request
        self.pack = pack
        self.client: _CountingClient | None = None
        self._decided = threading.Event()
        self._go_on = False
        self._copy_gone = False

    def decide_missing(self, go_on: bool) -> None:
        """The user's answer to a MissingFiles question (any thread)."""
        self._go_on = go_on
        self._decided.set()

    def work(self) -> Done:
        client = self.client = self.server.client(_CountingClient)
        client.task = self
        self.progress(Progress("Connecting"), force=True)
        check_server(client.info())
        self.check()
        with tempfile.TemporaryDirectory(prefix="blenderfarm-pack-") as tmp:
            packed = self._pack(Path(tmp, "pack"))
            self._confirm_missing(packed.missing)
            spec = self.pack.build_spec(
                packed, name=self.request.name, frames=self.request.frames,
                chunk=self.request.chunk, priority=self.request.priority,
                overrides=self.request.overrides, scene=self.request.scene,
                output_pattern=self.request.output_pattern,
                scene_format=self.request.scene_format,
                blender_saved=self.request.blender_saved, blender=self.request.blender,
                tiles=self.request.tiles, video=self.request.video,
                resolution=list(self.request.resolution) if self.request.resolution else None)
            if self.request.tags:
                spec["tags"] = list(self.request.tags)
            stats = self.pack.upload_missing(client, packed, on_progress=client.on_bytes)
            self.check()  # the last moment a cancel can still stop the job
            self.progress(Progress("Queuing", client.files_done, client.files_total,
                                   stats.bytes_sent, stats.bytes_sent), force=True)
            job = client.create_job(spec)
            if self.canceled:  # canceled while the job was being created: take it back
                self._take_back(client, job)
        sent = format_bytes(stats.bytes_sent)
        return Done(job, f"Submitted job {job.get('name')!r} ({job.get('id')}): "
                         f"{job.get('frames_total', '?')} frame(s); uploaded "
                         f"{stats.files_sent} file(s), {sent}.")

    @staticmethod
    def _take_back(client: Client, job: dict[str, Any]) -> None:
        try:
            client.delete_job(str(job.get("id")))
        except Exception as exc:  # the job stays; say so rather than "Canceled."
            raise Problem(f"Canceled too late: job {job.get('id')} was already queued, and "
                          f"deleting it failed ({exc}); cancel it in the Jobs list.") from exc
        raise Aborted()

    def cleanup(self) -> None:
        self._discard_copy()
        if self.client is not None:
            self.client.close()  # also ends an upload cut short by a cancel

    def _discard_copy(self) -> None:
        if not self._copy_gone:
            self._copy_gone = True
            discard_copy(self.request.plan)

    def _pack(self, workdir: Path) -> Any:
        self.progress(Progress("Packing"), force=True)
        try:
            packed = self.pack.pack_project(self.request.plan.blend, workdir=workdir,
                                            copy=False, progress_cb=_bat_progress(self))
        except self.pack.PackError as exc:
            raise Problem(_pack_sentence(exc)) from exc
        # pack_project copied the .blend files into workdir: the copy is no longer needed.
        self._discard_copy()
        self.check()
        return _rename_main(packed, self.request.plan.main_name)

    def _confirm_missing(self, missing: list[str]) -> None:
        if not missing:
            return
        policy = self.request.on_missing
        if policy == MISSING_CANCEL:
            raise Problem(f"{len(missing)} file(s) the project uses are missing, first "
                          f"{missing[0]}: the job was not submitted.")
        if policy != MISSING_ASK:
            log.warning("Blenderfarm: missing files, the render will lack them: %s",
                        ", ".join(missing))
            self.post(MissingFiles(tuple(missing), ask=False))
            return
        self.post(MissingFiles(tuple(missing), ask=True))
        while not self._decided.wait(0.05):
            self.check()
        self.check()
        if not self._go_on:
            raise Aborted(f"Not submitted: {len(missing)} file(s) the project uses are "
                          "missing.")


def _pack_sentence(exc: Any) -> str:
    message = str(exc.message)
    if "ZStandard" in message or "zstandard" in message:
        return (f"{exc.path} is saved compressed and this Blender's Python lacks the "
                "zstandard module: save it without compression (File > Save As, "
                "uncheck Compress), or install python3-zstandard.")
    return f"Cannot pack {exc.path}: {message}."


def _rename_main(packed: Any, main_name: str) -> Any:
    """Give the packed main .blend the user's file name instead of the copy's."""
    old = packed.blend
    new = posixpath.join(posixpath.dirname(old), main_name)
    if new == old or new in packed.manifest or old in packed.sources:
        return packed
    os.replace(packed.root / old, packed.root / new)

    def renamed(table: dict[str, Any]) -> dict[str, Any]:
        return dict(sorted((new if k == old else k, v) for k, v in table.items()))

    return dataclasses.replace(packed, blend=new, manifest=renamed(packed.manifest),
                               sizes=renamed(packed.sizes))


def _bat_progress(task: SubmitTask) -> Any:
    """A BAT progress callback that counts traced files and stops a canceled pack."""
    from blender_asset_tracer.pack import progress as bat_progress

    class Callback(bat_progress.Callback):  # type: ignore[misc]
        files = 0

        def trace_blendfile(self, filename: Path) -> None:
            self._step()

        def trace_asset(self, filename: Path) -> None:
            self._step()

        def pack_done(self, output_blendfile: Path, missing_files: Any) -> None:
            task.progress(Progress("Hashing", self.files), force=True)

        def _step(self) -> None:
            self.files += 1
            task.progress(Progress("Packing", self.files))
            task.check()  # raises Aborted; BAT's strategise lets it through

    return Callback()


class _CountingClient(Client):
    """The API client, also counting the files an upload sends (for the progress bar).

    ``upload_missing`` sends several files at once, each from its own thread, so the
    counts change and are reported under one lock: no count is lost, and no thread
    posts a figure older than one another thread already posted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task: SubmitTask | None = None
        self._count_lock = threading.Lock()
        self.files_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self.bytes_total = 0

    def missing_blobs(self, hashes: list[str]) -> list[str]:
        missing = super().missing_blobs(hashes)
        self.files_total = len(missing)
        return missing

    def put_blob(self, sha: str, path: Any, on_bytes: Any = None) -> dict[str, Any]:
        reply = super().put_blob(sha, path, on_bytes)
        with self._count_lock:
            self.files_done += 1
            self._report(force=True)
        return reply

    def on_bytes(self, sent: int, total: int) -> None:
        with self._count_lock:
            self.bytes_done, self.bytes_total = sent, total
            self._report()
        if self.task is not None:
            self.task.check()  # between 1 MiB chunks: a cancel stops the upload mid-file

    def _report(self, force: bool = False) -> None:
        if self.task is not None:
            self.task.progress(Progress("Uploading", self.files_done, self.files_total,
                                        self.bytes_done, self.bytes_total), force=force)
