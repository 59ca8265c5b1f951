// The dashboard's entry point: sign-in, the hash router (#/jobs, #/jobs/<id>, #/nodes, #/new),
// the header and the live connection to /ws/events.

import { api, eventsUrl, getToken, setToken, whenUnauthorized } from "./api.js";
import { mount, toast } from "./dom.js";
import { clearImages } from "./images.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { nodesView } from "./nodes.js";
import { setupNotify } from "./notify.js";
import { signInView } from "./signin.js";
import { newJobView } from "./submit.js";
import { applyEvent, invalidate, loadAll, loadPage, onRedraw, state } from "./state.js";

const main = document.getElementById("main");
let socket = null;
let retries = 0;
let backlog = null; // events that arrive while the full state is being fetched

function parseRoute() {
  const job = location.hash.match(/^#\/jobs\/([^/?]+)$/);
  if (job) return { name: "job", id: decodeURIComponent(job[1]) };
  return { name: { "#/nodes": "nodes", "#/new": "new" }[location.hash] || "jobs" };
}

function onRoute() {
  state.route = parseRoute();
  state.page = null;
  if (state.route.name === "job" && state.signedIn) {
    loadPage(state.route.id).catch((exc) => toast(exc.message, "error"));
  }
  invalidate(true);
  window.scrollTo(0, 0);
}

function render() {
  renderHeader();
  if (!state.signedIn) return;
  const view = { job: jobView, nodes: nodesView, new: newJobView }[state.route.name] || jobsView;
  mount(main, view());
}

function renderHeader() {
  const s = state.stats || {};
  const set = (id, text) => { document.getElementById(id).textContent = text; };
  set("st-nodes", s.nodes_online ?? "–");
  set("st-jobs", s.jobs_active ?? "–");
  set("st-queued", s.tasks_queued ?? "–");
  set("st-running", s.tasks_running ?? "–");
  set("st-fpm", s.frames_per_minute === undefined ? "–" : String(s.frames_per_minute));
  const live = document.getElementById("live");
  live.className = `live ${state.live}`;
  live.textContent = { live: "live", connecting: "connecting…", offline: "reconnecting…" }[state.live];
  for (const link of document.querySelectorAll("nav a[data-route]")) {
    const on = link.dataset.route === (state.route.name === "job" ? "jobs" : state.route.name);
    if (on) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.getElementById("signout").hidden = !(state.signedIn && getToken());
}

// --- live events ---------------------------------------------------------------------------

function connect() {
  if (!state.signedIn || socket) return;
  const ws = new WebSocket(eventsUrl());
  socket = ws;
  ws.onopen = () => ws.send(JSON.stringify({ token: getToken() }));
  ws.onmessage = (msg) => {
    // One event, or an array of the events that piled up in the server's send window.
    const data = JSON.parse(msg.data);
    (Array.isArray(data) ? data : [data]).forEach(onMessage);
  };
  ws.onclose = (e) => {
    if (socket === ws) socket = null;
    if (e.code === 4401) {
      signOut("Your token is no longer valid: sign in again.");
      return;
    }
    state.live = "offline";
    invalidate();
    const wait = Math.min(10_000, 500 * 2 ** retries++);
    setTimeout(connect, wait);
  };
}

function onMessage(ev) {
  if (ev.type === "hello") {
    state.live = "live";
    retries = 0;
    if (ev.stats) state.stats = ev.stats;
    resync();
  } else if (ev.type === "resync") {
    resync(); // we fell behind and the server dropped our backlog
  } else if (backlog) {
    backlog.push(ev);
  } else {
    applyEvent(ev);
  }
}

/** Fetch everything, then apply what arrived meanwhile (it is newer). */
async function resync() {
  if (backlog) return;
  backlog = [];
  try {
    await loadAll();
  } catch (exc) {
    toast(exc.message, "error");
  }
  const events = backlog;
  backlog = null;
  events.forEach(applyEvent);
  invalidate(true);
}

// --- signing in and out --------------------------------------------------------------------

function signOut(message) {
  setToken(null);
  state.signedIn = false;
  if (socket) socket.close(1000);
  socket = null;
  clearImages();
  renderHeader();
  mount(main, signInView(message, start));
}

async function start() {
  let info;
  try {
    info = await api("/api/info");
  } catch (exc) {
    if (exc.status === 401) {
      signOut(getToken() ? "Your token was refused: sign in again." : "");
    } else {
      state.live = "offline";
      renderHeader();
      setTimeout(start, 3000);
    }
    return;
  }
  state.authRequired = info.auth_required;
  state.maxBlobSize = info.max_blob_size || null;  // the biggest file the farm takes
  state.you = info.you || null;
  state.stats = { ...state.stats, ...info };
  state.signedIn = true;
  onRoute();
  connect();
}

whenUnauthorized(() => { if (state.signedIn) signOut("Your token was refused: sign in again."); });
onRedraw(render);
setupNotify();
window.addEventListener("hashchange", onRoute);
document.getElementById("signout").addEventListener("click", () => signOut(""));
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault(); // "#main" would be taken for a route
  main.focus();
});
setInterval(() => invalidate(), 5000); // ages, ETAs and "last seen" move on their own
if (!location.hash) history.replaceState(null, "", "#/jobs");
start();
