// The New job page's form: what the farm read in the main .blend (POST /api/inspect),
// the job's settings (the add-on's panel and `bf submit`'s options), the files the
// project lacks, and the job spec built from them as `bf`'s build_spec builds it.
//
// Values live in a plain object (``form``), strings as typed: a redraw puts them back
// into the fields, so nothing typed is lost when progress redraws the page.

import { h } from "./dom.js";
import { stem } from "./project.js";

/** overrides.format choices (protocol/jobspec.py FORMATS), as the add-on names them. */
const FORMATS = [["PNG", "PNG"], ["JPEG", "JPEG"], ["OPEN_EXR", "OpenEXR"],
  ["OPEN_EXR_MULTILAYER", "OpenEXR MultiLayer"], ["TIFF", "TIFF"]];
/** The spec fields `bf` derives from the file, per scene, as inspect names them. */
const SPEC_FIELDS = ["output_pattern", "scene_format", "blender_saved", "resolution"];
export const USER_KEY = "blenderfarm.user";

export function storedUser() {
  try { return localStorage.getItem(USER_KEY) || ""; } catch { return ""; }
}

function rememberUser(name) {
  try { localStorage.setItem(USER_KEY, name); } catch { /* private mode */ }
}

/** The scene's own range as `bf` and the add-on write it: "1-250", "1-250x2". */
export function sceneFrames(scene) {
  if (!scene || scene.frame_start === null || scene.frame_start === undefined) return "";
  const step = scene.frame_step > 1 ? `x${scene.frame_step}` : "";
  return `${scene.frame_start}-${scene.frame_end}${step}`;
}

export function sceneOf(info, name) {
  return info.scenes.find((sc) => sc.name === name) || info.scenes[0];
}

/** A scene's percentage and output, named either way the server may name them
 * ("percent" and "output": {path, format}, or "resolution_percent", "output_path"
 * and "output_format"). */
function facts(sc) {
  const out = sc.output || {};
  return { percent: sc.percent ?? sc.resolution_percent ?? null,
    outputPath: out.path ?? sc.output_path ?? null, format: out.format ?? sc.output_format ?? null };
}

/** A fresh form for what inspect read: the active scene, its range, the file's name. */
export function newForm(info, blend) {
  const scene = sceneOf(info, info.scene);
  return { name: stem(blend), scene: scene ? scene.name : "", frames: sceneFrames(scene),
    chunk: "1", priority: "50", samples: "", percent: "", format: "", device: "", camera: "",
    denoise: "", persistent: "", tags: "", tilesMode: "off", tiles: "8", video: false,
    paused: false, user: storedUser(), confirmMissing: false };
}

const int = (text) => (String(text).trim() === "" ? null : Number(String(text).trim()));

/** The resolution the nodes will render (for tiles "auto"), under a % override. */
function resolution(scene, percentText) {
  const res = scene.spec && scene.spec.resolution;
  const pct = int(percentText);
  if (!res || pct === null) return res || null;
  const base = scene.resolution_base;  // at 100 %: scaled as Blender scales it
  if (base) return base.map((v) => Math.floor((v * pct) / 100));
  const own = facts(scene).percent;  // a server from before resolution_base
  return own ? res.map((v) => Math.floor(Math.round((v * 100) / own) * pct / 100)) : res;
}

/**
 * The job spec (POST /api/jobs) from the form; ``user`` only on a farm without
 * tokens (with one the server names the job's owner after the token).
 */
