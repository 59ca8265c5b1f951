// #/jobs/<id>: one job: progress, actions, the latest frame and a strip of finished
// ones, the frame grid, its tasks and a live log (the last three in tasks.js).

import { api, apiBlob, enc, getToken } from "./api.js";
import { badge, clock, duration, eta, h, progressBar, toast } from "./dom.js";
import { frameImage, frameVideo } from "./images.js";
import { tileMosaic, tilingFrame } from "./mosaic.js";
import { invalidate, mayControl, nodeName, state } from "./state.js";
import { frameGrid, logPanel, taskTable } from "./tasks.js";

const STRIP_MAX = 48; // finished frames shown in the strip (the newest)

export function jobView() {
  const page = state.page;
  const job = page && state.jobs.get(page.id);
  if (!page || page.missing) return notFound(page ? page.id : "");
  if (!job || page.tasks === null) return h("p", { class: "muted loading" }, "Loading job…");
  const now = Date.now() / 1000;
  return h("article", { class: "job-page", "data-job-id": job.id, "data-key": `view-job-${job.id}` },
    header(job),
    summary(job, page.tasks, now),
    h("div", { class: "job-columns" },
      previewPanel(job, page),
      detailsPanel(job, page.tasks)),
    videoPanel(job, page),
    stripPanel(job, page),
    frameGrid(job, page),
    h("div", { class: "job-columns bottom" }, taskTable(job, page), logPanel(page)));
}

function notFound(id) {
  return h("section", { class: "panel empty" },
    h("h1", null, "Job not found"),
    h("p", null, `There is no job ${id} (any more).`),
    h("p", null, h("a", { href: "#/jobs" }, "Back to all jobs")));
}

function header(job) {
  return h("div", { class: "job-head" },
    h("a", { href: "#/jobs", class: "back", "aria-label": "Back to all jobs" }, "← Jobs"),
    h("h1", { id: "job-title" }, job.name || job.id),
    badge(job.status, job.error || undefined),
    h("div", { class: "actions", role: "group", "aria-label": "Job actions" }, actions(job)));
}

function button(label, key, onclick, opts) {
  const o = opts || {};
  return h("button", { type: "button", class: `btn ${o.cls || ""}`, "data-action": key,
    disabled: o.disabled, title: o.title, onclick }, label);
}

function actions(job) {
  const final = ["completed", "failed", "canceled"].includes(job.status);
  const post = (path, body, done) => run(() => api(`/api/jobs/${enc(job.id)}/${path}`,
    { method: "POST", body: body || {} }), done);
  const zip = button("Download zip", "act-zip", () => downloadZip(job),
    { disabled: !job.frames_done });
  if (!mayControl(job)) {  // the server would refuse: say why instead of offering them
    return [h("span", { class: "muted", "data-role": "read-only" },
      `${job.owner || "Another user"}'s job: only its owner or an admin may change it`), zip];
  }
  return [
    job.status === "paused"
      ? button("Resume", "act-resume", () => post("resume", null, "Resumed"))
      : button("Pause", "act-pause", () => post("pause", null, "Paused: running tasks finish"),
        { disabled: final }),
    button("Cancel", "act-cancel", () => confirm(`Cancel job “${job.name}”? Running renders stop.`)
      && post("cancel", null, "Canceled"), { disabled: final, cls: "warn" }),
    button("Requeue failed", "act-requeue", () => post("requeue", { which: "failed" }, "Requeued"),
      { disabled: !(job.tasks_failed || ["failed", "canceled"].includes(job.status)) }),
    priorityForm(job),
    zip,
    button("Delete", "act-delete", () => deleteJob(job), { cls: "danger" }),
  ];
}

async function run(call, done) {
  try {
    const data = await call();
    if (data && data.job) state.jobs.set(data.job.id, data.job);
    if (done) toast(done);
    invalidate(true);
  } catch (exc) {
    toast(exc.message, "error");
  }
}

function priorityForm(job) {
  // morph() leaves the value alone while the field has focus, so typing is not undone.
  const input = h("input", { type: "number", min: 0, max: 100, step: 1, value: job.priority,
    id: "priority", class: "prio-input" });
  const submit = (e) => {
    e.preventDefault();
    const priority = Number(e.target.elements.priority.value);
    run(() => api(`/api/jobs/${enc(job.id)}/priority`, { method: "POST", body: { priority } }),
      `Priority set to ${priority}`);
  };
  return h("form", { class: "prio", onsubmit: submit },
    h("label", { for: "priority" }, "Priority"), input,
    h("button", { type: "submit", class: "btn" }, "Set"));
}

