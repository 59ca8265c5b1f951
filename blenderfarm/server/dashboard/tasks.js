// The job page's lower half: the frame grid, the task table and the live log viewer.

import { api, enc } from "./api.js";
import { duration, frameRanges, h, progressBar } from "./dom.js";
import { invalidate, nodeName, state } from "./state.js";

const HELD = ["assigned", "running"];
const LOG_POLL_MS = 2000;


/** Each frame's status: its task's, or done as soon as its file arrived. */
function frameStates(page) {
  const done = new Set(page.outputs.map((o) => o.frame));
  const frames = [];
  for (const task of page.tasks) {
    const p = state.progress.get(task.id);
    for (const f of task.frames) {
      const status = done.has(f) ? "done" : task.status;
      const current = HELD.includes(status) && p && p.frame === f;
      frames.push({ frame: f, status, task, current });
    }
  }
  return frames.sort((a, b) => a.frame - b.frame);
}

export function frameGrid(job, page) {
  const frames = frameStates(page);
  const counts = {};
  for (const f of frames) counts[f.status] = (counts[f.status] || 0) + 1;
  const legend = Object.entries(counts).map(([s, n]) =>
    h("span", { class: `legend s-${s}` }, h("i", { "aria-hidden": "true" }), `${n} ${s}`));
  const cells = frames.map((f) => h("div", {
    class: `cell s-${f.status}${f.current ? " current" : ""}${page.selected === f.task.id ? " sel" : ""}`,
    title: `Frame ${f.frame}: ${f.status}${f.task.node ? ` on ${nodeName(f.task.node)}` : ""}`,
    onclick: () => selectTask(page, f.task.id),
  }));
  return h("section", { class: "panel", "aria-labelledby": "grid-title" },
    h("div", { class: "panel-head" }, h("h2", { id: "grid-title" }, "Frames"),
      h("div", { class: "legend-row" }, legend)),
    h("div", { class: "frame-grid", role: "img",
      "aria-label": `Frames: ${Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ")}` },
    cells));
}

function taskTime(task, now) {
  if (!task.started) return "—";
  return duration((task.finished || now) - task.started);
}

/** What a task does: frames, one tile of a frame, a frame's merge, the video. */
function taskWhat(task) {
  if (task.kind === "encode") return "video";
  if (task.kind === "merge") return `merge ${frameRanges(task.frames)}`;
  if (task.tile !== null && task.tile !== undefined) {
    return `${frameRanges(task.frames)} · tile ${task.tile + 1}`;
  }
  return frameRanges(task.frames);
}

function taskRow(task, page, now) {
  const p = state.progress.get(task.id);
  const running = HELD.includes(task.status);
  const fraction = running ? (p ? p.fraction : task.progress) : null;
  return h("tr", { class: `s-${task.status}${page.selected === task.id ? " sel" : ""}`,
    "data-task-id": task.id, "data-key": `task-${task.id}` },
  h("td", { class: "num" }, String(task.index + 1)),
  h("td", null, taskWhat(task)),
  h("td", null, task.waiting && task.status === "queued"
    ? h("span", { class: "badge s-queued", title: "waits for the tasks it depends on" }, "waiting")
    : h("span", { class: `badge s-${task.status}` }, task.status)),
  h("td", null, nodeName(task.node)),
  h("td", { class: "time" }, running
    ? h("div", { class: "progress-cell" }, progressBar(fraction, `task ${task.index + 1}`, "slim"),
      h("span", null, taskTime(task, now)))
    : taskTime(task, now)),
  h("td", { class: "num" }, String(task.attempts), task.failures
    ? h("span", { class: "fail-count", title: "failures" }, ` (${task.failures}✗)`) : null),
  h("td", { class: "err", title: task.error || undefined }, task.error || ""),
  h("td", null, h("button", { type: "button", class: "btn small",
    "aria-pressed": String(page.selected === task.id),
    onclick: () => selectTask(page, task.id) }, "Log")));
}

export function taskTable(job, page) {
  const now = Date.now() / 1000;
  autoSelect(page);
  return h("section", { class: "panel tasks", "aria-labelledby": "tasks-title" },
    h("div", { class: "panel-head" }, h("h2", { id: "tasks-title" }, "Tasks"),
      h("span", { class: "muted" }, page.tasksTotal > page.tasks.length
        ? `first ${page.tasks.length} of ${page.tasksTotal}` : `${page.tasks.length}`)),
    h("div", { class: "table-wrap scroll" },
      h("table", { class: "grid-table" },
        h("thead", null, h("tr", null, ["#", "Frames", "Status", "Node", "Time", "Attempts",
          "Error", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", null, page.tasks.map((t) => taskRow(t, page, now))))));
}

/** Until the user picks a task, the log follows the newest task that is rendering. */
function autoSelect(page) {
  if (page.pinned) return;
  const shown = page.tasks.find((t) => t.id === page.selected);
  if (shown && shown.status === "running") return;
  const rendering = page.tasks.filter((t) => t.status === "running")
    .sort((a, b) => (b.started || 0) - (a.started || 0))[0];
  const next = rendering || (shown ? null : page.tasks.find((t) => HELD.includes(t.status)));
  if (next && next.id !== page.selected) selectTask(page, next.id, true);
}

export function selectTask(page, taskId, auto) {
  if (!auto) page.pinned = true; // a task the user chose stays chosen
  if (page.selected === taskId && page.log) return;
  page.selected = taskId;
  page.log = { taskId, text: null, status: null };
  pollLog(page, page.log);
  if (!auto) invalidate(true);
}

async function pollLog(page, log) {
  if (state.page !== page || page.log !== log) return; // left the page or chose another
  try {
    const data = await api(`/api/tasks/${enc(log.taskId)}/log`);
    log.text = data.text || "";
    log.status = data.status || null;
  } catch (exc) {
    log.text = log.text || `(no log: ${exc.message})`;
  }
  invalidate(true);
  const task = page.tasks && page.tasks.find((t) => t.id === log.taskId);
  if (HELD.includes(log.status) || (task && HELD.includes(task.status))) {
    setTimeout(() => pollLog(page, log), LOG_POLL_MS);
  }
}

function logText(page, task) {
  if (!task) return "Choose a task (its Log button, or a frame) to see its log.";
  const log = page.log;
  if (!log || log.taskId !== task.id || log.text === null) return "Loading…";
  return log.text || "(the log is empty so far)";
}

export function logPanel(page) {
  const task = page.selected && page.tasks.find((t) => t.id === page.selected);
  const title = task ? `Log · task ${task.index + 1} (frames ${frameRanges(task.frames)})` : "Log";
  return h("section", { class: "panel log-panel", "aria-labelledby": "log-title" },
    h("div", { class: "panel-head" }, h("h2", { id: "log-title" }, title),
      task && HELD.includes(task.status) ? h("span", { class: "live-dot" }, "live") : null),
    h("pre", { class: "log", tabindex: "0", "aria-label": "Task log", "data-follow": "y",
      "data-key": `log-${page.selected}` }, logText(page, task)));
}
