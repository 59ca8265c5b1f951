// Rendered frames for <img>. Without sign-in an image is its plain URL (the browser
// caches it). With sign-in an <img src> cannot send the token, so the bytes are fetched
// with it and shown from a blob: URL, kept in a small cache and revoked on eviction.

import { apiBlob, enc, getToken } from "./api.js";
import { h } from "./dom.js";
import { invalidate } from "./state.js";

const MAX_BLOBS = 96;
const blobs = new Map(); // url -> blob: URL, or "" while loading; Map order = LRU first

export function frameUrl(jobId, name) {
  return `/api/jobs/${enc(jobId)}/outputs/${enc(name)}`;
}

/** An <img> for one output; the hash makes a re-rendered frame a new URL. */
export function frameImage(jobId, output, alt) {
  const url = `${frameUrl(jobId, output.name)}?v=${output.sha256.slice(0, 12)}`;
  return h("img", { src: getToken() ? viaBlob(url) : url, alt, decoding: "async",
    draggable: "false" });
}

/** A tile's preview (``/api/tasks/<id>/preview``), placed by the mosaic. */
export function tileImage(task, alt) {
  const url = `/api/tasks/${enc(task.id)}/preview?v=${task.preview.v}`;
  return h("img", { src: getToken() ? viaBlob(url) : url, alt, decoding: "async",
    draggable: "false" });
}

/** A <video> for the job's video output (fetched with the token where signed in). */
export function frameVideo(jobId, output) {
  const url = `${frameUrl(jobId, output.name)}?v=${output.sha256.slice(0, 12)}`;
  return h("video", { src: getToken() ? viaBlob(url) : url, controls: true, loop: true,
    preload: "metadata", "data-role": "video", "aria-label": `Video ${output.name}` });
}

function viaBlob(url) {
  if (blobs.has(url)) {
    const src = blobs.get(url);
    blobs.delete(url); // most recently used goes last
    blobs.set(url, src);
    return src || null;
  }
  blobs.set(url, "");
  apiBlob(url).then((blob) => {
    if (!blobs.has(url)) return;
    blobs.set(url, URL.createObjectURL(blob));
    invalidate();
  }).catch(() => blobs.delete(url));
  evict();
  return null;
}

function evict() {
  while (blobs.size > MAX_BLOBS) {
    const [url, src] = blobs.entries().next().value;
    blobs.delete(url);
    if (src) URL.revokeObjectURL(src);
  }
}

export function clearImages() {
  for (const src of blobs.values()) if (src) URL.revokeObjectURL(src);
  blobs.clear();
}