export function buildSpec(info, form, blend, manifest, sendUser) {
  const scene = sceneOf(info, form.scene);
  const overrides = {};
  const pairs = [["samples", int(form.samples)], ["resolution_percent", int(form.percent)],
    ["format", form.format || null], ["device", form.device || null],
    ["camera", form.camera || null],
    ["denoise", form.denoise ? form.denoise === "on" : null],
    ["persistent_data", form.persistent ? form.persistent === "on" : null]];
  for (const [k, v] of pairs) if (v !== null) overrides[k] = v;
  const spec = { blend, manifest, frames: form.frames.trim(), chunk: int(form.chunk) ?? 1,
    priority: int(form.priority) ?? 50, overrides, paused: form.paused,
    name: form.name.trim() || stem(blend) };
  if (scene) spec.scene = scene.name;
  const tags = form.tags.split(",").map((t) => t.trim()).filter(Boolean);
  if (tags.length) spec.tags = tags;
  if (form.tilesMode === "auto") spec.tiles = "auto";
  else if (form.tilesMode === "count") spec.tiles = int(form.tiles);
  if (form.video) spec.video = true;
  for (const key of SPEC_FIELDS) {
    const value = key === "resolution" ? resolution(scene || {}, form.percent)
      : scene && scene.spec ? scene.spec[key] : null;
    if (value !== null && value !== undefined) spec[key] = value;
  }
  if (!spec.blender_saved && info.blender_saved) spec.blender_saved = info.blender_saved;
  if (sendUser && form.user.trim()) {
    spec.user = form.user.trim();
    rememberUser(spec.user);
  }
  return spec;
}

// --- the view --------------------------------------------------------------------------

function field(label, id, control, help) {
  return h("div", { class: "field" }, h("label", { for: id }, label), control,
    help ? h("span", { class: "muted hint" }, help) : null);
}

function text(form, key, attrs, onChange) {
  return h("input", { type: "text", id: `nj-${key}`, value: form[key], autocomplete: "off",
    spellcheck: "false", ...attrs,
    oninput: (e) => { form[key] = e.target.value; if (onChange) onChange(); } });
}

function number(form, key, attrs, onChange) {
  return text(form, key, { type: "number", step: 1, inputmode: "numeric", ...attrs }, onChange);
}

function select(form, key, options, onChange) {
  return h("select", { id: `nj-${key}`, onchange: (e) => { form[key] = e.target.value; onChange(); } },
    options.map(([value, label]) => h("option", { value, selected: form[key] === value }, label)));
}

function tick(form, key, label, onChange) {
  return h("label", { class: "tick" },
    h("input", { type: "checkbox", id: `nj-${key}`, checked: form[key],
      onchange: (e) => { form[key] = e.target.checked; onChange(); } }), label);
}

const sceneSetting = (what) => [["", `Scene's ${what}`], ["on", "On"], ["off", "Off"]];

/**
 * The form. ``ctx``: info, form, blend, busy (fields locked while submitting), who
 * (the token's name or null), redraw(), submit().
 */
export function formView(ctx) {
  const { info, form, redraw } = ctx;
  const scene = sceneOf(info, form.scene) || {};
  const own = facts(scene);
  const onScene = () => {
    form.frames = sceneFrames(sceneOf(info, form.scene));
    form.camera = "";
    // A redraw leaves the field that has the focus alone; this change is the user's own.
    const frames = document.getElementById("nj-frames");
    if (frames) frames.value = form.frames;
    redraw();
  };
  const cameras = scene.cameras || [];
  const left = h("fieldset", { class: "nj-fields", disabled: ctx.busy },
    h("legend", null, "Job"),
    field("Job name", "nj-name", text(form, "name", { placeholder: stem(ctx.blend), maxlength: 200 })),
    field("Scene", "nj-scene",
      select(form, "scene", info.scenes.map((sc) => [sc.name, sc.name]), onScene)),
    field("Frames", "nj-frames", text(form, "frames", { placeholder: "1-250, 1-10,20 or 1-100x5" }),
      `scene: ${sceneFrames(scene) || "unknown"}`),
    h("div", { class: "field-row" },
      field("Chunk", "nj-chunk", number(form, "chunk", { min: 1, max: 10000 }), "frames per task"),
      field("Priority", "nj-priority", number(form, "priority", { min: 0, max: 100 }), "0–100")),
    field("Tags", "nj-tags", text(form, "tags", { placeholder: "gpu, big-ram" }),
      "only nodes with every tag render it"),
    ctx.who ? h("p", { class: "muted", "data-role": "who" }, `Submitting as ${ctx.who}.`)
      : field("Your name", "nj-user",
        text(form, "user", { maxlength: 64, placeholder: "for sharing the farm fairly" })),
    h("div", { class: "ticks" },
      tick(form, "video", "Video", redraw), tick(form, "paused", "Queue paused", redraw)));
  const right = h("fieldset", { class: "nj-fields", disabled: ctx.busy },
    h("legend", null, "Render"),
    h("div", { class: "field-row" },
      field("Samples", "nj-samples", number(form, "samples", { min: 1, max: 1000000,
        placeholder: scene.samples ?? "scene's" })),
      field("Resolution %", "nj-percent", number(form, "percent", { min: 1, max: 1000,
        placeholder: own.percent ?? "scene's" }))),
    field("Format", "nj-format", select(form, "format",
      [["", `Scene's format (${own.format || "unknown"})`], ...FORMATS], redraw)),
    field("Camera", "nj-camera", select(form, "camera",
      [["", `Scene's camera (${scene.camera || "none"})`], ...cameras.map((c) => [c, c])], redraw)),
    h("div", { class: "field-row" },
      field("Device", "nj-device", select(form, "device",
        [["", "Scene's setting"], ["CPU", "CPU"], ["GPU", "GPU"]], redraw)),
      field("Denoise", "nj-denoise", select(form, "denoise", sceneSetting("setting"), redraw))),
    h("div", { class: "field-row" },
      field("Tiles", "nj-tilesMode", select(form, "tilesMode",
        [["off", "Whole frames"], ["auto", "Auto"], ["count", "Count"]], redraw)),
      form.tilesMode === "count"
        ? field("Tile count", "nj-tiles", number(form, "tiles", { min: 2, max: 256 })) : null),
    field("Persistent data", "nj-persistent",
      select(form, "persistent", sceneSetting("setting"), redraw)));
  return h("div", { class: "nj-form" }, left, right);
}

