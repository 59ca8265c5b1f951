// #/jobs: every job with its owner, progress, ETA, priority and age; filters by status and
// owner, a search by name, and columns sorted by a click on their header. How the list is
// filtered and sorted is kept in localStorage, so a reload (or the next visit) shows it
// the same way; a filtered list always says how many jobs it hides.

import { enc } from "./api.js";
import { ago, badge, duration, eta, h, progressBar } from "./dom.js";
import { invalidate, state } from "./state.js";

const VIEW_KEY = "blenderfarm.jobs.view";
const STATUSES = ["active", "queued", "paused", "completed", "failed", "canceled"];
const DEFAULT_VIEW = { sort: "age", dir: "asc", status: "", owner: "", q: "" };

/** The columns that sort: how to get a row's key, and the way a first click sorts. */
const SORTS = {
  name: { label: "Name", key: (j) => (j.name || j.id).toLowerCase(), first: "asc" },
  owner: { label: "Owner", key: (j) => (j.owner || "").toLowerCase(), first: "asc" },
  status: { label: "Status", key: (j) => STATUSES.indexOf(j.status), first: "asc" },
  progress: { label: "Progress", key: (j) => (j.frames_total ? j.frames_done / j.frames_total : 0),
    first: "desc", cls: "wide" },
  eta: { label: "ETA", key: (j, now) => eta(j, now), first: "asc" },
  priority: { label: "Priority", key: (j) => j.priority, first: "desc", cls: "num" },
  age: { label: "Age", key: (j) => -j.created, first: "asc" },
};

let view = loadView();

function loadView() {
  try {
    const saved = JSON.parse(localStorage.getItem(VIEW_KEY) || "{}");
    const v = { ...DEFAULT_VIEW };
    for (const k of Object.keys(v)) if (typeof saved[k] === "string") v[k] = saved[k];
    if (!SORTS[v.sort]) v.sort = DEFAULT_VIEW.sort;
    if (v.dir !== "desc") v.dir = "asc";
    return v;
  } catch {
    return { ...DEFAULT_VIEW }; // storage refused or damaged: the plain list
  }
}

function setView(change) {
  view = { ...view, ...change };
  try {
    localStorage.setItem(VIEW_KEY, JSON.stringify(view));
  } catch { /* private mode: it is kept for this page only */ }
  invalidate(true);
}

function filtered(jobs) {
  const q = view.q.trim().toLowerCase();
  return jobs.filter((j) => (!view.status || j.status === view.status)
    && (!view.owner || (j.owner || "") === view.owner)
    && (!q || (j.name || j.id).toLowerCase().includes(q)));
}

function sorted(jobs, now) {
  const { key } = SORTS[view.sort];
  const sign = view.dir === "desc" ? -1 : 1;
  const keyed = jobs.map((j) => [key(j, now), j]);
  keyed.sort(([a, ja], [b, jb]) => {
    // Unknown keys (no ETA yet) go last either way; ties fall back to newest first.
    if (a === null || a === undefined) return b === null || b === undefined ? jb.created - ja.created : 1;
    if (b === null || b === undefined) return -1;
    const c = typeof a === "string" ? a.localeCompare(b) : a - b;
    return c ? sign * c : jb.created - ja.created;
  });
  return keyed.map(([, j]) => j);
}

export function jobsView() {
  const now = Date.now() / 1000;
  const all = [...state.jobs.values()];
  const jobs = sorted(filtered(all), now);
  const rows = jobs.map((job) => jobRow(job, now));
  return h("section", { class: "panel", "aria-labelledby": "jobs-title", "data-key": "view-jobs" },
    h("div", { class: "panel-head" },
      h("h1", { id: "jobs-title" }, "Jobs"),
      h("span", { class: "muted", "data-role": "jobs-summary" }, summary(all, jobs))),
    all.length ? filters(all) : null,
    jobs.length ? table(rows) : all.length ? noMatch() : emptyHint());
}

function summary(all, shown) {
  const count = (n, what) => `${n} ${what}${n === 1 ? "" : "s"}`;
  const active = all.filter((j) => j.status === "active").length;
  const queued = all.filter((j) => j.status === "queued").length;
  const text = `${count(all.length, "job")}: ${active} active, ${queued} queued`;
  return shown.length === all.length ? text : `showing ${shown.length} of ${text}`;
}

