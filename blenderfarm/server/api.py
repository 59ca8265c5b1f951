"""The HTTP JSON API under ``/api/``: blobs, jobs, tasks, outputs, nodes.

Handlers validate input, call the farm and shape JSON; every refusal is one JSON
error ``{"error": {"code", "message", "field"}}`` with a 4xx status. Disk work
(blob writes, zips) runs in threads or streams.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..protocol import PROTOCOL_VERSION
from ..protocol.hashing import is_sha256
from ..protocol.jobspec import SpecError, validate_spec
from ..protocol.messages import INT_MAX, INT_MIN
from ..protocol.paths import is_utf8
from ..protocol.version import __version__
from . import control, tokens
from .access import actor, require_admin, require_read
from .auth import AUTH, token_name
from .blobs import BlobError
from .errors import FarmError, error_response
from .keys import FARM
from .kinds import preview_of
from .models import Job
from .tokens import TokenInfo
from .webhooks import WEBHOOKS

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
#: uploads that may run at once (a temp file and a socket each); more wait a while
UPLOAD_SLOTS = web.AppKey("upload_slots", asyncio.Semaphore)
MAX_JSON = 64 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    except ClientGone as exc:  # nobody is there to answer; not the server's fault
        log.info("%s %s: the client went away (%s)", request.method, request.path, exc)
        return error_response(400, "client_gone", "the client closed the connection")
    except ClientTooSlow as exc:
        log.info("%s %s from %s: %s", request.method, request.path, request.remote, exc)
        resp = error_response(408, "request_timeout", f"the request body stalled: {exc}")
        resp.force_close()
        return resp
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            log.warning("out of file descriptors serving %s", request.path)
            return error_response(503, "busy", "the server is too busy; try again shortly")
        log.error("disk error serving %s: %s", request.path, exc)
        return error_response(507 if exc.errno == errno.ENOSPC else 500, "disk_error",
                              f"the server could not write to its disk: {exc.strerror}")


class ClientGone(Exception):
    """The client closed its connection while we read its body (not a server error)."""


class ClientTooSlow(Exception):
    """No part of a request body came within the body timeout."""


async def read_json(request: web.Request) -> Any:
    """The body as JSON, refused (400 ``bad_json``) unless every value is one the farm
    can store and send on: nested at most :data:`MAX_DEPTH` deep, integers within 64
    bits, finite numbers, text without lone surrogates (JSON's ``\\ud800`` escape)."""
    if request.content_length is not None and request.content_length > MAX_JSON:
        raise FarmError("request body too large", "too_large", 413)
    body = await read_body(request)
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError,
        # an integer of thousands of digits, a body nested past the parser's stack
        raise FarmError(f"body is not valid JSON: {str(exc)[:200]}", "bad_json") from exc
    where = _unstorable(data)
    if where is not None:
        raise FarmError(f"body is not valid JSON for the farm: {where}", "bad_json")
    return data


MAX_DEPTH = 32


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unstorable(data: Any) -> str | None:
    """Why ``data`` cannot be stored or sent on, or None. Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is str:
            if not is_utf8(value):
                return "text with a lone surrogate (not valid UTF-8)"
        elif kind is int:
            if not INT_MIN <= value <= INT_MAX:
                return "an integer beyond 64 bits"
        elif kind is list or kind is dict:
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            if kind is dict:
                stack.extend((k, depth + 1) for k in value)
                stack.extend((v, depth + 1) for v in value.values())
            else:
                stack.extend((v, depth + 1) for v in value)
    return None


async def read_body(request: web.Request) -> bytes:
    """The whole body (at most :data:`MAX_JSON` bytes), with the body timeout between
    chunks (a client that stalls mid-body is answered 408 and its connection closed)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in _body_chunks(request, request.app[FARM].config.body_timeout):
        size += len(chunk)
        if size > MAX_JSON:
            raise FarmError("request body too large", "too_large", 413)
        parts.append(chunk)
    return b"".join(parts)


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
                              "auth_required": request.app[AUTH].required, **farm.info(),
                              "you": actor(request).to_json(farm.config.share_outputs)})


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
    config = request.app[FARM].config
    slots = request.app[UPLOAD_SLOTS]
    # a slot is a temp file and a socket; when all are taken, wait a while
    busy = await take_slot(slots, config.body_timeout, f"{config.max_uploads} uploads are "
                           "running; try again shortly")
    if busy is not None:
        return busy
    try:
        size = await blobs.write(sha, _body_chunks(request, config.body_timeout))
    finally:
        slots.release()
    request.app[FARM].metrics.add_uploaded_bytes(size)
    return web.json_response({"sha256": sha, "size": size}, status=201)


