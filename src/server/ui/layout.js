// mixgan's layout editor, 2 of 5: the editor's state to a layout JSON and back (brushed masks
// to box + grey PNG, the painted label map snapped to its palette).
"use strict";

function b64(dataUrl) {
  return dataUrl.slice(dataUrl.indexOf(",") + 1);
}

// A brushed mask as the API takes it: its bounding box and a grey PNG of that box.
function maskRegion(canvas) {
  const { width: w, height: h } = canvas;
  const data = canvas.getContext("2d").getImageData(0, 0, w, h).data;
  let [x0, y0, x1, y1] = [w, h, -1, -1];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (data[(y * w + x) * 4 + 3] > 0) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  if (x1 < 0) return null;
  const [bw, bh] = [x1 - x0 + 1, y1 - y0 + 1];
  const grey = newCanvas(bw, bh);
  const g = grey.getContext("2d");
  g.fillStyle = "#000";
  g.fillRect(0, 0, bw, bh);
  g.drawImage(canvas, x0, y0, bw, bh, 0, 0, bw, bh);
  return { box: [x0, y0, bw, bh], mask: b64(grey.toDataURL("image/png")) };
}

// The painted label map snapped to the palette: antialiased edges take their nearest class.
function labelMapPng() {
  const { width: w, height: h } = labelCanvas;
  const ctx = labelCanvas.getContext("2d");
  const img = ctx.getImageData(0, 0, w, h);
  const d = img.data;
  const palette = classes.map((c) => hexRgb(colorOf(c)));
  let any = false;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] < 128) {
      d[i] = d[i + 1] = d[i + 2] = 0;
    } else {
      any = true;
      let best = 0, bestD = Infinity;
      palette.forEach((p, k) => {
        const dist = (p[0] - d[i]) ** 2 + (p[1] - d[i + 1]) ** 2 + (p[2] - d[i + 2]) ** 2;
        if (dist < bestD) { bestD = dist; best = k; }
      });
      [d[i], d[i + 1], d[i + 2]] = palette[best];
    }
    d[i + 3] = 255;
  }
  if (!any) return null;
  const out = newCanvas(w, h);
  out.getContext("2d").putImageData(img, 0, 0);
  return b64(out.toDataURL("image/png"));
}

function hexRgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function layoutJson() {
  const layout = { format: "png", ...state.extra, width: state.width, height: state.height };
  const bg = state.background;
  if (bg.kind === "color") layout.background = { color: bg.color };
  else if (bg.kind === "image" && bg.image) layout.background = { image: b64(bg.image), ...bg.extra };
  else if (bg.kind === "class" && bg.class) layout.background = { class: bg.class, ...bg.extra, seed: bg.seed };
  else layout.background = { color: bg.color };
  const regions = [];
  state.regions.forEach((r, z) => {
    let shape;
    if (r.shape === "mask") {
      shape = maskRegion(masks.get(r.id));
      if (!shape) return;
    } else {
      shape = { [r.shape]: r.geom };
    }
    const out = { class: r.class, ...r.extra, ...shape, seed: r.seed, z };
    if (r.trunc !== null && r.trunc !== "") out.trunc = Number(r.trunc);
    if (r.blend !== "laplacian") out.blend = r.blend;
    if (r.feather !== null && r.feather !== "") out.feather = Number(r.feather);
    if (r.color_match) out.color_match = true;
    if (r.matte !== "auto") out.matte = r.matte;
    if (r.project) { out.project = true; out.project_steps = Number(r.project_steps) || 100; }
    if (r.harmonize && !r.project) out.harmonize = true;
    regions.push(out);
  });
  if (regions.length) layout.regions = regions;
  if (labelCanvas) {
    const png = labelMapPng();
    if (png) {
      const palette = {};
      for (const c of classes) if (c !== (bg.kind === "class" ? bg.class : null)) palette[c] = colorOf(c);
      layout.label_map = { ...state.labelExtra, png, palette };
    }
  }
  return layout;
}

