// #/jobs: every job, newest first, with its progress, ETA, priority and age.

import { enc } from "./api.js";
import { ago, badge, duration, eta, h, progressBar } from "./dom.js";
import { state } from "./state.js";

export function jobsView() {
  const now = Date.now() / 1000;
  const jobs = [...state.jobs.values()].sort((a, b) => b.created - a.created);
  const rows = jobs.map((job) => jobRow(job, now));
  return h("section", { class: "panel", "aria-labelledby": "jobs-title", "data-key": "view-jobs" },
    h("div", { class: "panel-head" },
      h("h1", { id: "jobs-title" }, "Jobs"),
      h("span", { class: "muted" }, summary(jobs))),
    jobs.length ? table(rows) : emptyHint());
}

function summary(jobs) {
  const active = jobs.filter((j) => j.status === "active").length;
  const queued = jobs.filter((j) => j.status === "queued").length;
  return `${jobs.length} job${jobs.length === 1 ? "" : "s"} · ${active} active · ${queued} queued`;
}

function table(rows) {
  return h("div", { class: "table-wrap" },
    h("table", { class: "grid-table jobs" },
      h("thead", null, h("tr", null,
        h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col", class: "wide" }, "Progress"), h("th", { scope: "col" }, "ETA"),
        h("th", { scope: "col", class: "num" }, "Priority"), h("th", { scope: "col" }, "Age"))),
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

function emptyHint() {
  return h("div", { class: "empty" },
    h("p", null, "No jobs yet."),
    h("p", { class: "muted" }, "Submit one with ",
      h("code", null, "bf submit shot.blend --frames 1-250"),
      " or the Render on Farm panel in Blender."));
}
