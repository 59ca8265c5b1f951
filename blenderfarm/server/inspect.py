"""``POST /api/inspect``: what an uploaded .blend offers, for the dashboard's "New job" form.

The browser uploads a project's files as blobs, then asks what the main .blend holds:
its scenes with their settings, the fields ``bf submit`` would derive from it for a
job's spec, and every file it (or a library it links) references that the manifest
lacks. Body: ``{"blend": manifest path, "manifest": {path: sha256}}``; whoever may
submit a job may ask (the auth middleware admits user tokens here as for
``/api/jobs``).

The server never parses a .blend itself: a worker process (``inspect_worker``) does,
on hard links to the blobs in a scratch folder of its own under ``<data>/inspect/``,
within a timeout, a memory cap and a cap on what it writes, so a crafted file can
neither hang nor crash the server, nor make it look at any path the file names. A
file refused (no .blend, damaged, too slow, no scene) is one 400 with one sentence
and its ``reason`` as the code; its blob is deleted unless a job holds it, so nothing
a failed "New job" left stays on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..protocol.jobspec import SpecError, validate_manifest
from ..protocol.paths import PathError, normalize_relpath
from .api import read_json, take_slot
from .errors import FarmError
from .keys import FARM

if TYPE_CHECKING:
    from .farm import Farm

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
#: inspections that may run at once (a process of up to inspect_memory each)
INSPECT_SLOTS = web.AppKey("inspect_slots", asyncio.Semaphore)
#: bytes of the worker's answer read at most (its lists are bounded far below this)
MAX_ANSWER = 32 * 1024 * 1024
#: CPU seconds the worker gets beyond the wall-clock timeout: a backstop, should the
#: server die before it can kill the worker
CPU_SPARE = 5


def setup_inspect(app: web.Application, max_inspects: int) -> None:
    app.add_routes(routes)
    app[INSPECT_SLOTS] = asyncio.Semaphore(max_inspects)
    app.cleanup_ctx.append(_scratch_ctx)


async def _scratch_ctx(app: web.Application) -> AsyncIterator[None]:
    """Scratch folders a killed server left behind go at start-up."""
    await asyncio.to_thread(shutil.rmtree, _scratch_root(app[FARM]), ignore_errors=True)
    yield


def _scratch_root(farm: Farm) -> Path:
    return farm.config.data_dir / "inspect"


class Refused(Exception):
    """The worker cannot use a file of the request: ``path`` is its manifest path."""

    def __init__(self, reason: str, message: str, path: str) -> None:
        super().__init__(message)
        self.reason, self.message, self.path = reason, message, path


@routes.post("/api/inspect")
async def inspect(request: web.Request) -> web.Response:
    blend, manifest = parse_request(await read_json(request))
    farm = request.app[FARM]
    missing = await asyncio.to_thread(farm.blobs.missing, list(manifest.values()))
    if missing:
        raise FarmError(f"{len(missing)} file(s) of the manifest were never uploaded; "
                        "upload them first", "missing_blobs", field="manifest",
                        data={"missing": missing[:1000]})
    config = farm.config
    slots = request.app[INSPECT_SLOTS]
    # each is a process of up to inspect_memory; when all run, wait a while
    busy = await take_slot(slots, config.body_timeout, f"{config.max_inspects} .blend files "
                           "are being read; try again shortly")
    if busy is not None:
        return busy
    try:
        info = await run_worker(farm, blend, manifest)
    except Refused as exc:
        await _forget(farm, manifest.get(exc.path))
        raise FarmError(exc.message, exc.reason, field="blend",
                        data={"path": exc.path}) from exc
    finally:
        slots.release()
    return web.json_response({"blend": blend, **info})


def parse_request(body: Any) -> tuple[str, dict[str, str]]:
    """The main .blend's path and the manifest, checked as a job spec's are; also that
    no path is both a file and a folder (the files are laid out at their paths)."""
    if not isinstance(body, dict):
        raise FarmError("expected {\"blend\": path, \"manifest\": {path: sha256}}")
    for key in body:
        if key not in ("blend", "manifest"):
            raise FarmError(f"unknown field {key!r}", field=key)
    manifest = validate_manifest(body.get("manifest"))
    raw = body.get("blend")
    try:
        blend = normalize_relpath(raw) if isinstance(raw, str) else None
    except PathError as exc:
        raise SpecError("blend", str(exc)) from exc
    if blend is None or blend not in manifest:
        raise SpecError("blend", "must name the main .blend file of the manifest")
    if not blend.lower().endswith(".blend"):
        raise SpecError("blend", "must be a .blend file")
    folders = {rel.rsplit("/", i)[0] for rel in manifest for i in range(1, rel.count("/") + 1)}
    clash = sorted(folders & manifest.keys())
    if clash:
        raise SpecError(f"manifest[{clash[0]!r}]", "is both a file and a folder")
    return blend, manifest


async def run_worker(farm: Farm, blend: str, manifest: dict[str, str]) -> dict[str, Any]:
    """What the worker read of ``blend``, or Refused; FarmError (500) when the worker
    itself failed. The scratch folder is gone when this returns."""
    config = farm.config
    base = _scratch_root(farm)
    scratch = Path(await asyncio.to_thread(_make_scratch, base))
    try:
        request = {"root": str(scratch / "root"), "blend": blend,
                   "files": {rel: str(farm.blobs.path(sha)) for rel, sha in manifest.items()}}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "blenderfarm.server.inspect_worker",
            "--memory", str(config.inspect_memory), "--unpacked", str(config.inspect_unpacked),
            "--cpu", str(int(config.inspect_timeout) + CPU_SPARE),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=scratch, start_new_session=True,
            env={**os.environ, "TMPDIR": str(scratch / "tmp")})
        try:
            async with asyncio.timeout(config.inspect_timeout):
                out, err = await _talk(proc, json.dumps(request).encode())
        except TimeoutError:
            raise Refused("inspect_timeout", f"reading {blend} took longer than "
                          f"{config.inspect_timeout:g} s (inspect_timeout); it may be damaged, "
                          "or too large to read here: submit it with bf or the add-on",
                          blend) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
    return _answer(blend, proc.returncode, out, err)


def _make_scratch(base: Path) -> str:
    base.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="blend-", dir=base)
    for sub in ("root", "tmp"):
        os.mkdir(os.path.join(scratch, sub))
    return scratch


async def _talk(proc: asyncio.subprocess.Process, request: bytes) -> tuple[bytes, bytes]:
    """Send the request, read the answer (at most :data:`MAX_ANSWER` bytes kept) and the
    tail of stderr, and wait for the worker to end."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def send() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(request)
            await proc.stdin.drain()
            proc.stdin.close()

    async def read(stream: asyncio.StreamReader, keep: int, tail: bool) -> bytes:
        data = b""
        while chunk := await stream.read(1 << 16):
            data = (data + chunk)[-keep:] if tail else data + chunk[:keep + 1 - len(data)]
        return data

    _, out, err = await asyncio.gather(send(), read(proc.stdout, MAX_ANSWER, False),
                                       read(proc.stderr, 4000, True))
    await proc.wait()
    return out, err


