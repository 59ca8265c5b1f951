"""The HTTP JSON API under ``/api/``: blobs, jobs, tasks, outputs, nodes.

Handlers validate input, call the farm and shape JSON; every refusal is one JSON
error ``{"error": {"code", "message", "field"}}`` with a 4xx status. Disk work
(blob writes, zips) runs in threads or streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..protocol import PROTOCOL_VERSION
from ..protocol.hashing import is_sha256
from ..protocol.jobspec import SpecError, validate_spec
from ..protocol.version import __version__
from . import control
from .auth import AUTH, token_name
from .blobs import BlobError
from .farm import FarmError
from .keys import FARM

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
MAX_JSON = 64 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, field: str | None = None,
                   data: Any = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "field": field}
    if data is not None:
        body["data"] = data
    return web.json_response({"error": body}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate every refusal into the one JSON error shape, once, here."""
    try:
        return await handler(request)
    except FarmError as exc:
        return error_response(exc.status, exc.code, str(exc), exc.field, exc.data)
    except SpecError as exc:
        return error_response(400, "invalid_spec", exc.message, exc.path)
    except BlobError as exc:
        return error_response(400 if exc.code != "too_large" else 413, exc.code, str(exc))
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except OSError as exc:
        log.exception("disk error serving %s", request.path)
        return error_response(507 if exc.errno == 28 else 500, "disk_error",
                              f"the server could not write to its disk: {exc.strerror}")


async def read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_JSON:
        raise FarmError("request body too large", "too_large", 413)
    try:
        return json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FarmError(f"body is not valid JSON: {exc}", "bad_json") from exc


async def read_options(request: web.Request) -> dict[str, Any]:
    """The optional JSON object of an action (pause, requeue...): {} when there is no body."""
    body = await read_json(request) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise FarmError("the body must be a JSON object", "bad_request")
    return body


