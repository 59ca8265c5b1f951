// Rendered frames as <img> elements, kept across redraws so they never flicker.
// When the server needs a token an <img src> cannot send it, so the bytes are fetched
// with the token and shown from a blob: URL (revoked when the image leaves the cache).

import { apiBlob, enc, getToken } from "./api.js";
import { h } from "./dom.js";

const MAX_IMAGES = 96;
const cache = new Map(); // key -> {img, url}; Map order = least recently used first

export function frameUrl(jobId, name) {
  return `/api/jobs/${enc(jobId)}/outputs/${enc(name)}`;
}

/** The <img> for one output; `role` keeps the preview and the strip apart. */
export function frameImage(jobId, output, role, alt) {
  const key = `${role}|${jobId}|${output.name}|${output.sha256}`;
  let entry = cache.get(key);
  if (entry) {
    cache.delete(key); // most recently used goes last
  } else {
    entry = { img: h("img", { alt, decoding: "async", draggable: "false" }), url: null };
    load(entry, frameUrl(jobId, output.name), output.sha256);
  }
  cache.set(key, entry);
  evict();
  return entry.img;
}

function load(entry, url, sha) {
  if (!getToken()) {
    // The hash makes a re-rendered frame a new URL while the old one stays cached.
    entry.img.src = `${url}?v=${sha.slice(0, 12)}`;
    return;
  }
  apiBlob(url).then((blob) => {
    entry.url = URL.createObjectURL(blob);
    entry.img.src = entry.url;
  }).catch(() => entry.img.classList.add("broken"));
}

function evict() {
  while (cache.size > MAX_IMAGES) {
    const [key, entry] = cache.entries().next().value;
    cache.delete(key);
    if (entry.url) URL.revokeObjectURL(entry.url);
  }
}

export function clearImages() {
  for (const entry of cache.values()) if (entry.url) URL.revokeObjectURL(entry.url);
  cache.clear();
}
