// mixgan's layout editor: draws a layout on a canvas and composes it through the documented
// API (GET /v1/models, POST /v1/compose with server-sent progress events). No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#ff4d4d", "#4dd065", "#4d8dff", "#ffb347", "#c77dff", "#3fd0d0", "#ff70c8", "#c8e64d"];
const DEBOUNCE_MS = 350;

// ---- state -------------------------------------------------------------------------------
// Everything the layout holds, plain data so that undo can snapshot it. Mask and label-map
// pixels live in canvases kept beside the state (keyed by id) and are snapshotted as data URLs.
let state = {
  width: 512, height: 512,
  background: { kind: "class", class: "", seed: 3, color: "#202830", image: null },
  regions: [], // bottom first; each {id, shape, geom, class, seed, lock, trunc, blend, feather, color_match, matte, project, project_steps, harmonize}
  label: null, // data URL of the painted label map, or null
  extra: {}, // fields of an opened layout the editor has no control for, sent back as they were
  labelExtra: {},
};
let classes = [];
let selected = null; // region id
let tool = "ellipse";
let nextId = 1;
const masks = new Map(); // region id -> full-size canvas, for brushed regions
let labelCanvas = null;
const undoStack = [];
const redoStack = [];
let lastResult = null; // {url, mime}

function newCanvas(w, h) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  return c;
}

function snapshot() {
  const regions = state.regions.map((r) => (r.shape === "mask" ? { ...r, maskUrl: masks.get(r.id).toDataURL() } : { ...r }));
  return JSON.stringify({ ...state, regions, label: labelCanvas ? labelCanvas.toDataURL() : null });
}

async function restore(text) {
  const s = JSON.parse(text);
  masks.clear();
  for (const r of s.regions) {
    if (r.shape === "mask") {
      masks.set(r.id, await canvasFromUrl(r.maskUrl, s.width, s.height));
      delete r.maskUrl;
    }
  }
  labelCanvas = s.label ? await canvasFromUrl(s.label, s.width, s.height) : null;
  state = s;
  state.label = null;
  if (!state.regions.some((r) => r.id === selected)) selected = null;
  syncForm();
}

function canvasFromUrl(url, w, h, place) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = newCanvas(w, h);
      const ctx = c.getContext("2d");
      if (place) ctx.drawImage(img, place[0], place[1], place[2], place[3]);
      else ctx.drawImage(img, 0, 0, w, h);
      resolve(c);
    };
    img.onerror = () => reject(new Error("could not read the picture"));
    img.src = url;
  });
}

// Call before every change: the state as it was goes on the undo stack.
function remember() {
  undoStack.push(snapshot());
  if (undoStack.length > 100) undoStack.shift();
  redoStack.length = 0;
}

function changed() {
  renderList();
  renderEditor();
  drawOverlay();
  updateDownloads();
  schedule();
}

async function undo() {
  if (!undoStack.length) return;
  redoStack.push(snapshot());
  await restore(undoStack.pop());
  changed();
}

async function redo() {
  if (!redoStack.length) return;
  undoStack.push(snapshot());
  await restore(redoStack.pop());
  changed();
}

const randomSeed = () => Math.floor(Math.random() * 100000);
const regionById = (id) => state.regions.find((r) => r.id === id);
const colorOf = (cls) => COLORS[Math.max(0, classes.indexOf(cls)) % COLORS.length];

function addRegion(shape, geom) {
  remember();
  const r = {
    id: nextId++, shape, geom, class: $("draw-class").value, seed: randomSeed(), lock: false, trunc: null,
    blend: "laplacian", feather: null, color_match: false, matte: "auto", project: false, project_steps: 100,
    harmonize: false, extra: {},
  };
  state.regions.push(r);
  selected = r.id;
  return r;
}

// ---- the layout JSON ---------------------------------------------------------------------

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
  state = { width: w, height: h, background, regions, label: null, extra, labelExtra };
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

// ---- composing ---------------------------------------------------------------------------

let timer = null;
let inFlight = null; // AbortController of the running request

function schedule() {
  if (!$("live").checked) return;
  clearTimeout(timer);
  timer = setTimeout(compose, DEBOUNCE_MS);
}

function headers() {
  const h = { "content-type": "application/json", accept: "text/event-stream" };
  const key = $("api-key").value.trim();
  if (key) h.authorization = "Bearer " + key;
  return h;
}