@routes.get("/api/info")
async def info(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    return web.json_response({"server_version": __version__, "protocol": PROTOCOL_VERSION,
                              "auth_required": request.app[AUTH].required, **farm.info()})


# --- blobs -----------------------------------------------------------------------------------
@routes.post("/api/blobs/missing")
async def blobs_missing(request: web.Request) -> web.Response:
    data = await read_json(request)
    hashes = data.get("hashes") if isinstance(data, dict) else None
    if not isinstance(hashes, list) or len(hashes) > 100_000:
        raise FarmError("expected {\"hashes\": [sha256, ...]} (at most 100000)", field="hashes")
    for i, h in enumerate(hashes):
        if not is_sha256(h):
            raise FarmError("not a lowercase hex sha256", "bad_hash", field=f"hashes[{i}]")
    missing = await asyncio.to_thread(request.app[FARM].blobs.missing, hashes)
    return web.json_response({"missing": missing})


@routes.put("/api/blobs/{sha256}")
async def blob_put(request: web.Request) -> web.Response:
    sha = request.match_info["sha256"]
    blobs = request.app[FARM].blobs
    if not is_sha256(sha):
        raise FarmError("not a lowercase hex sha256", "bad_hash")
    if request.content_length is not None and request.content_length > blobs.max_size:
        raise BlobError(f"blob larger than {blobs.max_size} bytes", sha, "too_large")
    size = await asyncio.to_thread(blobs.size, sha)
    if size is not None:  # already stored: the body need not be read
        return web.json_response({"sha256": sha, "size": size})

    async def chunks() -> AsyncIterator[bytes]:
        # The chunks as they arrived, not joined into bigger ones: no copy (the store
        # batches them). A bigger read buffer means fewer pauses of the socket.
        request.content.set_read_chunk_size(1 << 20)
        async for chunk, _ in request.content.iter_chunks():
            yield chunk

    size = await blobs.write(sha, chunks())
    request.app[FARM].metrics.add_uploaded_bytes(size)
    return web.json_response({"sha256": sha, "size": size}, status=201)


@routes.get("/api/blobs/{sha256}")
async def blob_get(request: web.Request) -> web.StreamResponse:
    sha = request.match_info["sha256"]
    blobs = request.app[FARM].blobs
    if not is_sha256(sha):
        raise FarmError("not a lowercase hex sha256", "bad_hash")
    path = blobs.path(sha)
    if not await asyncio.to_thread(path.is_file):
        raise FarmError(f"no blob {sha}", "not_found", 404)
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


# --- jobs ------------------------------------------------------------------------------------
@routes.post("/api/jobs")
async def job_create(request: web.Request) -> web.Response:
    spec = validate_spec(await read_json(request))
    farm = request.app[FARM]
    job = await farm.submit(spec, owner=token_name(request) or "")
    return web.json_response({"job": farm.job_json(job)}, status=201)


@routes.get("/api/jobs")
async def job_list(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    jobs = sorted(farm.jobs.values(), key=lambda j: j.seq, reverse=True)
    return web.json_response({"jobs": [farm.job_json(j) for j in jobs]})


@routes.get("/api/jobs/{job_id}")
async def job_get(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    return web.json_response({"job": farm.job_json(farm.job(request.match_info["job_id"]))})


@routes.get("/api/jobs/{job_id}/tasks")
async def job_tasks(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    job = farm.job(request.match_info["job_id"])
    tasks = [farm.tasks[t].to_json() for t in job.task_ids]
    for t in tasks:
        t.pop("log_tail", None)
    return web.json_response({"tasks": tasks})


@routes.post("/api/jobs/{job_id}/cancel")
async def job_cancel(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    return web.json_response({"job": farm.job_json(farm.cancel(request.match_info["job_id"]))})


@routes.post("/api/jobs/{job_id}/pause")
async def job_pause(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    stop = bool((await read_options(request)).get("stop"))
    return web.json_response({"job": farm.job_json(control.pause(
        farm, request.match_info["job_id"], stop=stop))})


@routes.post("/api/jobs/{job_id}/resume")
async def job_resume(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    return web.json_response({"job": farm.job_json(control.resume(farm, request.match_info["job_id"]))})


@routes.post("/api/jobs/{job_id}/requeue")
async def job_requeue(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    which = (await read_options(request)).get("which", "failed")
    return web.json_response({"job": farm.job_json(control.requeue(
        farm, request.match_info["job_id"], str(which)))})


@routes.post("/api/jobs/{job_id}/priority")
async def job_priority(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    priority = (await read_options(request)).get("priority")
    return web.json_response({"job": farm.job_json(control.set_priority(
        farm, request.match_info["job_id"], priority))})


@routes.delete("/api/jobs/{job_id}")
async def job_delete(request: web.Request) -> web.Response:
    await control.delete(request.app[FARM], request.match_info["job_id"])
    return web.json_response({"deleted": request.match_info["job_id"]})


@routes.get("/api/tasks/{task_id}/log")
async def task_log(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    task = farm.tasks.get(request.match_info["task_id"])
    if task is None:
        raise FarmError(f"no task {request.match_info['task_id']!r}", "not_found", 404)
    text = await asyncio.to_thread(farm.logs.read, task)
    return web.json_response({"text": text, "task_id": task.id, "status": task.status})


@routes.get("/api/jobs/{job_id}/outputs")
async def job_outputs(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    job = farm.job(request.match_info["job_id"])
    outs = sorted(job.outputs.values(), key=lambda o: (o.frame, o.name))
    return web.json_response({"outputs": [o.to_json() for o in outs]})


@routes.get("/api/jobs/{job_id}/outputs.zip")
async def job_outputs_zip(request: web.Request) -> web.StreamResponse:
    farm = request.app[FARM]
    job = farm.job(request.match_info["job_id"])
    files = [(o.name, farm.output_path(job.id, o.name)) for o in job.outputs.values()]
    tmp = await asyncio.to_thread(_build_zip, files, farm.blobs.tmp)
    try:
        resp = web.StreamResponse(headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{job.output_name}.zip"'})
        resp.content_length = await asyncio.to_thread(os.path.getsize, tmp)
        await resp.prepare(request)
        f = await asyncio.to_thread(open, tmp, "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                await resp.write(chunk)
        finally:
            await asyncio.to_thread(f.close)
        await resp.write_eof()
        return resp
    finally:
        await asyncio.to_thread(os.unlink, tmp)


def _build_zip(files: list[tuple[str, Path]], tmp_dir: Path) -> str:
    """Frames are already compressed: store them (fast, and the size is known up front)."""
    fd, tmp = tempfile.mkstemp(suffix=".zip", dir=tmp_dir)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as z:
        for name, path in sorted(files):
            z.write(path, name)
    return tmp


@routes.get("/api/jobs/{job_id}/outputs/{name}")
async def job_output_file(request: web.Request) -> web.StreamResponse:
    farm = request.app[FARM]
    job = farm.job(request.match_info["job_id"])
    out = job.outputs.get(request.match_info["name"])
    if out is None:
        raise FarmError(f"job {job.id} has no output {request.match_info['name']!r}",
                        "not_found", 404)
    return web.FileResponse(farm.output_path(job.id, out.name))


# --- nodes ---------------------------------------------------------------------------------
@routes.post("/api/nodes/{node_id}/{action:drain|disable|enable}")
async def node_action(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    act = {"drain": control.drain, "disable": control.disable, "enable": control.enable}
    rec = act[request.match_info["action"]](farm, request.match_info["node_id"])
    return web.json_response({"node": rec.to_json()})

@routes.get("/api/nodes")
async def node_list(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    nodes = sorted(farm.nodes.values(), key=lambda n: n.name)
    return web.json_response({"nodes": [n.to_json() for n in nodes]})