// Turns a layout (an example, or a file) into the editor's state.
async function openLayout(layout) {
  remember();
  const w = layout.width | 0, h = layout.height | 0;
  const bg = layout.background || {};
  const pick = (obj, known) => Object.fromEntries(Object.entries(obj).filter(([k]) => !known.includes(k)));
  const background = {
    kind: "color", class: classes[0] || "", seed: bg.seed ?? 0, color: bg.color || "#202830", image: null,
    extra: pick(bg, ["color", "image", "class", "model", "seed"]),
  };
  if (bg.image) { background.kind = "image"; background.image = "data:image/png;base64," + bg.image; }
  else if (bg.class || bg.model) { background.kind = "class"; background.class = bg.class || bg.model; }
  masks.clear();
  const regions = [];
  for (const [i, spec] of (layout.regions || []).entries()) {
    const id = nextId++;
    let shape = ["box", "ellipse", "polygon"].find((k) => spec[k]);
    let geom = shape ? spec[shape] : null;
    if (spec.mask && spec.box) {
      shape = "mask";
      masks.set(id, await canvasFromUrl("data:image/png;base64," + spec.mask, w, h, spec.box).then(greyToAlpha));
      geom = null;
    }
    if (!shape) continue;
    regions.push({
      id, shape, geom, class: spec.class || spec.model || "", seed: spec.seed ?? randomSeed(), lock: spec.seed !== undefined,
      trunc: spec.trunc ?? null, blend: spec.blend || "laplacian", feather: spec.feather ?? null,
      color_match: !!spec.color_match, matte: spec.matte || "auto", project: !!spec.project,
      project_steps: spec.project_steps || 100, harmonize: !!spec.harmonize, z: spec.z ?? 0, order: i,
      extra: pick(spec, ["class", "model", "box", "ellipse", "polygon", "mask", "seed", "z", "trunc", "blend", "feather",
        "color_match", "matte", "project", "project_steps", "harmonize"]),
    });
  }
  regions.sort((a, b) => a.z - b.z || a.order - b.order);
  regions.forEach((r) => { delete r.z; delete r.order; });
  labelCanvas = null;
  if (layout.label_map) {
    // Repaint in the editor's colours, class by class.
    const src = await canvasFromUrl("data:image/png;base64," + layout.label_map.png, w, h);
    labelCanvas = recolor(src, layout.label_map.palette || {});
  }
  const extra = pick(layout, ["width", "height", "background", "regions", "label_map"]);
  delete extra.format; // the editor shows PNG
  delete extra.quality;
  const labelExtra = pick(layout.label_map || {}, ["png", "palette"]);
  state = { width: w, height: h, background, regions, extra, labelExtra };
  selected = null;
  syncForm();
  changed();
}

function greyToAlpha(c) {
  const ctx = c.getContext("2d");
  const img = ctx.getImageData(0, 0, c.width, c.height);
  for (let i = 0; i < img.data.length; i += 4) {
    const v = img.data[i + 3] ? img.data[i] : 0;
    img.data[i] = img.data[i + 1] = img.data[i + 2] = 255;
    img.data[i + 3] = v;
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

function recolor(src, palette) {
  const ctx = src.getContext("2d");
  const img = ctx.getImageData(0, 0, src.width, src.height);
  const map = Object.entries(palette).map(([cls, hex]) => [hexRgb(hex), hexRgb(colorOf(cls))]);
  const d = img.data;
  for (let i = 0; i < d.length; i += 4) {
    const hit = map.find(([from]) => from[0] === d[i] && from[1] === d[i + 1] && from[2] === d[i + 2]);
    if (hit) [d[i], d[i + 1], d[i + 2], d[i + 3]] = [...hit[1], 255];
    else d[i + 3] = 0;
  }
  ctx.putImageData(img, 0, 0);
  return src;
}
