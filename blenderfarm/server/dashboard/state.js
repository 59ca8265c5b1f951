// What the dashboard knows about the farm, and how live events change it.
// Views read `state`; anything that changes it calls `invalidate()` to redraw.

import { api, enc } from "./api.js";

export const state = {
  route: { name: "jobs" },
  jobs: new Map(),       // id -> job JSON
  nodes: new Map(),      // id -> node JSON
  progress: new Map(),   // task id -> {job_id, node, frame, fraction, time}
  stats: {},
  live: "connecting",    // connecting | live | offline
  signedIn: false,
  authRequired: false,
  maxBlobSize: null,     // bytes: the biggest file the server takes (/api/info)
  you: null,             // who the token is and what it may do (/api/info's "you")
  page: null,            // the open job page: {id, tasks, outputs, missing, selected, log}
};

export function nodeName(id) {
  const node = id && state.nodes.get(id);
  return node ? node.name : id || "";
}

let redraw = () => {};
let scheduled = null;
let lastDraw = 0;
const MIN_FRAME_MS = 250; // a busy farm sends many progress events; redraw at most 4x/s

export function onRedraw(fn) {
  redraw = fn;
}

let jobsSeen = () => {};

/** Who hears of every job view the page gets: fn(jobs, whole), whole for a full list. */
export function onJobsSeen(fn) {
  jobsSeen = fn;
}

export function invalidate(now) {
  if (now) {
    cancelAnimationFrame(scheduled);
    scheduled = null;
    lastDraw = performance.now();
    redraw();
    return;
  }
  if (scheduled) return;
  const wait = Math.max(0, MIN_FRAME_MS - (performance.now() - lastDraw));
  scheduled = setTimeout(() => requestAnimationFrame(() => {
    scheduled = null;
    lastDraw = performance.now();
    redraw();
  }), wait);
}

const timers = new Map();

/** Run fn once, `ms` after the last call with this key (several events, one fetch). */
export function debounce(key, ms, fn) {
  clearTimeout(timers.get(key));
  timers.set(key, setTimeout(() => { timers.delete(key); fn(); }, ms));
}

export async function loadAll() {
  const [jobs, nodes] = await Promise.all([api("/api/jobs"), api("/api/nodes")]);
  state.jobs = new Map(jobs.jobs.map((j) => [j.id, j]));
  state.nodes = new Map(nodes.nodes.map((n) => [n.id, n]));
  jobsSeen(jobs.jobs, true);
  for (const [tid, p] of state.progress) {
    if (!state.jobs.has(p.job_id)) state.progress.delete(tid);
  }
  if (state.page) await loadPage(state.page.id);
}

export async function loadPage(jobId) {
  const page = state.page && state.page.id === jobId ? state.page : newPage(jobId);
  state.page = page;
  try {
    const [job, tasks, outputs] = await Promise.all([
      api(`/api/jobs/${enc(jobId)}`), api(`/api/jobs/${enc(jobId)}/tasks`),
      api(`/api/jobs/${enc(jobId)}/outputs`)]);
    state.jobs.set(jobId, job.job);
    page.tasks = tasks.tasks;  // the first page: a job of 100,000 tasks is not sent whole
    page.tasksTotal = tasks.total;
    page.outputs = outputs.outputs;
    page.missing = false;
  } catch (exc) {
    if (exc.status === 404) page.missing = true;
    else throw exc;
  }
  invalidate();
}

function newPage(id) {
  return { id, tasks: null, outputs: [], missing: false, selected: null, pinned: false,
    log: null, preview: null };
}

async function refreshJob(id) {
  try {
    state.jobs.set(id, (await api(`/api/jobs/${enc(id)}`)).job);
    invalidate();
  } catch { /* deleted meanwhile: its own event says so */ }
}

async function refreshPart(part) {
  const page = state.page;
  if (!page) return;
  const data = await api(`/api/jobs/${enc(page.id)}/${part}`).catch(() => null);
  if (data && state.page === page) {
    page[part] = data[part];
    if (part === "tasks") page.tasksTotal = data.total;
    invalidate();
  }
}

const FINAL = ["completed", "failed", "canceled"];

/** Progress of a finished job's tasks means nothing any more; a long session adds up. */
function forgetProgress(jobId) {
  for (const [tid, p] of state.progress) if (p.job_id === jobId) state.progress.delete(tid);
}

/** Apply one event from /ws/events. */
export function applyEvent(ev) {
  const page = state.page;
  switch (ev.type) {
    case "job": {
      // A busy job's events leave out which nodes can run it (it would cost the server a
      // look at every node per finished task): the page keeps the list it fetched.
      const old = state.jobs.get(ev.job.id);
      if (!("nodes" in ev.job) && old && old.nodes && !FINAL.includes(ev.job.status)) {
        ev.job.nodes = old.nodes;
      }
      state.jobs.set(ev.job.id, ev.job);
      jobsSeen([ev.job], false);
      if (FINAL.includes(ev.job.status)) forgetProgress(ev.job.id);
      if (page && page.id === ev.job.id) debounce("tasks", 300, () => refreshPart("tasks"));
      break;
    }
    case "job_deleted":
      state.jobs.delete(ev.job_id);
      forgetProgress(ev.job_id);
      if (page && page.id === ev.job_id) page.missing = true;
      break;
    case "node": {
      const before = state.nodes.get(ev.node.id);
      state.nodes.set(ev.node.id, ev.node);
      // a node came, went, was drained or disabled: where the open job can run changed
      const moved = !before || ["online", "drained", "disabled"].some((k) => before[k] !== ev.node[k]);
      if (page && moved) {
        const id = page.id;
        debounce("job", 500, () => refreshJob(id));
      }
      break;
    }
    case "node_deleted":
      state.nodes.delete(ev.node_id);
      break;
    case "progress":
      state.progress.set(ev.task_id, ev);
      break;
    case "frame":
      // frames_done changes without a job event until the task ends: fetch it, once.
      debounce(`job:${ev.job_id}`, 400, () => refreshJob(ev.job_id));
      if (page && page.id === ev.job_id) debounce("outputs", 300, () => refreshPart("outputs"));
      break;
    case "stats":
      state.stats = ev;
      break;
    default:
      return;
  }
  invalidate();
}

/** Whether the signed-in token may change this job (its owner's, or an admin's). */
export function mayControl(job) {
  const you = state.you;
  return !you || you.may.control_all_jobs || job.owner === you.name;
}

/** Whether the signed-in token may drain, disable and enable nodes (admins). */
export function mayControlNodes() {
  return !state.you || state.you.may.control_nodes;
}
