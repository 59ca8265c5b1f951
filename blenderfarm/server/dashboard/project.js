// What the user picked, as a project: files with the paths the farm will lay them out
// at, and which .blend is the main one. Pure bookkeeping over File objects: no network,
// no DOM but the pickers' own FileList and DataTransfer.
//
// A path is the file's place inside the picked folder, that folder's own name left out
// ("shots/shot.blend" for ".../project/shots/shot.blend"), with forward slashes. Hidden
// files and folders (".git", ".DS_Store") and Blender's backups (shot.blend1) stay out:
// they are not part of the render and may be large.

/** Whether a path's file belongs in the project. */
export function wanted(rel) {
  const parts = rel.split("/");
  if (parts.some((p) => p.startsWith("."))) return false;
  return !/\.blend\d+$/i.test(parts[parts.length - 1]);
}

export function isBlend(rel) {
  return /\.blend$/i.test(rel);
}

/** Drop the first part of every path when all share it (the picked folder's name). */
function stripFolder(items) {
  const first = (rel) => (rel.includes("/") ? rel.slice(0, rel.indexOf("/")) : null);
  const top = items.length ? first(items[0].rel) : null;
  if (top === null || !items.every((i) => first(i.rel) === top)) return items;
  return items.map((i) => ({ ...i, rel: i.rel.slice(top.length + 1) }));
}

function normal(rel) {
  return rel.replace(/\\/g, "/").split("/").filter((p) => p && p !== ".").join("/");
}

/** The project of a file input's files: a folder (webkitdirectory) or loose files. */
export function fromFileList(fileList) {
  const items = [...fileList].map((file) => ({ file,
    rel: normal(file.webkitRelativePath || file.name) }));
  return project(stripFolder(items));
}

/**
 * The project of a drop: one folder (its own name left out), or files and folders
 * side by side (their names kept). Folders are walked with webkitGetAsEntry, whose
 * readers hand out at most 100 entries per call, hence the loop.
 */
export async function fromDrop(dataTransfer) {
  const entries = [...dataTransfer.items]
    .map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) {
    return project([...dataTransfer.files].map((file) => ({ file, rel: file.name })));
  }
  const items = [];
  const walk = async (entry, prefix) => {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (prefix && !wanted(entry.name)) return; // a hidden folder is not even walked
    if (entry.isFile) {
      items.push({ file: await new Promise((ok, fail) => entry.file(ok, fail)), rel });
      return;
    }
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const child of batch) await walk(child, rel);
    }
  };
  for (const entry of entries) await walk(entry, "");
  const single = entries.length === 1 && entries[0].isDirectory;
  return project(single ? stripFolder(items) : items);
}

/** {files: [{rel, file}] sorted by path, blends: [rel], main: rel or null, skipped}. */
function project(items) {
  const kept = items.filter((i) => i.rel && wanted(i.rel))
    .sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
  const blends = kept.filter((i) => isBlend(i.rel)).map((i) => i.rel);
  return { files: kept, blends, main: defaultMain(blends), skipped: items.length - kept.length,
    bytes: kept.reduce((n, i) => n + i.file.size, 0) };
}

/** The only .blend, else the only one at the folder's top; else the user chooses. */
export function defaultMain(blends) {
  if (blends.length === 1) return blends[0];
  const top = blends.filter((b) => !b.includes("/"));
  return top.length === 1 ? top[0] : null;
}

/** The job's default name: the main .blend's file name without ".blend". */
export function stem(rel) {
  return rel.slice(rel.lastIndexOf("/") + 1).replace(/\.blend$/i, "");
}