// Whether a preview is due or on its way (the browser tests wait on it).
function busy() {
  return timer !== null || inFlight !== null;
}

async function compose() {
  clearTimeout(timer);
  timer = null;
  if (inFlight) inFlight.abort(); // the server stops the old request when we hang up
  const controller = new AbortController();
  inFlight = controller;
  const body = JSON.stringify(layoutJson());
  setProgress(0, 1, "sending");
  $("error").textContent = "";
  document.body.dataset.composing = "1";
  try {
    const resp = await fetch("/v1/compose", { method: "POST", headers: headers(), body, signal: controller.signal });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error(`${resp.status}: ${err.error ? err.error.message : resp.statusText}`);
    }
    await readEvents(resp, controller);
  } catch (e) {
    if (e.name !== "AbortError") {
      $("error").textContent = e.message;
      setProgress(0, 1, "failed");
    }
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      delete document.body.dataset.composing;
    }
  }
}

// Reads server-sent events from the answer's body as they come.
async function readEvents(resp, controller) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const plan = { total: 1, searched: 0, batches: 0, jobs: 0 };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = (block.match(/^event: ?(.*)$/m) || [])[1];
      const data = (block.match(/^data: ?(.*)$/m) || [])[1];
      if (!name || data === undefined) continue; // a keep-alive comment
      if (controller.signal.aborted) return;
      onEvent(name, JSON.parse(data), plan);
    }
  }
}

function onEvent(name, data, plan) {
  if (name === "queued") setProgress(0, 1, "queued");
  if (name === "planned") {
    plan.jobs = data.jobs.length;
    plan.total = data.search_steps + plan.jobs + 1;
    setProgress(0, plan.total, `planned: ${data.regions} regions`);
  }
  if (name === "step") {
    plan.searched = data.done;
    setProgress(plan.searched + plan.batches, plan.total, `${data.search} ${data.done}/${data.total}, loss ${data.loss.toFixed(4)}`);
  }
  if (name === "batch") {
    plan.batches += 1;
    setProgress(plan.searched + plan.batches, plan.total, `${data.model}: ${data.patches} patches`);
  }
  if (name === "composited") setProgress(plan.total - 0.5, plan.total, "composited");
  if (name === "error") {
    $("error").textContent = `${data.status}: ${data.error.message}`;
    setProgress(0, 1, "failed");
  }
  if (name === "result") {
    setProgress(1, 1, "done");
    showResult(data);
  }
}

function setProgress(value, max, text) {
  $("progress").max = max;
  $("progress").value = value;
  $("progress-text").textContent = text;
}

function showResult(data) {
  const url = `data:${data.mime};base64,${data.image}`;
  const img = new Image();
  img.onload = () => {
    const c = $("result");
    c.width = data.width; c.height = data.height;
    c.getContext("2d").drawImage(img, 0, 0);
    lastResult = { url, mime: data.mime };
    updateDownloads();
    document.body.dataset.composed = String(Number(document.body.dataset.composed || 0) + 1);
  };
  img.src = url;
  const stages = ["route", "project", "queue", "generate", "composite", "encode", "total"];
  const rows = stages.filter((k) => k in data.timings_ms).map((k) => `<tr><td>${k}</td><td>${data.timings_ms[k].toFixed(1)} ms</td></tr>`);
  $("timings").innerHTML = rows.join("");
}

function updateDownloads() {
  const a = $("download-image");
  if (lastResult) a.href = lastResult.url;
  const blob = new Blob([JSON.stringify(layoutJson(), null, 2)], { type: "application/json" });
  const link = $("download-layout");
  if (link.dataset.url) URL.revokeObjectURL(link.dataset.url);
  link.dataset.url = link.href = URL.createObjectURL(blob);
}

// ---- drawing on the canvas ---------------------------------------------------------------

const overlay = () => $("overlay");

function canvasPoint(ev) {
  const rect = overlay().getBoundingClientRect();
  return [
    Math.round((ev.clientX - rect.left) * (state.width / rect.width)),
    Math.round((ev.clientY - rect.top) * (state.height / rect.height)),
  ];
}

let drag = null; // what the pointer is doing
let polygon = null; // points of the polygon being drawn

