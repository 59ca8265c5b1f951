// #/nodes: every node the farm knows, what it renders now, and drain / enable.
// Node events arrive as a node's task, frame and progress change (a few a second at most)
// and as heartbeats keep its "last seen" fresh, so the page moves without polling.

import { api, enc } from "./api.js";
import { ago, badge, h, progressBar, toast } from "./dom.js";
import { invalidate, mayControlNodes, state } from "./state.js";

export function nodesView() {
  const now = Date.now() / 1000;
  const nodes = [...state.nodes.values()].sort((a, b) =>
    (b.online - a.online) || a.name.localeCompare(b.name));
  const online = nodes.filter((n) => n.online).length;
  const rendering = nodes.filter((n) => n.online && n.current).length;
  return h("section", { class: "panel", "aria-labelledby": "nodes-title", "data-key": "view-nodes" },
    h("div", { class: "panel-head" }, h("h1", { id: "nodes-title" }, "Nodes"),
      h("span", { class: "muted", "data-role": "nodes-summary" },
        `${online} of ${nodes.length} node${nodes.length === 1 ? "" : "s"} online · `
        + `${rendering} rendering`)),
    nodes.length ? table(nodes.map((n) => nodeRow(n, now))) : h("div", { class: "empty" },
      h("p", null, "No node has connected yet."),
      h("p", { class: "muted" }, "Start one with ",
        h("code", null, "bf-node --server " + location.origin), ".")));
}