async def take_slot(slots: asyncio.Semaphore, timeout: float, busy: str
                    ) -> web.Response | None:
    """Take one of ``slots`` (None), or, when none frees within ``timeout`` seconds, the
    503 to answer (``busy`` says why, Retry-After when to ask again)."""
    try:
        async with asyncio.timeout(timeout):
            await slots.acquire()
    except TimeoutError:
        resp = error_response(503, "busy", busy)
        resp.headers["Retry-After"] = "5"
        return resp
    return None


async def _body_chunks(request: web.Request, timeout: float) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, not joined into bigger ones: no copy (the store
    batches them); a bigger read buffer means fewer pauses of the socket. A stall longer
    than ``timeout`` or a client that hangs up ends the upload with its own error (not
    a disk error: the socket's ``ConnectionResetError`` is an ``OSError`` too)."""
    request.content.set_read_chunk_size(1 << 20)
    chunks = request.content.iter_chunks().__aiter__()
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk, _ = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise ClientTooSlow(f"no part of the body came for {timeout:g} s") from exc
        except (ConnectionError, aiohttp.ClientPayloadError) as exc:
            raise ClientGone(str(exc)) from exc
        if chunk:  # an empty one only marks the end of an HTTP chunk
            yield chunk


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
    why = request.app[WEBHOOKS].policy.refusal(spec.webhook) if spec.webhook else None
    if why is not None:
        raise FarmError(f"a job's webhook may not go there: {why}; the server's webhook_allow "
                        "setting names the hosts and networks allowed besides public ones",
                        "webhook_not_allowed", field="webhook")
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
    return web.json_response({"job": farm.job_json(farm.job(request.match_info["job_id"]), nodes=True)})


#: tasks in one page of ``GET /api/jobs/{id}/tasks`` unless ``limit`` asks for fewer
TASK_PAGE = 1000
MAX_TASK_PAGE = 10_000


@routes.get("/api/jobs/{job_id}/tasks")
async def job_tasks(request: web.Request) -> web.Response:
    """One page of a job's tasks: ``?offset=N&limit=M`` (at most 10,000; 1,000 by
    default), with ``total`` and ``next`` (the next page's offset, or null)."""
    farm = request.app[FARM]
    job = farm.job(request.match_info["job_id"])
    offset = _query_int(request, "offset", 0, 0, len(job.task_ids))
    limit = _query_int(request, "limit", TASK_PAGE, 1, MAX_TASK_PAGE)
    page = job.task_ids[offset:offset + limit]
    tasks = []
    for tid in page:
        task = farm.tasks[tid]
        view = task.to_json()
        view.pop("log_tail", None)
        preview = preview_of(task)  # a tile's picture for the page (its EXR: the merge's)
        view.pop("parts", None)
        view["preview"] = {"v": preview["sha256"][:12], "rect": preview["rect"],
                           "frame_size": preview["frame_size"]} \
            if preview and "rect" in preview else None
        view["waiting"] = task.pending > 0  # queued until what it depends on is done
        tasks.append(view)
    end = offset + len(page)
    return web.json_response({"tasks": tasks, "offset": offset, "total": len(job.task_ids),
                              "next": end if end < len(job.task_ids) else None})


def _query_int(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 12:
        raise FarmError(f"{key} must be a whole number", field=key)
    return max(lo, min(hi, int(raw)))


async def _answer(request: web.Request, job: Job, fut: asyncio.Future[None]) -> web.Response:
    """Answer an action on a job once its change is committed."""
    farm = request.app[FARM]
    await farm.saved(fut)
    return web.json_response({"job": farm.job_json(job)})


def _readable(request: web.Request) -> Job:
    """The job whose outputs or logs are asked for, once the token may read them."""
    farm = request.app[FARM]
    job = farm.job(request.match_info["job_id"])
    require_read(actor(request), job, farm.config.share_outputs)
    return job


@routes.post("/api/jobs/{job_id}/cancel")
async def job_cancel(request: web.Request) -> web.Response:
    return await _answer(request, *control.cancel(request.app[FARM],
                                                  request.match_info["job_id"], actor(request)))


@routes.post("/api/jobs/{job_id}/pause")
async def job_pause(request: web.Request) -> web.Response:
    stop = bool((await read_options(request)).get("stop"))
    return await _answer(request, *control.pause(request.app[FARM], request.match_info["job_id"],
                                                 actor(request), stop=stop))


@routes.post("/api/jobs/{job_id}/resume")
async def job_resume(request: web.Request) -> web.Response:
    return await _answer(request, *control.resume(request.app[FARM],
                                                  request.match_info["job_id"], actor(request)))


@routes.post("/api/jobs/{job_id}/requeue")
async def job_requeue(request: web.Request) -> web.Response:
    which = (await read_options(request)).get("which", "failed")
    return await _answer(request, *control.requeue(request.app[FARM], request.match_info["job_id"],
                                                   actor(request), str(which)))


@routes.post("/api/jobs/{job_id}/priority")
async def job_priority(request: web.Request) -> web.Response:
    priority = (await read_options(request)).get("priority")
    return await _answer(request, *control.set_priority(
        request.app[FARM], request.match_info["job_id"], actor(request), priority))


@routes.delete("/api/jobs/{job_id}")
async def job_delete(request: web.Request) -> web.Response:
    await control.delete(request.app[FARM], request.match_info["job_id"], actor(request))
    return web.json_response({"deleted": request.match_info["job_id"]})


@routes.get("/api/tasks/{task_id}/log")
async def task_log(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    task = farm.tasks.get(request.match_info["task_id"])
    if task is None:
        raise FarmError(f"no task {request.match_info['task_id']!r}", "not_found", 404)
    require_read(actor(request), farm.jobs[task.job_id], farm.config.share_outputs)
    text = await asyncio.to_thread(farm.logs.read, task)
    return web.json_response({"text": text, "task_id": task.id, "status": task.status})


@routes.get("/api/tasks/{task_id}/preview")
async def task_preview(request: web.Request) -> web.StreamResponse:
    """A tile's preview (an 8-bit PNG of its pixels), for the job page to show its frame
    filling in before the merge; 404 where the tile has none (yet)."""
    farm = request.app[FARM]
    task = farm.tasks.get(request.match_info["task_id"])
    if task is None:
        raise FarmError(f"no task {request.match_info['task_id']!r}", "not_found", 404)
    require_read(actor(request), farm.jobs[task.job_id], farm.config.share_outputs)
    preview = preview_of(task)
    path = farm.blobs.path(preview["sha256"]) if preview else None
    if path is None or not await asyncio.to_thread(path.is_file):
        raise FarmError(f"task {task.id} has no preview", "not_found", 404)
    return web.FileResponse(path, headers={"Content-Type": "image/png",
                                           "Cache-Control": "private, max-age=86400"})


@routes.get("/api/jobs/{job_id}/outputs")
async def job_outputs(request: web.Request) -> web.Response:
    job = _readable(request)
    outs = sorted(job.outputs.values(), key=lambda o: (o.frame, o.name))
    return web.json_response({"outputs": [o.to_json() for o in outs]})


@routes.get("/api/jobs/{job_id}/outputs.zip")
async def job_outputs_zip(request: web.Request) -> web.StreamResponse:
    farm = request.app[FARM]
    job = _readable(request)
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
    job = _readable(request)
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
    rec, fut = act[request.match_info["action"]](farm, request.match_info["node_id"],
                                                 actor(request))
    await farm.saved(fut)
    return web.json_response({"node": farm.node_json(rec)})

@routes.get("/api/nodes")
async def node_list(request: web.Request) -> web.Response:
    farm = request.app[FARM]
    nodes = sorted(farm.nodes.values(), key=lambda n: n.name)
    return web.json_response({"nodes": [farm.node_json(n) for n in nodes]})


# --- tokens (admins) --------------------------------------------------------------------------
def _token_json(t: TokenInfo) -> dict[str, Any]:
    return {"id": t.id, "kind": t.kind, "role": t.role if t.kind == "user" else None,
            "name": t.name, "created": t.created, "revoked": t.revoked}


@routes.get("/api/tokens")
async def token_list(request: web.Request) -> web.Response:
    require_admin(actor(request), "list tokens")
    db = request.app[FARM].config.data_dir / "farm.db"
    return web.json_response({"tokens": [_token_json(t) for t in
                                         await asyncio.to_thread(tokens.list_tokens, db)]})


@routes.post("/api/tokens")
async def token_create(request: web.Request) -> web.Response:
    """``{"kind": "user"|"admin"|"node", "name": ...}``; the secret is in this answer only."""
    require_admin(actor(request), "create tokens")
    body = await read_options(request)
    kind, name = body.get("kind"), body.get("name")
    if kind not in ("user", "admin", "node"):
        raise FarmError("kind must be user, admin or node", field="kind")
    if not isinstance(name, str) or not name.strip() or len(name) > 64 or \
            any(ord(c) < 32 for c in name):
        raise FarmError("name must be a short line of text", field="name")
    role = "admin" if kind == "admin" else "user"
    db = request.app[FARM].config.data_dir / "farm.db"
    info, secret = await asyncio.to_thread(tokens.create, db, "node" if kind == "node" else
                                           "user", name.strip(), role)
    await request.app[AUTH].refresh(force=True)
    return web.json_response({"token": _token_json(info), "secret": secret}, status=201)


@routes.post("/api/tokens/{token_id}/revoke")
async def token_revoke(request: web.Request) -> web.Response:
    require_admin(actor(request), "revoke tokens")
    db = request.app[FARM].config.data_dir / "farm.db"
    token_id = request.match_info["token_id"]
    if not await asyncio.to_thread(tokens.revoke, db, token_id):
        raise FarmError(f"no active token {token_id!r}", "not_found", 404)
    await request.app[AUTH].refresh(force=True)
    return web.json_response({"revoked": token_id})
