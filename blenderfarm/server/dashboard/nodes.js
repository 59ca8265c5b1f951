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
  const cols = ["Name", "State", "Current task", "Blender", "Threads", "GPUs", "Denoise",
    "Last seen", "Frames", ""];
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
    h("td", null, node.blender || "—"),
    h("td", { class: "num" }, node.threads ?? "—"),
    h("td", null, gpus(node.gpus)),
    h("td", null, node.oidn ? "yes" : "no"),
    h("td", { class: "seen", title: new Date(node.last_seen * 1000).toLocaleString() },
      node.online ? (now - node.last_seen < 15 ? "now" : ago(node.last_seen, now))
        : ago(node.last_seen, now)),
    h("td", { class: "num" }, String(node.frames_rendered || 0)),
    h("td", { class: "row-actions" }, nodeActions(node)));
}

function gpus(list) {
  if (!list || !list.length) return "—";
  return list.map((g) => (typeof g === "string" ? g : g.name || g.type || JSON.stringify(g)))
    .join(", ");
}

/** What the node renders now, from its own events: the task it holds first (the others
 *  are prefetched), its job, and the frame and fraction of its latest progress. */
function currentTask(node) {
  const cur = node.current;
  if (!cur) return node.online ? h("span", { class: "muted" }, "—") : "";
  const job = state.jobs.get(cur.job_id);
  const label = (job && job.name) || cur.job_name || cur.job_id;
  const held = (node.tasks || []).length;
  const more = held > 1 ? ` (+${held - 1} next)` : "";
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