function onDown(ev) {
  const p = canvasPoint(ev);
  overlay().setPointerCapture(ev.pointerId);
  if (tool === "box" || tool === "ellipse") drag = { kind: tool, from: p, to: p };
  else if (tool === "polygon") {
    if (!polygon) polygon = [];
    const first = polygon[0];
    if (polygon.length >= 3 && first && Math.hypot(first[0] - p[0], first[1] - p[1]) < 8) return closePolygon();
    polygon.push(p);
    drawOverlay();
  } else if (tool === "brush" || tool === "label") {
    remember();
    let target;
    if (tool === "label") {
      if (!labelCanvas) labelCanvas = newCanvas(state.width, state.height);
      target = labelCanvas;
    } else {
      const sel = regionById(selected);
      let r = sel && sel.shape === "mask" ? sel : null;
      if (!r) {
        undoStack.pop(); // addRegion remembers for itself
        r = addRegion("mask", null);
        masks.set(r.id, newCanvas(state.width, state.height));
      }
      target = masks.get(r.id);
    }
    drag = { kind: "paint", target, last: p };
    stamp(target, p, p);
    drawOverlay();
  } else if (tool === "select") {
    const hit = hitTest(p);
    selected = hit ? hit.id : null;
    if (hit && hit.shape !== "mask") {
      remember();
      drag = { kind: "move", region: hit, last: p, moved: false };
    }
    renderList();
    renderEditor();
    drawOverlay();
  }
}

function onMove(ev) {
  if (!drag) return;
  const p = canvasPoint(ev);
  if (drag.kind === "box" || drag.kind === "ellipse") drag.to = p;
  else if (drag.kind === "paint") {
    stamp(drag.target, drag.last, p);
    drag.last = p;
  } else if (drag.kind === "move") {
    const [dx, dy] = [p[0] - drag.last[0], p[1] - drag.last[1]];
    moveRegion(drag.region, dx, dy);
    drag.last = p;
    drag.moved = true;
  }
  drawOverlay();
}

function onUp() {
  if (!drag) return;
  const d = drag;
  drag = null;
  if (d.kind === "box" || d.kind === "ellipse") {
    const [x0, y0] = [Math.min(d.from[0], d.to[0]), Math.min(d.from[1], d.to[1])];
    const [w, h] = [Math.abs(d.to[0] - d.from[0]), Math.abs(d.to[1] - d.from[1])];
    if (w < 4 || h < 4) return drawOverlay();
    const geom = d.kind === "box" ? [x0, y0, w, h] : [x0 + w / 2, y0 + h / 2, w / 2, h / 2];
    addRegion(d.kind, geom.map(Math.round));
  } else if (d.kind === "move" && !d.moved) {
    undoStack.pop();
    return;
  }
  changed();
}

function closePolygon() {
  if (polygon && polygon.length >= 3) addRegion("polygon", polygon);
  polygon = null;
  changed();
}

function stamp(target, from, to) {
  const ctx = target.getContext("2d");
  const size = Number($("brush-size").value);
  ctx.globalCompositeOperation = $("erase").checked ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = tool === "label" ? colorOf($("draw-class").value) : "#fff";
  ctx.lineWidth = size;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0] + 0.01, to[1]);
  ctx.stroke();
  ctx.globalCompositeOperation = "source-over";
}

function moveRegion(r, dx, dy) {
  if (r.shape === "box" || r.shape === "ellipse") r.geom = [r.geom[0] + dx, r.geom[1] + dy, r.geom[2], r.geom[3]];
  if (r.shape === "polygon") r.geom = r.geom.map(([x, y]) => [x + dx, y + dy]);
}

function hitTest([x, y]) {
  for (let i = state.regions.length - 1; i >= 0; i--) {
    const r = state.regions[i];
    const g = r.geom;
    let inside = false;
    if (r.shape === "box") inside = x >= g[0] && y >= g[1] && x < g[0] + g[2] && y < g[1] + g[3];
    if (r.shape === "ellipse") inside = ((x - g[0]) / g[2]) ** 2 + ((y - g[1]) / g[3]) ** 2 <= 1;
    if (r.shape === "polygon") {
      for (let a = 0, b = g.length - 1; a < g.length; b = a++) {
        if ((g[a][1] > y) !== (g[b][1] > y) && x < ((g[b][0] - g[a][0]) * (y - g[a][1])) / (g[b][1] - g[a][1]) + g[a][0]) inside = !inside;
      }
    }
    if (r.shape === "mask") inside = masks.get(r.id).getContext("2d").getImageData(x, y, 1, 1).data[3] > 0;
    if (inside) return r;
  }
  return null;
}

