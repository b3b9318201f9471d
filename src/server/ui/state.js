// mixgan's layout editor, 1 of 5: the editor's state, undo and redo. The page loads state.js,
// layout.js, compose.js, canvas.js and panels.js in that order as classic scripts, which share
// one global scope; no libraries, no build step. It speaks only the documented API
// (GET /v1/models, POST /v1/compose with server-sent progress events).
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#ff4d4d", "#4dd065", "#4d8dff", "#ffb347", "#c77dff", "#3fd0d0", "#ff70c8", "#c8e64d"];
const DEBOUNCE_MS = 350;

// Everything the layout holds, plain data so that undo can snapshot it. Mask and label-map
// pixels live in canvases kept beside the state (keyed by id) and are snapshotted as data URLs.
let state = {
  width: 512, height: 512,
  background: { kind: "class", class: "", seed: 3, color: "#202830", image: null },
  regions: [], // bottom first; each {id, shape, geom, class, seed, lock, trunc, blend, feather, color_match, matte, project, project_steps, harmonize}
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
  delete s.label; // the snapshot's label-map pixels, now in labelCanvas
  state = s;
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
