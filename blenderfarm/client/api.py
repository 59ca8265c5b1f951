"""The farm server's HTTP API, as Python methods: the one place the client talks HTTP.

``Client`` maps each endpoint under ``/api/`` to a method that returns the decoded
JSON (or writes a file). Every failure leaves as one of two exceptions, translated
once here: :class:`ApiError` (the server answered with an error) and
:class:`ServerUnreachable` (no usable answer at all).

Stdlib only (http.client, json): the add-on vendors this module into Blender, so it
must never import aiohttp, requests or bpy, and imports the protocol relatively.
A Client may be shared between threads: each thread keeps its own connection.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pathlib
import secrets
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..protocol.hashing import CHUNK, is_sha256, sha256_file
from ..protocol.jobspec import output_stem
from ..protocol.paths import PathError, normalize_relpath
from ..protocol.version import __version__

MISSING_BATCH = 10_000  # hashes per POST /api/blobs/missing
USER_AGENT = f"blenderfarm-client/{__version__}"
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})

ProgressFn = Callable[[int], None]
SHORT_ID = 6  # characters of a job id that tell a file's jobs apart


def short_id(job_id: str) -> str:
    """The first characters of a job id, as the panel and the download folders show it."""
    return "".join(c for c in str(job_id) if c.isalnum())[:SHORT_ID] or "job"


def job_folder_name(name: str, job_id: str) -> str:
    """The folder a job downloads into by default: ``shot-3fa2b1``, safe on any disk.

    Jobs of the same name (the same file submitted twice) get different folders, so
    one job's frames never land on another's.
    """
    return f"{output_stem(name)}-{short_id(job_id)}"


class ClientError(Exception):
    """Base of the errors a Client raises."""


class ApiError(ClientError):
    """The server answered with an error: ``status`` (HTTP), ``code``, maybe ``field``."""

    def __init__(self, message: str, status: int, code: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.message}{where}"


class OutputConflict(ClientError):
    """A download would replace files whose content differs from the job's outputs.

    ``paths`` are those files (absolute), ``dest`` the folder; nothing was written.
    Each edge words the way out (``bf download --overwrite``, the add-on's Overwrite).
    """

    def __init__(self, dest: str, paths: list[str]) -> None:
        super().__init__(f"{paths[0]} already exists with different content"
                         + (f" (and {len(paths) - 1} more file(s))" if len(paths) > 1 else ""))
        self.dest = dest
        self.paths = paths


class ServerUnreachable(ClientError):
    """No HTTP answer from ``url``: refused, timed out, name unknown, cut off."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"Cannot reach the farm server at {url}: {reason}. "
            "Is bf-server running? Check --server / BLENDERFARM_SERVER."
        )
        self.url = url
        self.reason = reason


