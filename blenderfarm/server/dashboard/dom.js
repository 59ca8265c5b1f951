// DOM helpers: every string goes in as text, never as HTML (job names are user input),
// plus the formatting the views share.

/** h("a", {href, class}, child, ...): children are nodes, strings (as text), arrays or null. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el[name] = value; // a property, so that morph() can hand it to the live element
    } else if (name === "value") {
      el.value = value;
    } else if (name === "style") {
      el.style.cssText = value; // CSSOM: allowed by the CSP, unlike a style attribute
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/**
 * Make ``root`` show ``tree`` by changing the live DOM in place (a small morphdom).
 * Redraws come several times a second; replacing elements would lose a click whose
 * button vanished between press and release, keyboard focus, text being typed, scroll
 * positions and loaded images. Children with a ``data-key`` are matched by key.
 */
export function mount(root, tree) {
  const following = [...root.querySelectorAll("[data-follow]")].filter(atEnd);
  if (root.childNodes.length === 1 && root.firstChild.nodeName === tree.nodeName) {
    morph(root.firstChild, tree);
  } else {
    root.replaceChildren(tree);
  }
  // A log or a strip of frames keeps showing its newest end, unless the reader
  // scrolled away from it; a new one starts there.
  for (const el of root.querySelectorAll("[data-follow]")) {
    if (following.includes(el) || !seen.has(el)) {
      seen.add(el);
      if (el.dataset.follow === "x") el.scrollLeft = el.scrollWidth;
      else el.scrollTop = el.scrollHeight;
    }
  }
}

const seen = new WeakSet(); // [data-follow] elements already shown once

function atEnd(el) {
  return el.dataset.follow === "x"
    ? el.scrollWidth - el.scrollLeft - el.clientWidth < 40
    : el.scrollHeight - el.scrollTop - el.clientHeight < 40;
}

const HANDLERS = ["onclick", "onsubmit", "oninput", "onchange", "onkeydown"];

function keyOf(node) {
  return node.nodeType === Node.ELEMENT_NODE ? node.getAttribute("data-key") : null;
}

function morph(old, neu) {
  if (old.nodeType !== neu.nodeType || old.nodeName !== neu.nodeName || keyOf(old) !== keyOf(neu)) {
    old.replaceWith(neu);
    return;
  }
  if (old.nodeType !== Node.ELEMENT_NODE) {
    if (old.nodeValue !== neu.nodeValue) old.nodeValue = neu.nodeValue;
    return;
  }
  syncAttributes(old, neu);
  for (const name of HANDLERS) if (old[name] !== neu[name]) old[name] = neu[name];
  if ("value" in old && old !== document.activeElement && old.value !== neu.value) {
    old.value = neu.value; // never under the user's fingers
  }
  syncChildren(old, neu);
}

function syncAttributes(old, neu) {
  for (const { name } of [...old.attributes]) {
    if (!neu.hasAttribute(name)) old.removeAttribute(name);
  }
  for (const { name, value } of [...neu.attributes]) {
    if (name === "style") {
      if (old.style.cssText !== neu.style.cssText) old.style.cssText = neu.style.cssText;
    } else if (old.getAttribute(name) !== value) {
      old.setAttribute(name, value);
    }
  }
}

function syncChildren(old, neu) {
  const byKey = new Map();
  for (const child of old.childNodes) {
    const key = keyOf(child);
    if (key) byKey.set(key, child);
  }
  const wanted = [...neu.childNodes];
  wanted.forEach((node, i) => {
    const key = keyOf(node);
    const here = old.childNodes[i] || null;
    const match = key ? byKey.get(key) : here && !keyOf(here) ? here : null;
    if (!match) {
      old.insertBefore(node, here);
      return;
    }
    if (key) byKey.delete(key);
    if (match !== here) old.insertBefore(match, here);
    morph(match, node);
  });
  while (old.childNodes.length > wanted.length) old.lastChild.remove();
}

export function progressBar(fraction, label, extraClass) {
  const pct = Math.max(0, Math.min(100, Math.round((fraction || 0) * 1000) / 10));
  return h("div", {
    class: `bar ${extraClass || ""}`, role: "progressbar", "aria-valuemin": 0,
    "aria-valuemax": 100, "aria-valuenow": pct, "aria-label": label || `${pct}%`,
  }, h("div", { class: "bar-fill", style: `width:${pct}%` }));
}

export function badge(status, title) {
  return h("span", { class: `badge s-${status}`, title }, status);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

export function ago(time, now) {
  if (!time) return "—";
  const s = (now || Date.now() / 1000) - time;
  return s < 5 ? "just now" : `${duration(s).split(" ")[0]} ago`;
}

export function clock(time) {
  return time ? new Date(time * 1000).toLocaleString() : "—";
}

/** Seconds left for a job at its rate so far, or null when there is no rate yet. */
export function eta(job, now) {
  if (job.status !== "active" || !job.started || !job.frames_done) return null;
  const rate = job.frames_done / Math.max(1, now - job.started);
  return (job.frames_total - job.frames_done) / rate;
}

export function frameRanges(frames) {
  if (!frames || !frames.length) return "";
  const parts = [];
  let start = frames[0];
  let prev = frames[0];
  for (const f of frames.slice(1).concat([null])) {
    if (f === prev + 1) { prev = f; continue; }
    parts.push(start === prev ? `${start}` : `${start}–${prev}`);
    start = prev = f;
  }
  return parts.join(", ");
}

export function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

let toastTimer = null;

/** A short message for everyone, read out by screen readers (the toast is aria-live). */
export function toast(message, kind) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `toast show ${kind || ""}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = "toast"; }, kind === "error" ? 8000 : 3000);
}
