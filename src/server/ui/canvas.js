// mixgan's layout editor, 4 of 5: the canvas: box, ellipse, polygon, brush, label and select
// tools under the pointer, and the overlay that shows the regions' shapes and masks.
"use strict";

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
