// mixgan's layout editor, 5 of 5: the side panels (the region list with drag-to-reorder, the
// region's settings, canvas, background, files), keyboard shortcuts, and start-up.
"use strict";

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
