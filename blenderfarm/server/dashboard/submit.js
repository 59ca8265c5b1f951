// #/new: submit a job from the browser alone. A .blend or a project folder is picked
// (or dropped), every file hashed here, the files the farm lacks uploaded, the main
// .blend first and read by the farm (POST /api/inspect) before anything else moves, so
// a bad file is refused before gigabytes do; then the form, filled from what was read,
// and POST /api/jobs. The rest uploads while the form is filled in, and the farm then
// reads the whole project once more: only that answer says which files it lacks.
//
// One submit at a time, kept here across redraws and route changes; every async step
// checks that its run is still the current one, so a Cancel is never undone by a
// request that answers late.

import { api, enc } from "./api.js";
import { bytes, h, progressBar } from "./dom.js";
import { buildSpec, formView, missingView, newForm, readView } from "./jobform.js";
import { fromDrop, fromFileList, isBlend } from "./project.js";
import { Aborted } from "./sha256.js";
import { hashAll, missingBlobs, postJson, putAll, stop, TransferError } from "./upload.js";
import { invalidate, state } from "./state.js";

/** Jobs submitted from this browser, for the notifications (a JSON array of ids). */
export const SUBMITTED_KEY = "bf.submitted";
const SUBMITTED_MAX = 500;

let s = fresh();
let runs = 0;

function fresh(notice) {
  return { stage: "pick", run: null, controller: null, project: null, main: null,
    hashed: 0, hashing: "", manifest: null, absent: new Set(), stored: new Set(),
    sent: 0, toSend: 0, filesSent: 0, filesToSend: 0, filesKnown: 0,
    final: null, ready: false, checked: false, info: null, form: null,
    error: null, formError: null, notice: notice || null, dragging: false, posting: false };
}

const BUSY = ["hashing", "sending", "inspecting", "submitting"];
window.addEventListener("beforeunload", (e) => {
  if (BUSY.includes(s.stage) || (s.stage === "form" && !s.ready)) {
    e.preventDefault();
    e.returnValue = ""; // leaving ends the upload: the browser asks first
  }
});

// --- the flow ------------------------------------------------------------------------------

/** Start over with what was picked: hash, ask the farm, send the main .blend, read it. */
async function begin(project) {
  cancelRun();
  s = fresh();
  if (!project.files.length) return fail("Nothing to upload: pick a .blend file or a project folder.");
  if (!project.blends.length) {
    return fail("There is no .blend file in what you picked: pick a .blend file or a folder "
      + "that holds one.");
  }
  const huge = state.maxBlobSize && project.files.find((f) => f.file.size > state.maxBlobSize);
  if (huge) {  // said before hashing or sending anything: the farm would refuse it
    return fail(`${huge.rel} is ${bytes(huge.file.size)}, more than the ${bytes(state.maxBlobSize)} `
      + "this farm takes in one file (its max_blob_size). Nothing was submitted.");
  }
  s.project = project;
  s.main = project.main;
  const run = newRun();
  await step(run, async (signal) => {
    s.stage = "hashing";
    invalidate(true);
    const hashed = (done, rel) => { s.hashed = done; s.hashing = rel; invalidate(); };
    await hashAll(project.files, hashed, signal);
    s.manifest = Object.fromEntries(project.files.map((f) => [f.rel, f.sha]));
    const shas = project.files.map((f) => f.sha);
    s.absent = await missingBlobs(shas, signal);
    s.stored = new Set(shas.filter((sha) => !s.absent.has(sha)));
    s.filesKnown = project.files.filter((f) => s.stored.has(f.sha)).length;
    const unique = uniqueBySha(project.files.filter((f) => s.absent.has(f.sha)));
    s.filesToSend = unique.length;
    s.toSend = unique.reduce((n, f) => n + f.file.size, 0);
    if (!s.main) {
      s.stage = "choose"; // several .blend files and none on top: the user says which
      return;
    }
    await readMain(run, signal);
  });
}

/**
 * The main .blend up and read by the farm (with the files it has so far), the form
 * filled from it; then the rest goes up, .blend libraries first, and the farm reads
 * the whole project again for the files it lacks (only then is that list complete).
 */