async function deleteJob(job) {
  if (!confirm(`Delete job “${job.name}” and all its frames? This cannot be undone.`)) return;
  try {
    await api(`/api/jobs/${enc(job.id)}`, { method: "DELETE" });
    state.jobs.delete(job.id);
    toast(`Deleted ${job.name}`);
    location.hash = "#/jobs";
  } catch (exc) {
    toast(exc.message, "error");
  }
}

async function downloadZip(job) {
  const url = `/api/jobs/${enc(job.id)}/outputs.zip`;
  const a = h("a", { href: url, download: `${job.output_name}.zip`, hidden: true });
  if (getToken()) {
    // A link cannot carry the token: fetch with it and hand the browser the bytes.
    toast("Preparing the zip…");
    try {
      a.href = URL.createObjectURL(await apiBlob(url));
    } catch (exc) {
      toast(exc.message, "error");
      return;
    }
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  }
  document.body.appendChild(a);
  a.click();
  a.remove();
}

function count(tasks, status) {
  return tasks.filter((t) => t.status === status).length;
}

// The farm's own figures, which count the parts of frames being rendered: from the
// newest of the job's view and its progress events, the ETA aged since then.
function pace(job, now) {
  let best = null;
  for (const p of state.progress.values()) {
    if (p.job_id === job.id && "eta" in p && (p.time || 0) > (job.updated || 0)
        && (!best || p.time > best.time)) best = p;
  }
  const [fraction, left, at] = best ? [best.job_progress, best.eta, best.time]
    : [job.progress, job.eta, job.updated];
  if (!("eta" in (best || job))) {  // an older server: whole frames, our own estimate
    return [job.frames_total ? job.frames_done / job.frames_total : 0, eta(job, now)];
  }
  const aged = left === null || job.status !== "active" ? null
    : Math.max(0, left - Math.max(0, now - (at || now)));
  return [fraction || 0, aged];
}

function summary(job, tasks, now) {
  const [fraction, left] = pace(job, now);
  return h("div", { class: "job-summary" },
    progressBar(fraction, `${job.frames_done} of ${job.frames_total} frames`,
      `big s-${job.status}`),
    h("div", { class: "summary-line" },
      h("strong", { class: "frames-count" }, `${job.frames_done} / ${job.frames_total} frames`),
      ` · ${count(tasks, "running")} rendering · ${count(tasks, "assigned")} assigned`,
      ` · ${job.tasks_queued} queued · ${job.tasks_failed} failed`,
      job.tiles_total ? ` · ${job.tiles_done} / ${job.tiles_total} tiles` : "",
      job.video ? ` · video ${job.encode === "done" ? "ready" : job.encode}` : "",
      left === null ? "" : ` · ETA ${duration(left)}`),
    job.error ? h("p", { class: "job-error", role: "alert" }, job.error) : null);
}

function latest(outputs) {
  let best = null;
  for (const o of outputs) {
    if (!best || (o.created || 0) > (best.created || 0)) best = o;
  }
  return best;
}

/** The job's frames among its outputs (not its video). */
function frames(job, page) {
  return job.video_output ? page.outputs.filter((o) => o.name !== job.video_output)
    : page.outputs;
}

/** The video of the finished shot, played on the page (a job that asked for one). */
function videoPanel(job, page) {
  if (!job.video) return null;
  const out = job.video_output && page.outputs.find((o) => o.name === job.video_output);
  return h("section", { class: "panel video-panel", "aria-label": "Video" },
    h("div", { class: "panel-head" }, h("h2", null, "Video"),
      out ? h("a", { class: "muted", href: `/api/jobs/${enc(job.id)}/outputs/${enc(out.name)}`,
        download: out.name }, out.name) : null),
    out ? frameVideo(job.id, out)
      : h("p", { class: "muted", "data-role": "video-state" },
        job.encode === "running" ? "Encoding…" : job.encode === "failed"
          ? "The video failed (see the job's error)." : "Made once every frame is done."));
}

function previewPanel(job, page) {
  const outputs = frames(job, page);
  const pinned = page.preview && outputs.find((o) => o.name === page.preview);
  const tiling = !pinned && job.tiles_total ? tilingFrame(page.tasks) : null;
  if (tiling) {  // a frame filling in, tile by tile, until its merge is done
    return h("section", { class: "panel preview", "aria-label": "Preview" },
      h("div", { class: "panel-head" },
        h("h2", null, `Frame ${tiling.frame}`),
        h("span", { class: "muted", "data-role": "tiles-shown" },
          `${tiling.shown.length} of ${tiling.tiles.length} tiles`)),
      h("div", { class: "preview-box" }, tileMosaic(tiling, `Frame ${tiling.frame} of ${job.name}`)));
  }
  const out = pinned || latest(outputs);
  return h("section", { class: "panel preview", "aria-label": "Preview" },
    h("div", { class: "panel-head" },
      h("h2", null, pinned ? `Frame ${out.frame}` : "Latest frame"),
      out ? h("span", { class: "muted" }, out.name) : null,
      pinned ? h("button", { type: "button", class: "btn small",
        onclick: () => { page.preview = null; invalidate(true); } }, "Follow latest") : null),
    out
      ? h("div", { class: "preview-box" },
        frameImage(job.id, out, `Frame ${out.frame} of ${job.name}`))
      : h("div", { class: "preview-box empty-frame" }, "No finished frame yet"));
}