/** What the farm read in the file, for the chosen scene. */
export function readView(info, form) {
  const sc = sceneOf(info, form.scene) || {};
  const row = (label, value) => [h("dt", null, label), h("dd", null, value ?? "—")];
  const res = sc.resolution ? `${sc.resolution[0]} × ${sc.resolution[1]}` : null;
  const own = facts(sc);
  return h("section", { class: "panel details nj-read", "aria-label": "What the file says" },
    h("div", { class: "panel-head" }, h("h2", null, "Read from the file")),
    h("dl", null,
      row("Engine", sc.engine),
      row("Resolution", res && `${res}${own.percent ? ` (${own.percent}%)` : ""}`),
      row("Samples", sc.samples === null || sc.samples === undefined ? null : String(sc.samples)),
      row("Frames", sceneFrames(sc) || null),
      row("Frame rate", sc.fps ? `${Math.round(sc.fps * 1000) / 1000} fps` : null),
      row("Output", own.format && `${own.format}${own.outputPath ? ` · ${own.outputPath}` : ""}`),
      row("Cameras", (sc.cameras || []).length ? sc.cameras.join(", ") : "none"),
      row("View layers", (sc.view_layers || []).join(", ") || null),
      row("Saved by", info.blender_saved ? `Blender ${info.blender_saved}` : null)));
}

/** The files the project lacks, and the question the add-on asks about them. */
export function missingView(missing, form, redraw) {
  if (!missing.length) return null;
  return h("section", { class: "panel nj-missing", "aria-labelledby": "nj-missing-title" },
    h("div", { class: "panel-head" },
      h("h2", { id: "nj-missing-title" }, `Missing files (${missing.length})`)),
    h("p", null, `${missing.length === 1 ? "A file" : `${missing.length} files`} this project uses `
      + `${missing.length === 1 ? "is" : "are"} not in what you picked:`),
    h("div", { class: "table-wrap scroll" },
      h("table", { class: "grid-table" },
        h("thead", null, h("tr", null,
          ["Path", "Used by", ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", null, missing.map((m) => h("tr", { "data-missing": m.path },
          h("td", null, m.path), h("td", null, m.from || ""),
          h("td", { class: "muted" }, m.outside ? "outside the folder" : "")))))),
    h("label", { class: "tick confirm" },
      h("input", { type: "checkbox", id: "nj-confirmMissing", checked: form.confirmMissing,
        onchange: (e) => { form.confirmMissing = e.target.checked; redraw(); } }),
      "Submit anyway? The render will lack them."));
}