function tracePath(ctx, r) {
  const g = r.geom;
  ctx.beginPath();
  if (r.shape === "box") ctx.rect(g[0], g[1], g[2], g[3]);
  if (r.shape === "ellipse") ctx.ellipse(g[0], g[1], g[2], g[3], 0, 0, Math.PI * 2);
  if (r.shape === "polygon") { g.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y))); ctx.closePath(); }
}

function drawOverlay() {
  // Small canvases are shown at least 512 pixels wide.
  $("canvas-wrap").style.width = `${Math.max(state.width, 512)}px`;
  const c = overlay();
  if (c.width !== state.width || c.height !== state.height) { c.width = state.width; c.height = state.height; }
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const show = $("show-masks").checked;
  if (show && labelCanvas) { ctx.globalAlpha = 0.45; ctx.drawImage(labelCanvas, 0, 0); ctx.globalAlpha = 1; }
  for (const r of state.regions) {
    const color = colorOf(r.class);
    const isSel = r.id === selected;
    if (!show && !isSel) continue;
    ctx.lineWidth = isSel ? 3 : 1.5;
    ctx.strokeStyle = color;
    ctx.setLineDash(isSel ? [] : [6, 4]);
    if (r.shape === "mask") {
      const tint = newCanvas(state.width, state.height);
      const t = tint.getContext("2d");
      t.drawImage(masks.get(r.id), 0, 0);
      t.globalCompositeOperation = "source-in";
      t.fillStyle = color;
      t.fillRect(0, 0, tint.width, tint.height);
      ctx.globalAlpha = isSel ? 0.55 : 0.35;
      ctx.drawImage(tint, 0, 0);
      ctx.globalAlpha = 1;
    } else {
      tracePath(ctx, r);
      ctx.stroke();
    }
  }
  ctx.setLineDash([4, 4]);
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 1.5;
  if (drag && (drag.kind === "box" || drag.kind === "ellipse")) {
    const [x0, y0] = [Math.min(drag.from[0], drag.to[0]), Math.min(drag.from[1], drag.to[1])];
    const [w, h] = [Math.abs(drag.to[0] - drag.from[0]), Math.abs(drag.to[1] - drag.from[1])];
    ctx.beginPath();
    if (drag.kind === "box") ctx.rect(x0, y0, w, h);
    else ctx.ellipse(x0 + w / 2, y0 + h / 2, w / 2, h / 2, 0, 0, Math.PI * 2);
    ctx.stroke();
  }
  if (polygon) {
    ctx.beginPath();
    polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
    for (const [x, y] of polygon) ctx.strokeRect(x - 3, y - 3, 6, 6);
  }
  ctx.setLineDash([]);
}

// ---- panels ------------------------------------------------------------------------------

function describe(r) {
  const g = r.geom;
  if (r.shape === "mask") return "brushed mask";
  if (r.shape === "polygon") return `polygon, ${g.length} points`;
  return `${r.shape} ${g.map((v) => Math.round(v)).join(", ")}`;
}

let dragFrom = null;

function renderList() {
  const list = $("regions");
  list.innerHTML = "";
  [...state.regions].reverse().forEach((r) => {
    const li = document.createElement("li");
    li.draggable = true;
    li.dataset.id = r.id;
    li.className = r.id === selected ? "selected" : "";
    li.innerHTML = `<span class="swatch" style="background:${colorOf(r.class)}"></span><b></b> <span>#${r.seed}${r.lock ? " (locked)" : ""}</span><span class="what"></span>`;
    li.querySelector("b").textContent = r.class;
    li.querySelector(".what").textContent = describe(r) + (r.project ? ", project" : "");
    li.onclick = () => { selected = r.id; renderList(); renderEditor(); drawOverlay(); };
    li.ondragstart = (ev) => { dragFrom = r.id; ev.dataTransfer.setData("text/plain", String(r.id)); };
    li.ondragover = (ev) => { ev.preventDefault(); li.classList.add("drop-target"); };
    li.ondragleave = () => li.classList.remove("drop-target");
    li.ondrop = (ev) => { ev.preventDefault(); reorder(dragFrom, r.id); };
    list.appendChild(li);
  });
}

// Puts region `from` just in front of region `onto` (the list shows the front first).
function reorder(from, onto) {
  if (from === null || from === onto) return;
  remember();
  const moving = regionById(from);
  state.regions = state.regions.filter((r) => r.id !== from);
  const at = state.regions.findIndex((r) => r.id === onto);
  state.regions.splice(at + 1, 0, moving);
  changed();
}

