// Tells the submitter when a job of theirs ends, with the browser's notifications, so a
// long render can be left in a background tab.
//
// A job is theirs when this browser submitted it (its id is in localStorage
// "bf.submitted", which the New job page writes) or when the signed-in token's user owns
// it. It is told when this page saw it queued, active or paused and then sees it
// completed, failed or canceled: a job that had already ended when the page loaded says
// nothing, and none is told twice. "Notify me" in the header asks the browser's
// permission (a browser lets only a click ask) and is remembered in localStorage
// "bf.notify"; where the browser blocks or lacks notifications, it says so.

import { enc } from "./api.js";
import { duration, toast } from "./dom.js";
import { onJobsSeen, state } from "./state.js";

const ON_KEY = "bf.notify"; // "on" or "off"
const SUBMITTED_KEY = "bf.submitted"; // a JSON array of job ids
const FINAL = ["completed", "failed", "canceled"];

const lastSeen = new Map(); // job id -> the status this page saw last
const told = new Set(); // job ids notified already

/** Wire the header's control and listen to every job view the page gets. */
export function setupNotify() {
  onJobsSeen(seen);
  document.getElementById("notify").addEventListener("click", toggle);
  showControl();
  // The reader may allow or block notifications in the browser's settings meanwhile.
  if (navigator.permissions) {
    navigator.permissions.query({ name: "notifications" })
      .then((status) => { status.onchange = showControl; })
      .catch(() => { /* this browser cannot say: the next click finds out */ });
  }
}

/** What the browser allows: granted, denied, default, unsupported or insecure. */
function permission() {
  if (!window.isSecureContext) return "insecure";
  return typeof window.Notification === "function" ? Notification.permission : "unsupported";
}

function wanted() {
  try { return localStorage.getItem(ON_KEY) === "on"; } catch { return false; }
}

function setWanted(on) {
  try { localStorage.setItem(ON_KEY, on ? "on" : "off"); } catch { /* private mode */ }
}

const WHY_NOT = {
  denied: "This browser blocks notifications from this farm: allow them in its site "
    + "settings, then click again.",
  unsupported: "This browser cannot show notifications.",
  insecure: "Browsers show notifications only to pages served over HTTPS (or on this "
    + "machine): open the dashboard through the farm's TLS address.",
};

async function toggle() {
  const now = permission();
  if (WHY_NOT[now]) {
    toast(WHY_NOT[now], "error");
  } else if (wanted() && now === "granted") {
    setWanted(false);
  } else {
    const answer = now === "granted" ? now : await Notification.requestPermission();
    setWanted(answer === "granted");
    if (answer === "denied") toast(WHY_NOT.denied, "error");
    else if (answer !== "granted") toast("Notifications stay off: the browser's question was closed.");
  }
  showControl();
}

function showControl() {
  const button = document.getElementById("notify");
  const now = permission();
  const on = now === "granted" && wanted();
  button.textContent = { denied: "Notifications blocked", unsupported: "No notifications",
    insecure: "No notifications" }[now] || (on ? "Notifying" : "Notify me");
  button.title = WHY_NOT[now]
    || (on ? "You are told when your jobs end: click to stop" : "Be told when your jobs end");
  button.setAttribute("aria-pressed", String(on));
  button.dataset.state = WHY_NOT[now] ? now : on ? "on" : "off";
}

// --- the jobs ------------------------------------------------------------------------------

/** Job views from a whole list (``whole``: the start, a resync) or from one event. */
function seen(jobs, whole) {
  if (whole) {
    const ids = new Set(jobs.map((job) => job.id));
    for (const id of lastSeen.keys()) if (!ids.has(id)) lastSeen.delete(id);
  }
  for (const job of jobs) {
    const before = lastSeen.get(job.id);
    lastSeen.set(job.id, job.status);
    if (before && !FINAL.includes(before) && FINAL.includes(job.status)) ended(job);
  }
}

function isMine(job) {
  const you = state.you;
  if (you && you.name && job.owner === you.name) return true;
  try {
    const ids = JSON.parse(localStorage.getItem(SUBMITTED_KEY) || "[]");
    return Array.isArray(ids) && ids.includes(job.id);
  } catch {
    return false; // storage refused or damaged
  }
}

function ended(job) {
  if (told.has(job.id) || !isMine(job) || !wanted() || permission() !== "granted") return;
  told.add(job.id);
  const note = new Notification(`${job.name || job.id} ${job.status}`,
    { body: summary(job), tag: job.id });
  note.onclick = () => {
    window.focus();
    location.hash = `#/jobs/${enc(job.id)}`;
    note.close();
  };
}

/** "8 frames · 1m 04s"; an unfinished job says how far it got, a failure why. */
function summary(job) {
  const plural = (n) => `${n} frame${n === 1 ? "" : "s"}`;
  const parts = [job.status === "completed" ? plural(job.frames_done)
    : `${job.frames_done} of ${plural(job.frames_total)}`];
  const since = job.started || job.created;
  if (job.finished && since) parts.push(duration(job.finished - since));
  if (job.status === "failed" && job.error) parts.push(job.error.slice(0, 200));
  return parts.join(" · ");
}