class _StaleConnection(Exception):
    """The server closed a connection we meant to reuse; one retry may mend it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class _LocalReadError(Exception):
    """Reading our own file failed mid-upload: not the network's fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Client:
    """A connection to one farm server. ``timeout`` bounds each socket operation."""

    def __init__(self, server_url: str, token: str | None = None, timeout: float = 30) -> None:
        url = server_url.strip().rstrip("/")
        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) server URL: {server_url!r}")
        self.server_url = url
        self.token = token or None
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"Client({self.server_url!r})"

    # --- the API ----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self._json("GET", "/api/info")

    def missing_blobs(self, hashes: list[str]) -> list[str]:
        """Those of ``hashes`` the server does not store yet."""
        missing: list[str] = []
        for i in range(0, len(hashes), MISSING_BATCH):
            batch = hashes[i : i + MISSING_BATCH]
            reply = self._json("POST", "/api/blobs/missing", {"hashes": batch})
            missing.extend(reply.get("missing", []))
        return missing

    def put_blob(
        self, sha: str, path: str | os.PathLike[str], on_bytes: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Stream a file's bytes to ``PUT /api/blobs/{sha}``; the server verifies the hash.

        ``on_bytes(n)`` hears of each chunk sent; ``n`` is negative once if a resend on
        a fresh connection takes back a failed attempt's count.
        """
        _check_sha(sha)
        size = os.path.getsize(path)  # FileNotFoundError here is the caller's to see
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}

        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n
            if on_bytes is not None:
                on_bytes(n)

        def body() -> Iterator[bytes]:
            # Called again only when a stale connection forces a resend: take back
            # what the failed attempt reported, so progress never passes the total.
            nonlocal sent
            if sent and on_bytes is not None:
                on_bytes(-sent)
            sent = 0
            return _read_chunks(path, count)

        return self._json("PUT", f"/api/blobs/{sha}", body=body, headers=headers)

    def get_blob(self, sha: str, dest_path: str | os.PathLike[str]) -> int:
        """Download a blob into ``dest_path`` (verified, then renamed into place)."""
        _check_sha(sha)
        return self._download(f"/api/blobs/{sha}", dest_path, sha)

    def create_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        job: dict[str, Any] = self._json("POST", "/api/jobs", spec)["job"]
        return job

    def list_jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self._json("GET", "/api/jobs")["jobs"]
        return jobs

    def get_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._json("GET", f"/api/jobs/{_q(job_id)}")["job"]
        return job

    def job_tasks(self, job_id: str) -> list[dict[str, Any]]:
        """Every task of the job, page by page (the server sends at most 10,000 a page)."""
        tasks: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = self._json("GET", f"/api/jobs/{_q(job_id)}/tasks?offset={offset}&limit=10000")
            tasks += page["tasks"]
            offset = page.get("next")
        return tasks

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._json("POST", f"/api/jobs/{_q(job_id)}/cancel", {})["job"]
        return job

    def list_outputs(self, job_id: str) -> list[dict[str, Any]]:
        reply = self._json("GET", f"/api/jobs/{_q(job_id)}/outputs")
        outputs: list[dict[str, Any]] = reply["outputs"]
        return outputs

    def download_output(
        self, job_id: str, name: str, dest_path: str | os.PathLike[str], sha256: str | None = None
    ) -> int:
        """One output file into ``dest_path``; checked against ``sha256`` when given."""
        return self._download(f"/api/jobs/{_q(job_id)}/outputs/{_q(name)}", dest_path, sha256)

    def download_outputs_zip(self, job_id: str, dest_path: str | os.PathLike[str]) -> int:
        return self._download(f"/api/jobs/{_q(job_id)}/outputs.zip", dest_path, None)

    def download_outputs(
        self,
        job_id: str,
        dest_dir: str | os.PathLike[str],
        on_file: Callable[[str, bool], None] | None = None,
        overwrite: bool = False,
    ) -> list[str]:
        """Fetch every output not already in ``dest_dir`` with the right hash.

        A file already there with the same content is kept (``on_file(path, False)``);
        one whose content differs is replaced only with ``overwrite``, else
        :class:`OutputConflict` is raised before anything is written. Returns the
        paths written; ``on_file(path, True)`` hears about each of them.
        """
        dest = pathlib.Path(dest_dir)
        plan: list[tuple[str, str | None, pathlib.Path, bool]] = []
        conflicts: list[str] = []
        for out in self.list_outputs(job_id):
            name, sha = str(out.get("name", "")), str(out.get("sha256", ""))
            try:
                rel = normalize_relpath(name)
            except PathError as exc:
                raise ApiError(f"the server named an output unsafely: {exc}", 200,
                               "bad_response") from exc
            target = dest / rel
            known = sha if is_sha256(sha) else None
            same = known is not None and target.is_file() and sha256_file(target) == known
            if not same and os.path.lexists(target):
                conflicts.append(str(target))
            plan.append((name, known, target, not same))
        if conflicts and not overwrite:
            raise OutputConflict(str(dest), conflicts)
        written: list[str] = []
        for name, known, target, fetch in plan:
            if fetch:
                self.download_output(job_id, name, target, known)
                written.append(str(target))
            if on_file is not None:
                on_file(str(target), fetch)
        return written

    def list_nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = self._json("GET", "/api/nodes")["nodes"]
        return nodes

    # --- control ----------------------------------------------------------------------------

    def job_action(self, job_id: str, action: str, payload: Any = None) -> dict[str, Any]:
        """``pause`` (payload {"stop": bool}), ``resume``, ``requeue`` ({"which":
        "failed"|"all"}), ``priority`` ({"priority": n}) or ``cancel``."""
        if action not in ("pause", "resume", "requeue", "priority", "cancel"):
            raise ValueError(f"unknown job action {action!r}")
        job: dict[str, Any] = self._json("POST", f"/api/jobs/{_q(job_id)}/{action}",
                                         payload if payload is not None else {})["job"]
        return job

    def delete_job(self, job_id: str) -> None:
        self._json("DELETE", f"/api/jobs/{_q(job_id)}")

    def node_action(self, node: str, action: str) -> dict[str, Any]:
        """``drain``, ``disable`` or ``enable`` a node (by id or name)."""
        if action not in ("drain", "disable", "enable"):
            raise ValueError(f"unknown node action {action!r}")
        rec: dict[str, Any] = self._json("POST", f"/api/nodes/{_q(node)}/{action}", {})["node"]
        return rec

    def task_log(self, task_id: str) -> str:
        return str(self._json("GET", f"/api/tasks/{_q(task_id)}/log")["text"])

    # --- transport ------------------------------------------------------------------------

    def _json(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        body: Callable[[], Iterator[bytes]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        hdrs = dict(headers or {})
        data: Callable[[], Any] | None = body
        if payload is not None:
            raw = json.dumps(payload).encode()
            hdrs["Content-Type"] = "application/json"
            data = lambda: raw  # noqa: E731 - a new body for a retry, same bytes
        resp = self._request(method, path, data, hdrs)
        content = self._read_body(resp, "answer cut off", None)
        try:
            return json.loads(content) if content else {}
        except ValueError as exc:
            raise ApiError(f"the server sent invalid JSON for {method} {path}", resp.status,
                           "bad_response") from exc

    def _download(self, path: str, dest_path: str | os.PathLike[str], sha: str | None) -> int:
        """Stream a GET into a temp file beside ``dest_path``, verify, rename atomically."""
        dest = pathlib.Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        resp = self._request("GET", path, None, {"Accept": "*/*"})
        digest, size = hashlib.sha256(), 0
        # open(..., "xb") rather than mkstemp: the file gets the user's umask, not 0600.
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.part"
        try:
            with open(tmp, "xb") as f:
                while block := self._read_body(resp, "download cut off"):
                    digest.update(block)
                    f.write(block)
                    size += len(block)
            if sha is not None and digest.hexdigest() != sha:
                raise ApiError(f"{path} arrived corrupted (SHA-256 mismatch)", resp.status,
                               "checksum_mismatch")
            os.replace(tmp, dest)
        except BaseException:
            self._drop_connection()  # the response may be half-read
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return size

    def _read_body(
        self, resp: http.client.HTTPResponse, what: str, amt: int | None = CHUNK
    ) -> bytes:
        try:
            return resp.read(amt)
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise ServerUnreachable(self.server_url, f"{what} ({_reason(exc)})") from exc

    def _request(
        self,
        method: str,
        path: str,
        body: Callable[[], Any] | None,
        headers: dict[str, str],
    ) -> http.client.HTTPResponse:
        """Send one request; return a 2xx response or raise ApiError/ServerUnreachable."""
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        # A kept-alive connection the server has since closed fails on first use; only
        # then, and only for requests that are safe to repeat, is sending again right.
        if method not in _IDEMPOTENT and path != "/api/blobs/missing":
            self._drop_connection()
        reused = getattr(self._local, "conn", None) is not None
        try:
            resp = self._send(method, path, body, hdrs)
        except _StaleConnection as exc:
            if not reused:
                raise ServerUnreachable(self.server_url, _reason(exc.error)) from exc.error
            try:
                resp = self._send(method, path, body, hdrs)
            except _StaleConnection as again:
                raise ServerUnreachable(self.server_url, _reason(again.error)) from again.error
        if resp.status >= 300:
            raise self._error_from(resp, method, path)
        return resp

    def _send(
        self, method: str, path: str, body: Callable[[], Any] | None, hdrs: dict[str, str]
    ) -> http.client.HTTPResponse:
        conn = self._connection()
        try:
            conn.request(method, self._prefix + path, body=body() if body else None,
                         headers=hdrs)
            return conn.getresponse()
        except _LocalReadError as exc:
            self._drop_connection()
            raise exc.error from exc
        except _STALE as exc:
            self._drop_connection()
            raise _StaleConnection(exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise ServerUnreachable(self.server_url, _reason(exc)) from exc

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop_connection()

    def _error_from(self, resp: http.client.HTTPResponse, method: str, path: str) -> ApiError:
        try:
            raw = resp.read(64 * 1024)
        except (OSError, http.client.HTTPException):
            raw = b""
        self._drop_connection()  # an error body may be left half-read
        try:
            err = json.loads(raw)["error"]
            return ApiError(str(err["message"]), resp.status, str(err.get("code") or "error"),
                            err.get("field"))
        except (ValueError, KeyError, TypeError):
            text = raw.decode("utf-8", "replace").strip().splitlines()
            detail = f": {text[0][:200]}" if text else ""
            return ApiError(f"{method} {path} failed with HTTP {resp.status} {resp.reason}{detail}",
                            resp.status, f"http_{resp.status}")


def _read_chunks(path: str | os.PathLike[str], on_bytes: ProgressFn | None) -> Iterator[bytes]:
    f: IO[bytes]
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the generator's finally
    except OSError as exc:
        raise _LocalReadError(exc) from exc
    try:
        while True:
            try:
                block = f.read(CHUNK)
            except OSError as exc:
                raise _LocalReadError(exc) from exc
            if not block:
                return
            yield block
            if on_bytes is not None:
                on_bytes(len(block))
    finally:
        f.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or exc.__class__.__name__


def _check_sha(sha: str) -> None:
    if not is_sha256(sha):
        raise ValueError(f"not a lowercase hex SHA-256: {sha!r}")


def _q(segment: str) -> str:
    return urllib.parse.quote(str(segment), safe="")