const FIELDS = {
  "re-class": ["class", "value"], "re-seed": ["seed", "number"], "re-lock": ["lock", "checked"],
  "re-trunc": ["trunc", "optional"], "re-blend": ["blend", "value"], "re-feather": ["feather", "optional"],
  "re-color-match": ["color_match", "checked"], "re-matte": ["matte", "value"], "re-project": ["project", "checked"],
  "re-project-steps": ["project_steps", "number"], "re-harmonize": ["harmonize", "checked"],
};

function renderEditor() {
  const r = regionById(selected);
  $("region-editor").hidden = !r;
  if (!r) return;
  $("re-name").textContent = `${state.regions.length - state.regions.indexOf(r)} of ${state.regions.length}`;
  for (const [id, [key, how]] of Object.entries(FIELDS)) {
    const el = $(id);
    if (how === "checked") el.checked = !!r[key];
    else el.value = r[key] ?? "";
  }
}

function bindEditor() {
  for (const [id, [key, how]] of Object.entries(FIELDS)) {
    $(id).addEventListener("change", () => {
      const r = regionById(selected);
      if (!r) return;
      remember();
      const el = $(id);
      r[key] = how === "checked" ? el.checked : how === "number" ? Number(el.value) : how === "optional" ? (el.value === "" ? null : Number(el.value)) : el.value;
      changed();
    });
  }
  $("re-dice").onclick = () => {
    const r = regionById(selected);
    if (!r) return;
    remember();
    r.seed = randomSeed();
    changed();
  };
  $("re-delete").onclick = () => {
    if (!regionById(selected)) return;
    remember();
    state.regions = state.regions.filter((r) => r.id !== selected);
    masks.delete(selected);
    selected = null;
    changed();
  };
}

function syncForm() {
  $("width").value = state.width;
  $("height").value = state.height;
  const bg = state.background;
  $("bg-kind").value = bg.kind;
  $("bg-class").value = bg.class;
  $("bg-seed").value = bg.seed;
  $("bg-color").value = bg.color;
  for (const kind of ["class", "color", "image"]) {
    document.querySelectorAll(".bg-" + kind).forEach((el) => (el.hidden = bg.kind !== kind));
  }
  drawBackdrop();
}

// Before the first answer the canvas shows the uploaded picture or the colour.
function drawBackdrop() {
  const c = $("result");
  if (c.width !== state.width || c.height !== state.height) { c.width = state.width; c.height = state.height; }
  const ctx = c.getContext("2d");
  const bg = state.background;
  if (bg.kind === "image" && bg.image) {
    const img = new Image();
    img.onload = () => ctx.drawImage(img, 0, 0, c.width, c.height);
    img.src = bg.image;
  } else if (!lastResult) {
    ctx.fillStyle = bg.kind === "color" ? bg.color : "#2a2f36";
    ctx.fillRect(0, 0, c.width, c.height);
  }
}

function setTool(name) {
  if (polygon && name !== "polygon") closePolygon();
  tool = name;
  document.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === name));
}

function resize(w, h) {
  remember();
  const scale = (c) => {
    const out = newCanvas(w, h);
    out.getContext("2d").drawImage(c, 0, 0, w, h);
    return out;
  };
  for (const [id, c] of masks) masks.set(id, scale(c));
  if (labelCanvas) labelCanvas = scale(labelCanvas);
  state.width = w;
  state.height = h;
  lastResult = null;
  syncForm();
  changed();
}