function table(rows) {
  const cols = ["Name", "State", "Current task", "Slots", "Blenders", "Devices", "Threads",
    "Denoise", "Last seen", "Frames", ""];
  return h("div", { class: "table-wrap" },
    h("table", { class: "grid-table nodes" },
      h("thead", null, h("tr", null, cols.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", null, rows)));
}

/** Jobs (not finished) that will not send this node any more tasks. */
function blocklistedIn(node) {
  return [...state.jobs.values()].filter((j) => (j.blocklisted_nodes || []).includes(node.id)
    && !["completed", "canceled"].includes(j.status));
}

function nodeRow(node, now) {
  const blocked = blocklistedIn(node);
  return h("tr", { "data-node-id": node.id, "data-key": `node-${node.id}`, class: `s-${node.state}` },
    h("td", { class: "name" }, node.name,
      node.tags && node.tags.length ? h("div", { class: "sub" }, node.tags.join(", ")) : null),
    h("td", null, badge(node.state === "drained" && (node.tasks || []).length ? "draining" : node.state),
      blocked.length ? h("span", { class: "badge s-blocklisted",
        title: `blocklisted for ${blocked.map((j) => j.name).join(", ")}` },
      `blocklisted ×${blocked.length}`) : null),
    h("td", { class: "wide" }, currentTask(node)),
    h("td", { class: "slots" }, slots(node)),
    h("td", { class: "blenders" }, blenders(node)),
    h("td", { class: "devices" }, devices(node)),
    h("td", { class: "num" }, node.threads ?? "—"),
    h("td", null, blenderList(node).some((b) => b.oidn) ? "yes" : "no"),
    h("td", { class: "seen", title: new Date(node.last_seen * 1000).toLocaleString() },
      node.online ? (now - node.last_seen < 15 ? "now" : ago(node.last_seen, now))
        : ago(node.last_seen, now)),
    h("td", { class: "num" }, String(node.frames_rendered || 0),
      node.tiles_rendered ? h("div", { class: "sub", "data-role": "tiles-rendered" },
        `${node.tiles_rendered} tiles`) : null),
    h("td", { class: "row-actions" }, nodeActions(node)));
}

/** Its Blenders (a server from before lists one, as ``blender``). */
function blenderList(node) {
  return node.blenders || (node.blender ? [{ version: node.blender, oidn: node.oidn }] : []);
}

function blenders(node) {
  const list = blenderList(node);
  if (!list.length) return "—";
  return list.map((b) => `${b.version || "?"}${b.kind === "module" ? " (module)" : ""}`)
    .join(", ");
}

/** What its Blenders render with: the CPU, then each GPU once (by name, its backends). */
function devices(node) {
  const cards = new Map();
  for (const b of blenderList(node)) {
    for (const d of b.devices || []) {
      const key = d.gpu || d.id;
      const card = cards.get(key) || { name: d.name || key, types: new Set() };
      card.types.add(d.type);
      cards.set(key, card);
    }
  }
  return ["CPU", ...[...cards.values()].map((c) => `${c.name} (${[...c.types].join(", ")})`)]
    .join(", ");
}

/** One chip per slot: its id and device, marked busy (with what it renders) or idle. */
function slots(node) {
  const list = node.slots || [];
  if (!list.length) return "—";
  return h("div", { class: "slot-list" }, list.map((s) => {
    const job = s.busy && state.jobs.get(s.busy.job_id);
    const doing = s.busy ? ` · ${(job && job.name) || s.busy.job_name || s.busy.job_id}`
      + (s.busy.frame !== null && s.busy.frame !== undefined ? ` frame ${s.busy.frame}` : "") : "";
    return h("span", { class: `slot ${s.busy ? "busy" : "idle"}`, "data-slot": s.id,
      title: `${s.device}${(s.gpus || []).length ? ` (${s.gpus.join(", ")})` : ""}${doing}` },
    `${s.id} ${s.device}${s.busy ? " ●" : ""}`);
  }));
}

/** What the node renders now, from its own events: its first busy slot's task (the
 *  slots cell says what the others render), its job, and the frame and fraction of its
 *  latest progress. */
function currentTask(node) {
  const cur = node.current;
  if (!cur) return node.online ? h("span", { class: "muted" }, "—") : "";
  const job = state.jobs.get(cur.job_id);
  const label = (job && job.name) || cur.job_name || cur.job_id;
  // prefetched: what it holds beyond the one task each busy slot renders
  const rendering = (node.slots || []).filter((s) => s.busy).length || 1;
  const held = (node.tasks || []).length;
  const more = held > rendering ? ` (+${held - rendering} next)` : "";
  const link = h("a", { href: `#/jobs/${enc(cur.job_id)}`, class: "task-link" }, label);
  if (cur.status !== "running") {
    return h("div", { class: "progress-cell" }, link, h("span", { class: "muted" }, `starting${more}`));
  }
  const pct = Math.round((cur.progress || 0) * 100);
  return h("div", { class: "progress-cell" }, link,
    cur.frame !== null && cur.frame !== undefined
      ? h("span", { class: "muted frame" }, `frame ${cur.frame}`) : null,
    progressBar(cur.progress, `${node.name}: ${pct}%`, "slim"),
    more ? h("span", { class: "muted" }, more) : null);
}

function nodeActions(node) {
  if (!mayControlNodes()) return [h("span", { class: "muted" }, "admins only")];
  const call = (action, done) => async () => {
    try {
      const data = await api(`/api/nodes/${enc(node.id)}/${action}`, { method: "POST", body: {} });
      if (data && data.node) state.nodes.set(data.node.id, data.node);
      toast(`${node.name}: ${done}`);
      invalidate(true);
    } catch (exc) {
      toast(exc.message, "error");
    }
  };
  const stopped = node.drained || node.disabled;
  return [
    stopped
      ? h("button", { type: "button", class: "btn small", "data-action": "enable",
        onclick: call("enable", "enabled") }, "Enable")
      : h("button", { type: "button", class: "btn small", "data-action": "drain",
        title: "finish the current task, then take no more",
        onclick: call("drain", "draining") }, "Drain"),
    node.disabled ? null : h("button", { type: "button", class: "btn small warn",
      "data-action": "disable", title: "stop now; its tasks go back to the queue",
      onclick: () => confirm(`Disable ${node.name} now? Its tasks go back to the queue.`)
        && call("disable", "disabled")() }, "Disable"),
  ];
}