async function readMain(run, signal) {
  s.stage = "sending";
  await send([s.project.files.find((f) => f.rel === s.main)], signal);
  s.stage = "inspecting";
  invalidate(true);
  s.info = await inspect(signal);
  s.checked = s.absent.size === 0;
  s.form = newForm(s.info, s.main);
  s.stage = "form";
  const blendsFirst = [...s.project.files].sort((a, b) => isBlend(b.rel) - isBlend(a.rel));
  s.final = (async () => {
    await send(blendsFirst, signal);
    if (!s.checked) {
      s.info = await inspect(signal);
      s.checked = true;
    }
  })();
  s.final.then(() => {
    if (run !== s.run) return;
    s.ready = true;
    invalidate(true);
  }, (exc) => { if (run === s.run) stopWith(exc); });
}

/** The farm's reading of the main .blend, given the files it has of the project. */
async function inspect(signal) {
  const manifest = {};
  for (const [rel, sha] of Object.entries(s.manifest)) if (s.stored.has(sha)) manifest[rel] = sha;
  try {
    return await postJson("/api/inspect", { blend: s.main, manifest }, signal);
  } catch (exc) {
    if (exc instanceof TransferError && exc.reason === "not_found") {
      throw new TransferError("This farm's server cannot read .blend files for the dashboard "
        + "(it has no /api/inspect): upgrade it, or submit with bf or the add-on.", exc.reason);
    }
    throw exc;
  }
}

/** Upload those of ``files`` the farm lacks and that are not on their way already. */
async function send(files, signal) {
  const todo = uniqueBySha(files.filter((f) => s.absent.has(f.sha)));
  for (const f of todo) s.absent.delete(f.sha); // claimed: no other batch sends it
  invalidate(true);
  await putAll(todo, (n) => { s.sent += n; invalidate(); }, signal, (item) => {
    s.stored.add(item.sha);
    s.filesSent += 1;
  });
}

function uniqueBySha(files) {
  const seen = new Set();
  return files.filter((f) => !seen.has(f.sha) && seen.add(f.sha));
}

function unconfirmed() {
  return s.checked && (s.info.missing || []).length > 0 && !s.form.confirmMissing;
}

const CONFIRM = "Some files are missing: tick “Submit anyway” to submit without them.";

async function submit(e) {
  if (e) e.preventDefault();
  if (s.stage !== "form") return;
  if (unconfirmed()) {
    s.formError = CONFIRM;
    invalidate(true);
    return;
  }
  const run = s.run;
  s.stage = "submitting";
  s.formError = null;
  invalidate(true);
  try {
    await s.final; // every file up, and the farm's list of what is missing complete
    if (run !== s.run) return;
    if (unconfirmed()) {
      s.stage = "form";
      s.formError = CONFIRM;
      invalidate(true);
      return;
    }
    const spec = buildSpec(s.info, s.form, s.main, s.manifest, !state.authRequired);
    s.posting = true; // from here a Cancel could not take the job back
    invalidate(true);
    const { job } = await api("/api/jobs", { method: "POST", body: spec });
    if (run !== s.run) return;
    remember(job.id);
    state.jobs.set(job.id, job);
    s = fresh();
    location.hash = `#/jobs/${enc(job.id)}`;
  } catch (exc) {
    if (run !== s.run) return;
    s.stage = "form";
    s.posting = false;
    s.formError = exc.field ? `${exc.field}: ${stop(exc.message)}` : stop(exc.message);
    invalidate(true);
  }
}

function remember(jobId) {
  try {
    const ids = JSON.parse(localStorage.getItem(SUBMITTED_KEY) || "[]");
    const list = Array.isArray(ids) ? ids.filter((id) => id !== jobId) : [];
    list.push(jobId);
    localStorage.setItem(SUBMITTED_KEY, JSON.stringify(list.slice(-SUBMITTED_MAX)));
  } catch { /* private mode, or damaged: the job is submitted all the same */ }
}

