// A tiled frame filling in before its merge: each finished tile's preview (an 8-bit PNG
// its node rendered beside the tile's EXR) placed where its pixels lie in the frame.

import { h } from "./dom.js";
import { tileImage } from "./images.js";

/** The frame being tiled now, if any: the frame whose latest tile finished last among
 *  those not merged yet; with its tile tasks. Only tasks of the page's first page of
 *  tasks count (a job of thousands of tiles shows what is there). */
export function tilingFrame(tasks) {
  const byFrame = new Map();
  for (const t of tasks) {
    if (t.kind === "merge" && t.status !== "done") byFrame.set(t.frames[0], byFrame.get(t.frames[0]) || []);
  }
  let best = null;
  for (const t of tasks) {
    if (t.tile === null || t.tile === undefined || !byFrame.has(t.frames[0])) continue;
    byFrame.get(t.frames[0]).push(t);
    if (t.preview && (!best || (t.finished || 0) > (best.finished || 0))) best = t;
  }
  if (!best) return null;
  const tiles = byFrame.get(best.frames[0]).sort((a, b) => a.tile - b.tile);
  return { frame: best.frames[0], tiles, shown: tiles.filter((t) => t.preview),
    size: best.preview.frame_size };
}

/** The frame at its aspect, each preview at its place (origin bottom left, as Blender's). */
export function tileMosaic(tiling, alt) {
  const [w, hgt] = tiling.size;
  const pct = (v, of) => `${(100 * v / of).toFixed(4)}%`;
  return h("div", { class: "mosaic", "data-role": "mosaic", style: `aspect-ratio: ${w} / ${hgt}; width: min(100%, ${(420 * w / hgt).toFixed(1)}px)` },
    tiling.shown.map((t) => {
      const [x0, y0, x1, y1] = t.preview.rect;
      return h("div", { class: "mosaic-tile", "data-key": `mosaic-${t.id}-${t.preview.v}`,
        "data-tile": String(t.tile),
        style: `left: ${pct(x0, w)}; bottom: ${pct(y0, hgt)}; width: ${pct(x1 - x0, w)}; ` +
          `height: ${pct(y1 - y0, hgt)}` }, tileImage(t, `${alt}, tile ${t.tile + 1}`));
    }));
}
