// DOM helpers: every string goes in as text, never as HTML (job names are user input),
// plus the formatting the views share.

/** h("a", {href, class}, child, ...): children are nodes, strings (as text), arrays or null. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
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

// Elements that must survive re-renders (inputs being typed in, the log, images).
const kept = new Map();

export function persist(key, make) {
  if (!kept.has(key)) kept.set(key, make());
  return kept.get(key);
}

export function forgetPersisted() {
  kept.clear();
}

/** Swap ``root``'s content for ``tree`` without losing keyboard focus or a scrolled log. */
export function mount(root, tree) {
  const active = document.activeElement;
  const key = active && active.dataset ? active.dataset.key : null;
  const selection = active && "selectionStart" in active
    ? [active.selectionStart, active.selectionEnd] : null;
  const scrolls = [...root.querySelectorAll("[data-keep-scroll]")].map((el) => [el, el.scrollTop]);
  root.replaceChildren(tree);
  for (const [el, top] of scrolls) if (el.isConnected) el.scrollTop = top;
  let target = active && active.isConnected && active !== document.body ? active : null;
  if (!target && key) target = root.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (target && target !== document.activeElement) {
    target.focus({ preventScroll: true });
    if (selection && selection[0] !== null) {
      try { target.setSelectionRange(selection[0], selection[1]); } catch { /* not text */ }
    }
  }
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