function newRun() {
  s.controller = new AbortController();
  s.run = ++runs;
  return s.run;
}

/** Run one async step of run ``run``; a failure ends the run with its sentence. */
async function step(run, fn) {
  try {
    await fn(s.controller.signal);
  } catch (exc) {
    if (run === s.run) stopWith(exc);
    return;
  }
  if (run === s.run) invalidate(true);
}

function stopWith(exc) {
  if (exc instanceof Aborted) return;
  cancelRun();
  const message = exc instanceof TransferError ? exc.message : stop(exc.message || String(exc));
  fail(`${message} Nothing was submitted.`);
}

function fail(message) {
  s = { ...fresh(), error: message };
  invalidate(true);
}

function cancelRun() {
  if (s.controller) s.controller.abort();
  s.run = null;
}

function cancel() {
  const busy = s.stage !== "pick";
  cancelRun();
  s = fresh(busy ? "Canceled: nothing was submitted." : null);
  invalidate(true);
}

function chooseMain(rel) {
  s.main = rel || null;
  if (s.stage === "choose" && s.main) {
    const run = s.run;
    step(run, (signal) => readMain(run, signal));
  }
  invalidate(true);
}

// --- picking ---------------------------------------------------------------------------

function onPick(e) {
  const project = fromFileList(e.target.files);
  e.target.value = "";
  begin(project);
}

// A drop anywhere on the New job page picks; elsewhere the browser would open the file.
function onNewPage(e) {
  if (state.route.name !== "new" || !e.dataTransfer || ![...e.dataTransfer.types].includes("Files")) {
    return false;
  }
  e.preventDefault();
  return true;
}

window.addEventListener("dragover", (e) => {
  if (!onNewPage(e)) return;
  e.dataTransfer.dropEffect = s.stage === "pick" ? "copy" : "none";
  if (!s.dragging) { s.dragging = true; invalidate(); }
});
window.addEventListener("dragleave", (e) => {
  if (e.relatedTarget === null && s.dragging) { s.dragging = false; invalidate(); }
});
window.addEventListener("drop", async (e) => {
  if (!onNewPage(e)) return;
  s.dragging = false;
  if (s.stage !== "pick") { invalidate(); return; } // one submit at a time
  try {
    begin(await fromDrop(e.dataTransfer));
  } catch (exc) {
    fail(`What you dropped cannot be read: ${stop(exc.message)}`);
  }
});

// --- the view --------------------------------------------------------------------------

export function newJobView() {
  return h("section", { class: "new-job", "aria-labelledby": "nj-title", "data-key": "view-new" },
    h("div", { class: "panel-head" }, h("h1", { id: "nj-title" }, "New job"),
      s.project ? h("span", { class: "muted", "data-role": "project" }, projectLine()) : null),
    s.error ? h("p", { class: "job-error", role: "alert", "data-role": "error" }, s.error) : null,
    s.notice ? h("p", { class: "notice", role: "status", "data-role": "notice" }, s.notice) : null,
    s.stage === "pick" ? picker() : progress(),
    s.info && ["form", "submitting"].includes(s.stage) ? formPanel() : null);
}

function projectLine() {
  const p = s.project;
  const skipped = p.skipped
    ? ` (${p.skipped} hidden or backup file${p.skipped === 1 ? "" : "s"} left out)` : "";
  return `${p.files.length} file${p.files.length === 1 ? "" : "s"}, ${bytes(p.bytes)}${skipped}`;
}

function picker() {
  return h("div", { class: `panel drop${s.dragging ? " over" : ""}`, "data-role": "drop" },
  h("p", { class: "drop-title" }, "Drop a .blend file or a project folder here"),
  h("p", { class: "muted" }, "Every file is hashed here and only those the farm lacks are uploaded."),
  h("div", { class: "pick-buttons" },
    h("label", { class: "btn primary", for: "nj-folder" }, "Choose a project folder…"),
    h("input", { type: "file", id: "nj-folder", class: "visually-hidden", webkitdirectory: true,
      multiple: true, onchange: onPick, "aria-label": "Project folder" }),
    h("label", { class: "btn", for: "nj-files" }, "Choose files…"),
    h("input", { type: "file", id: "nj-files", class: "visually-hidden", multiple: true,
      onchange: onPick, "aria-label": ".blend and other files" })));
}