function filters(all) {
  const owners = [...new Set(all.map((j) => j.owner || "").concat(view.owner ? [view.owner] : []))]
    .filter(Boolean).sort((a, b) => a.localeCompare(b));
  const option = (value, label, current) => h("option", { value, selected: value === current }, label);
  const active = view.status || view.owner || view.q;
  return h("div", { class: "filters", role: "search", "data-key": "job-filters" },
    h("input", { type: "search", id: "job-search", placeholder: "Search by name",
      "aria-label": "Search jobs by name", value: view.q, autocomplete: "off",
      oninput: (e) => setView({ q: e.target.value }) }),
    h("select", { id: "job-status", "aria-label": "Status",
      onchange: (e) => setView({ status: e.target.value }) },
    option("", "every status", view.status), STATUSES.map((s) => option(s, s, view.status))),
    h("select", { id: "job-owner", "aria-label": "Owner",
      onchange: (e) => setView({ owner: e.target.value }) },
    option("", "every owner", view.owner), owners.map((o) => option(o, o, view.owner))),
    active ? h("button", { type: "button", class: "btn small", "data-action": "clear-filters",
      onclick: () => setView({ status: "", owner: "", q: "" }) }, "Clear filters") : null);
}

function header(name) {
  const col = SORTS[name];
  const on = view.sort === name;
  const flip = () => setView(on ? { dir: view.dir === "asc" ? "desc" : "asc" }
    : { sort: name, dir: col.first });
  return h("th", { scope: "col", class: col.cls, "data-sort": name,
    "aria-sort": on ? (view.dir === "asc" ? "ascending" : "descending") : null },
  h("button", { type: "button", class: "sort", onclick: flip,
    title: `sort by ${col.label.toLowerCase()}` }, col.label,
  h("span", { class: "arrow", "aria-hidden": "true" }, on ? (view.dir === "asc" ? " ▲" : " ▼") : "")));
}

function table(rows) {
  return h("div", { class: "table-wrap" },
    h("table", { class: "grid-table jobs" },
      h("thead", null, h("tr", null, Object.keys(SORTS).map(header))),
      h("tbody", null, rows)));
}

function jobRow(job, now) {
  const href = `#/jobs/${enc(job.id)}`;
  const done = job.frames_total ? job.frames_done / job.frames_total : 0;
  const label = `${job.frames_done} of ${job.frames_total} frames`;
  const title = job.error || undefined;
  return h("tr", { "data-job-id": job.id, "data-key": `job-${job.id}`, class: `row s-${job.status}`,
    onclick: (e) => { if (!e.target.closest("a,button")) location.hash = href; } },
  h("td", { class: "name" },
    h("a", { href }, job.name || job.id),
    h("div", { class: "sub" }, job.blend, job.scene ? ` · ${job.scene}` : "")),
  h("td", { class: "owner" }, job.owner || h("span", { class: "muted" }, "—")),
  h("td", null, badge(job.status, title)),
  h("td", { class: "wide" },
    h("div", { class: "progress-cell" },
      progressBar(done, `${job.name}: ${label}`, `s-${job.status}`),
      h("span", { class: "frames-count" }, `${job.frames_done}/${job.frames_total}`),
      job.tasks_failed ? h("span", { class: "fail-count", title: "failed tasks" },
        `${job.tasks_failed} failed`) : null)),
  h("td", { class: "eta" }, etaText(job, now)),
  h("td", { class: "num" }, String(job.priority)),
  h("td", { title: new Date(job.created * 1000).toLocaleString() }, ago(job.created, now)));
}

function etaText(job, now) {
  if (job.status === "completed" && job.started && job.finished) {
    return `took ${duration(job.finished - job.started)}`;
  }
  const left = eta(job, now);
  return left === null ? "—" : duration(left);
}

function noMatch() {
  return h("div", { class: "empty" },
    h("p", null, "No job matches these filters."),
    h("button", { type: "button", class: "btn small",
      onclick: () => setView({ status: "", owner: "", q: "" }) }, "Clear filters"));
}

function emptyHint() {
  return h("div", { class: "empty" },
    h("p", null, "No jobs yet."),
    h("p", { class: "muted" }, "Submit one with ",
      h("code", null, "bf submit shot.blend --frames 1-250"),
      " or the Render on Farm panel in Blender."));
}
