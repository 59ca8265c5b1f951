// The HTTP API and the events socket, with the user token from local storage.
// The token goes in an Authorization header or the socket's first frame, never in a URL.

const TOKEN_KEY = "blenderfarm.token";

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY); } catch { return null; }
}

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch { /* private mode: the token lives only as long as the page */ }
}

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

let onUnauthorized = () => {};

export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

function headers(extra) {
  const token = getToken();
  const out = { Accept: "application/json", ...(extra || {}) };
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

async function checked(resp) {
  if (resp.ok) return resp;
  let error = {};
  try { error = (await resp.json()).error || {}; } catch { /* not JSON */ }
  const err = new ApiError(resp.status, error.code || `http_${resp.status}`,
    error.message || resp.statusText || "request failed", error.field);
  if (resp.status === 401) onUnauthorized(err);
  throw err;
}

/** A JSON call; throws ApiError with the server's one-sentence message. */
export async function api(path, options) {
  const { method = "GET", body } = options || {};
  let resp;
  try {
    resp = await fetch(path, {
      method, cache: "no-store",
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (exc) {
    throw new ApiError(0, "offline", "the server cannot be reached", null);
  }
  await checked(resp);
  return resp.status === 204 ? null : resp.json();
}

/** Bytes (a frame, a zip) with the token; for <img> and downloads when sign-in is on. */
export async function apiBlob(path) {
  const resp = await checked(await fetch(path, { headers: headers() }));
  return resp.blob();
}

export function eventsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/events`;
}

export const enc = encodeURIComponent;