function progress() {
  const p = s.project;
  const hashing = s.stage === "hashing";
  const uploading = !hashing && s.toSend > 0;
  const onFarm = s.filesKnown;
  return h("div", { class: "panel nj-progress", "data-role": "progress" },
    mainChoice(),
    h("div", { class: "nj-step", "data-role": "hashing" },
      h("span", { class: "nj-label" }, hashing ? "Hashing" : "Hashed"),
      progressBar(p.bytes ? s.hashed / p.bytes : 1, `hashed ${bytes(s.hashed)} of ${bytes(p.bytes)}`),
      h("span", { class: "nj-figures" }, hashing
        ? `${bytes(s.hashed)} of ${bytes(p.bytes)} · ${s.hashing}`
        : `${p.files.length} file${p.files.length === 1 ? "" : "s"}`)),
    hashing || s.stage === "choose" ? null : h("div", { class: "nj-step", "data-role": "upload" },
      h("span", { class: "nj-label" }, s.sent >= s.toSend ? "Uploaded" : "Uploading"),
      progressBar(s.toSend ? s.sent / s.toSend : 1, `uploaded ${bytes(s.sent)} of ${bytes(s.toSend)}`),
      h("span", { class: "nj-figures", "data-role": "upload-figures" }, uploading
        ? `${bytes(s.sent)} of ${bytes(s.toSend)} · ${s.filesSent} of ${s.filesToSend} files`
        : "nothing to upload",
      onFarm ? ` · ${onFarm} file${onFarm === 1 ? "" : "s"} on the farm already` : "")),
    h("p", { class: "muted", "data-role": "stage" }, stageLine()),
    h("div", { class: "nj-actions" },
      h("button", { type: "button", class: "btn warn", "data-action": "cancel", onclick: cancel,
        disabled: s.posting },
        s.stage === "form" && s.ready ? "Start over" : "Cancel")));
}

function stageLine() {
  return {
    hashing: "Hashing the files in this browser…",
    choose: "Which .blend file is the one to render?",
    sending: "Uploading the main .blend file…",
    inspecting: "The farm is reading the .blend file…",
    form: s.ready ? "Every file is on the farm." : "The other files upload while you fill in "
      + "the job; the farm then checks that the project lacks none.",
    submitting: s.ready ? "Submitting…" : "Submitting as soon as the upload ends…",
  }[s.stage] || "";
}

function mainChoice() {
  const blends = s.project.blends;
  if (blends.length < 2) return null;
  const locked = !["hashing", "choose"].includes(s.stage);
  return h("div", { class: "field" },
    h("label", { for: "nj-main" }, "Main .blend file"),
    h("select", { id: "nj-main", disabled: locked, onchange: (e) => chooseMain(e.target.value) },
      s.main ? null : h("option", { value: "", selected: true }, "Choose the .blend to render…"),
      blends.map((b) => h("option", { value: b, selected: b === s.main }, b))));
}

function formPanel() {
  const busy = s.stage === "submitting";
  const who = state.authRequired ? (state.you && state.you.name) || "your token's name" : null;
  const ctx = { info: s.info, form: s.form, blend: s.main, busy, who, redraw: () => invalidate(true) };
  return h("form", { class: "nj-job", onsubmit: submit, "data-role": "job-form", novalidate: true },
    h("div", { class: "job-columns" },
      h("section", { class: "panel" }, formView(ctx)),
      readView(s.info, s.form)),
    s.checked ? missingView(s.info.missing || [], s.form, ctx.redraw) : null,
    h("div", { class: "nj-submit" },
      s.formError
        ? h("p", { class: "form-error", role: "alert", "data-role": "form-error" }, s.formError)
        : null,
      h("button", { type: "submit", class: "btn primary", "data-action": "submit", disabled: busy },
        busy ? "Submitting…" : "Submit job")));
}
