// mixgan's layout editor, 3 of 5: composing: the debounced live preview, cancelling the
// request before it; the progress events read from the answer's body; the result and timings.
"use strict";

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