function bindForm() {
  document.querySelectorAll("[data-tool]").forEach((b) => (b.onclick = () => setTool(b.dataset.tool)));
  $("brush-size").oninput = () => ($("brush-size-out").textContent = $("brush-size").value);
  const size = () => {
    const w = Math.min(4096, Math.max(16, Number($("width").value) | 0));
    const h = Math.min(4096, Math.max(16, Number($("height").value) | 0));
    if (w !== state.width || h !== state.height) resize(w, h);
  };
  $("width").onchange = size;
  $("height").onchange = size;
  const bgChange = (apply) => () => { remember(); apply(state.background); syncForm(); changed(); };
  $("bg-kind").onchange = bgChange((bg) => Object.assign(bg, { kind: $("bg-kind").value, extra: {} }));
  $("bg-class").onchange = bgChange((bg) => (bg.class = $("bg-class").value));
  $("bg-seed").onchange = bgChange((bg) => (bg.seed = Number($("bg-seed").value) | 0));
  $("bg-color").onchange = bgChange((bg) => (bg.color = $("bg-color").value));
  $("bg-image").onchange = async () => {
    const file = $("bg-image").files[0];
    if (!file) return;
    const url = await new Promise((resolve) => { const r = new FileReader(); r.onload = () => resolve(r.result); r.readAsDataURL(file); });
    const img = await new Promise((resolve) => { const i = new Image(); i.onload = () => resolve(i); i.src = url; });
    const fit = Math.min(1, 1024 / Math.max(img.width, img.height));
    const [w, h] = [Math.round(img.width * fit), Math.round(img.height * fit)];
    if (w !== state.width || h !== state.height) resize(w, h);
    remember();
    Object.assign(state.background, { kind: "image", image: url, extra: {} });
    lastResult = null;
    syncForm();
    changed();
  };
  $("clear-label").onclick = () => { if (labelCanvas) { remember(); labelCanvas = null; changed(); } };
  $("undo").onclick = undo;
  $("redo").onclick = redo;
  $("reroll").onclick = () => {
    remember();
    for (const r of state.regions) if (!r.lock) r.seed = randomSeed();
    if (state.background.kind === "class") state.background.seed = randomSeed();
    syncForm();
    changed();
  };
  $("compose").onclick = compose;
  $("live").onchange = schedule;
  $("show-masks").onchange = drawOverlay;
  $("api-key").value = localStorage.getItem("mixgan-key") || "";
  $("api-key").onchange = () => { localStorage.setItem("mixgan-key", $("api-key").value); loadModels(); };
  $("open-layout").onchange = async () => {
    const file = $("open-layout").files[0];
    if (file) await openText(await file.text());
  };
  $("example").onchange = async () => {
    const name = $("example").value;
    if (name) await openText(await (await fetch(`/ui/examples/${name}`)).text());
  };
  const c = overlay();
  c.addEventListener("pointerdown", onDown);
  c.addEventListener("pointermove", onMove);
  c.addEventListener("pointerup", onUp);
  c.addEventListener("dblclick", () => tool === "polygon" && closePolygon());
  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, select")) return;
    const k = ev.key.toLowerCase();
    if ((ev.ctrlKey || ev.metaKey) && k === "z") { ev.preventDefault(); ev.shiftKey ? redo() : undo(); return; }
    if ((ev.ctrlKey || ev.metaKey) && k === "y") { ev.preventDefault(); redo(); return; }
    if (k === "escape") { polygon = null; drawOverlay(); }
    if (k === "enter" && polygon) closePolygon();
    if ((k === "delete" || k === "backspace") && selected) $("re-delete").click();
    const keys = { v: "select", b: "box", e: "ellipse", p: "polygon", m: "brush", l: "label" };
    if (keys[k] && !ev.ctrlKey && !ev.metaKey) setTool(keys[k]);
  });
}

async function openText(text) {
  try {
    await openLayout(JSON.parse(text));
  } catch (e) {
    $("error").textContent = "could not open that layout: " + e.message;
  }
}

async function loadModels() {
  const key = $("api-key").value.trim();
  const resp = await fetch("/v1/models", { headers: key ? { authorization: "Bearer " + key } : {} });
  if (!resp.ok) {
    $("status").textContent = resp.status === 401 ? "enter the API key" : `models: ${resp.status}`;
    return false;
  }
  const models = (await resp.json()).models;
  classes = [...new Set(models.flatMap((m) => m.classes))];
  for (const id of ["draw-class", "re-class", "bg-class"]) {
    $(id).innerHTML = classes.map((c) => `<option>${c.replace(/[<&"]/g, "")}</option>`).join("");
  }
  const pick = (want) => classes.find((c) => c === want) || classes[0] || "";
  $("draw-class").value = pick("face");
  if (!state.background.class) state.background.class = pick("background");
  $("status").textContent = `${models.length} models: ${models.map((m) => `${m.name} (${m.device})`).join(", ")}`;
  syncForm();
  document.body.dataset.ready = "1";
  return true;
}

async function loadExamples() {
  const resp = await fetch("/ui/examples/");
  if (!resp.ok) return;
  for (const name of await resp.json()) {
    const o = document.createElement("option");
    o.value = o.textContent = name;
    $("example").appendChild(o);
  }
}

bindForm();
bindEditor();
setTool("ellipse");
syncForm();
drawOverlay();
loadExamples();
loadModels().then((ok) => ok && changed());