/** "render-01 7, render-02 5": the job's tiles done, by the node that rendered them
 *  (of the tasks on the page), busiest first. */
function tilesByNode(tasks) {
  const counts = new Map();
  for (const t of tasks) {
    if (t.tile !== null && t.tile !== undefined && t.status === "done" && t.node) {
      counts.set(t.node, (counts.get(t.node) || 0) + 1);
    }
  }
  return [...counts].sort((a, b) => b[1] - a[1] || nodeName(a[0]).localeCompare(nodeName(b[0])))
    .map(([id, n]) => `${nodeName(id)} ${n}`).join(", ");
}

function detailsPanel(job, tasks) {
  const o = job.overrides || {};
  const overrides = Object.entries(o).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${v}`).join(", ") || "none";
  const blocked = (job.blocklisted_nodes || []).map((id) => nodeName(id));
  const rows = [
    ["Frames", job.tiles_total ? `${job.frames} in ${job.tiles} tiles each: ` +
      `${job.tiles_done} of ${job.tiles_total} tiles rendered, ${job.merges_done} ` +
      "frames merged" : `${job.frames} (chunk ${job.chunk})`], ["File", job.blend],
    ["Scene", job.scene || "(the file's)"], ["Overrides", overrides],
    // the file part of the scene's output path, its frames named as Blender names them
    ["Output", job.output_pattern || "(none: Blender's 0001, 0002, ...)"],
    ["Files", String(job.files ?? "—")],
    ["Created", clock(job.created)], ["Started", clock(job.started)],
    ["Finished", clock(job.finished)], ["Job id", job.id],
  ];
  for (const note of job.notes || []) rows.push(["Note", note]);  // e.g. a movie's frames as PNG
  if (blocked.length) rows.push(["Blocklisted", blocked.join(", ")]);
  if (job.needs_oidn) rows.push(["Denoise", "needs a node with OpenImageDenoise"]);
  if (job.needs_opengl) rows.push(["OpenGL", "needs a node that can render Eevee and Workbench"]);
  if ((job.tags || []).length) rows.push(["Tags", `needs a node with ${job.tags.join(", ")}`]);
  const byNode = job.tiles_total ? tilesByNode(tasks) : "";
  if (byNode) rows.push(["Tiles by node", byNode]);
  if (job.nodes) rows.push(["Can run on", canRunOn(job.nodes)]);
  // why no node takes it (the server's waiting_reason), first: it is what to act on
  if (job.waiting) rows.unshift(["Waiting", job.waiting]);
  return h("section", { class: "panel details", "aria-label": "Details" },
    h("dl", null, rows.map(([k, v]) => [h("dt", null, k), h("dd", null, v)])));
}

/** Which online nodes can take the job and why the others cannot (the server's checks). */
function canRunOn(nodes) {
  if (!nodes.length) return "no node is online";
  return h("ul", { class: "can-run" }, nodes.map((n) =>
    h("li", { class: n.can ? "can" : "cannot", "data-node-id": n.id },
      n.can ? n.name : `not ${n.name}`, n.why ? h("span", { class: "muted" }, ` (${n.why})`) : null)));
}

function stripPanel(job, page) {
  const outs = [...frames(job, page)].sort((a, b) => a.frame - b.frame || (a.name < b.name ? -1 : 1));
  const shown = outs.slice(-STRIP_MAX);
  const current = page.preview;
  return h("section", { class: "panel strip-panel", "aria-label": "Finished frames" },
    h("div", { class: "panel-head" },
      h("h2", null, "Finished frames"),
      h("span", { class: "muted" }, outs.length > shown.length
        ? `the last ${shown.length} of ${outs.length}` : `${outs.length}`)),
    h("div", { class: "strip", role: "list", "data-follow": "x" }, shown.map((o) =>
      h("button", { type: "button", role: "listitem", class: `thumb${o.name === current ? " on" : ""}`,
        "data-key": `thumb-${o.name}`, title: o.name, "aria-label": `Show frame ${o.frame}`,
        onclick: () => { page.preview = o.name; invalidate(true); } },
      frameImage(job.id, o, ""), h("span", null, String(o.frame))))));
}
