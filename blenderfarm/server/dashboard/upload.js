// A project's bytes on their way to the farm: every file hashed in the browser (the
// same SHA-256 content addresses as `bf`), the server asked which it lacks, those sent
// with PUT /api/blobs/{sha256}, a few at a time, and the farm's reading of the main
// .blend (POST /api/inspect).
//
// Uploads use XMLHttpRequest, not fetch: only it reports upload progress in bytes
// (upload.onprogress). The token goes in the Authorization header, as api.js sends it.
// Cancel aborts every request in flight; the server discards a partial body.

import { getToken } from "./api.js";
import { Aborted, hashBlob } from "./sha256.js";

/** Files sent at once, as `bf` does (client/pack.py UPLOAD_CONNECTIONS). */
export const CONNECTIONS = 3;

/** A refusal or failure with the one sentence to show, and the server's reason code. */
export class TransferError extends Error {
  constructor(message, reason, data) {
    super(message);
    this.reason = reason || "";
    this.data = data;
  }
}

function authHeaders(extra) {
  const out = { Accept: "application/json", ...(extra || {}) };
  const token = getToken();
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

/**
 * The server's sentence and reason from an error body: the API's one shape
 * {"error": {"code", "message", "data"}}, or {"error": "...", "reason": "..."}.
 */
export function refusal(body, status) {
  const error = body && body.error;
  if (typeof error === "string") return { message: error, reason: body.reason || "", data: body };
  if (error && typeof error === "object") {
    return { message: error.message || `HTTP ${status}`, reason: body.reason || error.code || "",
      data: error.data ?? body };
  }
  return { message: `the server answered HTTP ${status}`, reason: `http_${status}`, data: null };
}

/** POST a JSON body; the answer's JSON, or TransferError with the server's sentence. */
export async function postJson(path, body, signal) {
  let resp;
  try {
    resp = await fetch(path, { method: "POST", cache: "no-store", signal,
      headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
  } catch (exc) {
    if (signal && signal.aborted) throw new Aborted();
    throw new TransferError("The server cannot be reached.", "offline");
  }
  let data = null;
  try { data = await resp.json(); } catch { /* not JSON */ }
  if (resp.ok) return data;
  const r = refusal(data, resp.status);
  throw new TransferError(sentence(r.message), r.reason, r.data);
}

/** A server message as a sentence: a full stop, and a capital where it starts with a
 * plain word (not a file name such as "shot.blend is damaged"). */
export function sentence(text) {
  const t = stop(text);
  return /^[a-z]+[ ,;:]/.test(t) ? t[0].toUpperCase() + t.slice(1) : t;
}

/** A message with a full stop at its end. */
export function stop(text) {
  const t = String(text || "").trim();
  return !t || /[.!?]$/.test(t) ? t : `${t}.`;
}

/**
 * Hash every file of ``files`` ([{rel, file}]) in turn; sets ``sha`` on each.
 * ``onProgress(bytesDone, rel)`` after each piece; ``signal`` aborts (Aborted).
 */
export async function hashAll(files, onProgress, signal) {
  let done = 0;
  for (const item of files) {
    item.sha = await hashBlob(item.file, { signal, onBytes: (n) => {
      done += n;
      onProgress(done, item.rel);
    } });
  }
}

/** Which of these hashes the server does not have yet. */
export async function missingBlobs(hashes, signal) {
  const data = await postJson("/api/blobs/missing", { hashes: [...new Set(hashes)] }, signal);
  return new Set(data.missing);
}

/**
 * Send ``items`` ([{sha, file, rel}], the same sha once) ``CONNECTIONS`` at a time.
 * ``onBytes(delta)`` as bytes leave, ``onStored(item)`` as each is stored. The first
 * failure aborts the rest and rejects with its TransferError; ``signal`` aborts
 * everything (Aborted).
 */
export function putAll(items, onBytes, signal, onStored = () => {}) {
  const queue = [...items];
  const running = new Set();
  return new Promise((resolve, reject) => {
    let failed = false;
    const fail = (exc) => {
      if (failed) return;
      failed = true;
      for (const xhr of running) xhr.abort();
      reject(exc);
    };
    if (signal) {
      if (signal.aborted) { fail(new Aborted()); return; }
      signal.addEventListener("abort", () => fail(new Aborted()), { once: true });
    }
    const next = () => {
      if (failed) return;
      if (!queue.length) {
        if (!running.size) resolve();
        return;
      }
      const item = queue.shift();
      const xhr = putBlob(item, onBytes, (exc) => {
        running.delete(xhr);
        if (exc) {
          fail(exc);
          return;
        }
        if (!failed) onStored(item);
        next();
      });
      running.add(xhr);
    };
    for (let i = 0; i < CONNECTIONS; i++) next();
  });
}

/** One PUT; ``done(null)`` once stored, ``done(TransferError)`` otherwise. */
function putBlob(item, onBytes, done) {
  const xhr = new XMLHttpRequest();
  let sent = 0;
  const count = (loaded) => {
    if (loaded > sent) { onBytes(loaded - sent); sent = loaded; }
  };
  xhr.open("PUT", `/api/blobs/${item.sha}`);
  for (const [k, v] of Object.entries(authHeaders({ "Content-Type": "application/octet-stream" }))) {
    xhr.setRequestHeader(k, v);
  }
  xhr.upload.onprogress = (e) => count(e.loaded);
  xhr.onload = () => {
    if (xhr.status === 200 || xhr.status === 201) {
      count(item.file.size); // an empty file, or one the server had already
      done(null);
      return;
    }
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    const r = refusal(body, xhr.status);
    done(new TransferError(`The farm refused ${item.rel}: ${stop(r.message)}`, r.reason, r.data));
  };
  xhr.onerror = () => done(new TransferError(`The upload of ${item.rel} broke off: the `
    + "connection to the server was lost (a server may also close it on a file larger than "
    + "it accepts).", "connection"));
  xhr.onabort = () => {}; // only ours: putAll has already settled
  xhr.send(item.file);
  return xhr;
}