def _answer(blend: str, code: int | None, out: bytes, err: bytes) -> dict[str, Any]:
    """The worker's answer as the reply's fields; Refused or FarmError otherwise."""
    try:
        answer = json.loads(out) if len(out) <= MAX_ANSWER else None
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("info"), dict):
        return dict(answer["info"])
    if isinstance(answer, dict) and isinstance(answer.get("refused"), dict):
        r = answer["refused"]
        raise Refused(str(r["reason"]), str(r["message"]), str(r["path"]))
    if code is not None and code < 0:  # a signal: the parser crashed on the bytes
        log.warning("reading %s: the worker died of signal %d: %s", blend, -code,
                    err.decode("utf-8", "replace"))
        raise Refused("corrupt_blend", f"{blend} is damaged or cut short; save it again in "
                      "Blender and upload it again", blend)
    detail = answer.get("failed") if isinstance(answer, dict) else err.decode("utf-8", "replace")
    log.error("reading %s failed (exit %s): %s", blend, code, detail)
    raise FarmError(f"the server could not read {blend}; its log says why", "inspect_failed", 500)


async def _forget(farm: Farm, sha: str | None) -> None:
    """Delete a refused file's blob unless a job holds it (its files or its outputs)."""
    if sha is None:
        return
    for job in farm.jobs.values():
        if sha in job.spec.manifest.values() or any(o.sha256 == sha for o in job.outputs.values()):
            return
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(farm.blobs.path(sha).unlink)
