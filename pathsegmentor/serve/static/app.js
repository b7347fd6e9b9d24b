// pathsegmentor viewer: OpenSeadragon over the server's Deep Zoom tiles, prompts -> overlays.
"use strict";
const $ = (id) => document.getElementById(id);
const S = { image: null, model: null, result: null, layers: [], jobLayers: [], mode: null, points: [], job: null,
            drag: null, marks: [] };
window.pathseg = S;

const viewer = OpenSeadragon({
  element: $("viewer"), prefixUrl: "/static/vendor/openseadragon/images/", drawer: "canvas",
  showNavigator: false, gestureSettingsMouse: { clickToZoom: false }, crossOriginPolicy: false,
});
S.viewer = viewer;

function busy(on) { document.body.dataset.state = on ? "busy" : "idle"; }
function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = !msg; }
function status(msg) { $("status").textContent = msg; }

async function api(method, url, body) {
  const opt = { method, headers: {} };
  if (body !== undefined) { opt.body = JSON.stringify(body); opt.headers["content-type"] = "application/json"; }
  const r = await fetch(url, opt);
  const data = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

async function run(fn) {
  busy(true); showError("");
  try { await fn(); } catch (e) { showError(e.message); } finally { busy(false); }
}

async function loadFiles() {
  const data = await api("GET", "/api/files");
  S.model = data.model;
  $("file").innerHTML = data.files.map((f) => `<option value="${f.name}">${f.name} (${f.kind})</option>`).join("");
  status(`model ${data.model.name}: ${data.model.mpp} µm/px, ${data.model.input_size} px windows`);
  if (data.initial && !S.image) {  // `pathsegmentor serve FILE`: FILE is open at once
    $("file").value = data.initial;
    await openFile();
  }
}

function clearLayers(list) { for (const l of list.splice(0)) viewer.world.removeItem(l.item); }
function clearMarks() { for (const m of S.marks.splice(0)) viewer.removeOverlay(m); S.points = []; }

async function openFile() {
  const info = await api("POST", "/api/open", { file: $("file").value });
  S.image = info; S.result = null;
  clearLayers(S.layers); clearLayers(S.jobLayers); clearMarks();
  $("legend").innerHTML = ""; $("exports").innerHTML = ""; $("job-files").innerHTML = "";
  const mpp = info.mpp ? `${Number(info.mpp.toPrecision(3))} µm/px (${info.mpp_source})` : "mpp unknown";
  $("info").textContent = `${info.name}: ${info.width}×${info.height} px · ${mpp} · ${info.levels.length} level(s) · ${info.backend}`;
  $("job-start").disabled = info.kind !== "slide";
  await new Promise((resolve) => { viewer.addOnceHandler("open", resolve); viewer.open(info.dzi); });
}

function prompts() { return $("prompts").value.split(",").map((p) => p.trim()).filter(Boolean); }

function imageRect(vpRect) {  // viewport rect -> level-0 rect clipped to the image
  const r = viewer.viewport.viewportToImageRectangle(vpRect);
  const x0 = Math.max(0, r.x), y0 = Math.max(0, r.y);
  const x1 = Math.min(S.image.width, r.x + r.width), y1 = Math.min(S.image.height, r.y + r.height);
  return { x: x0, y: y0, w: Math.max(1, x1 - x0), h: Math.max(1, y1 - y0) };
}

function viewRegion() { return imageRect(viewer.viewport.getBounds(true)); }

function promptWindow(x0, y0, x1, y1) {  // one model window (level-0 px) around a box / points
  const ds = S.image.mpp ? S.model.mpp / S.image.mpp : 1;
  const side = Math.max(x1 - x0, y1 - y0, S.model.input_size * ds * 0.98);
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const x = Math.max(0, Math.min(S.image.width - side, cx - side / 2));
  const y = Math.max(0, Math.min(S.image.height - side, cy - side / 2));
  return { x, y, w: Math.min(side, S.image.width), h: Math.min(side, S.image.height) };
}

async function segment(region, extra = {}) {
  if (!S.image) throw new Error("open a file first");
  const res = await api("POST", "/api/segment", { image: S.image.id, prompts: prompts(), region, ...extra });
  showResult(res);
}

function opacity() { return parseFloat($("opacity").value); }

function showResult(res) {
  S.result = res;
  clearLayers(S.layers);
  const W = S.image.width, r = res.region;
  const legend = $("legend"); legend.innerHTML = "";
  res.prompts.forEach((p) => {
    const li = document.createElement("li");
    li.style.borderColor = `rgb(${p.color.join(",")})`;
    const rz = p.resolution || {};
    let text = p.prompt;
    if (!p.answered) {
      li.className = "refused";
      text += ` — refused: ${p.reason}` + (p.suggestions.length ? ` Try: ${p.suggestions.join(", ")}` : "");
    } else {
      if (p.substituted) text += ` → answered as ${rz.answered_as} (${rz.relation})`;
      text += ` · presence ${p.presence.toFixed(2)}` + (p.present ? "" : " (absent)");
      if (p.instances !== null) text += ` · ${p.instances} objects`;
    }
    li.innerHTML = `<label><input type="checkbox" checked data-k="${p.index}"> </label>`;
    li.querySelector("label").append(text);
    legend.append(li);
    if (!p.answered) return;
    const layer = { index: p.index, visible: true, item: null };
    S.layers.push(layer);
    viewer.addTiledImage({ tileSource: { type: "image", url: `${p.overlay}?r=${res.id}` }, x: r.x / W, y: r.y / W,
                           width: r.w / W, opacity: opacity(),
                           success: (ev) => { layer.item = ev.item; } });
    li.querySelector("input").addEventListener("change", (ev) => {
      layer.visible = ev.target.checked;
      if (layer.item) layer.item.setOpacity(layer.visible ? opacity() : 0);
    });
  });
  const base = `/api/results/${res.id}`;
  $("exports").innerHTML = `<a id="export-geojson" href="${base}/export.geojson" download>GeoJSON</a>` +
    `<a id="export-csv" href="${base}/objects.csv" download>objects CSV</a>` +
    res.prompts.map((p) => `<a href="${base}/mask/${p.index}.png" download>mask ${p.index}</a>`).join("");
  const t = res.timings;
  status(`${res.work_size.width}×${res.work_size.height} px at ${S.model.mpp} µm/px: ` +
         `read ${t.read_s.toFixed(2)} s, model ${t.segment_s.toFixed(2)} s, instances ${t.instances_s.toFixed(2)} s; ` +
         `embedding ${res.cache.encoded ? "computed" : "reused"}` + (res.note ? ` · ${res.note}` : "") +
         (res.warnings.length ? ` · ${res.warnings.join("; ")}` : ""));
}

function setMode(mode) {
  S.mode = S.mode === mode ? null : mode;
  for (const [id, m] of [["draw-region", "region"], ["draw-box", "box"], ["points-mode", "points"]])
    $(id).classList.toggle("active", S.mode === m);
  $("mode").textContent = { region: "drag a rectangle on the image", box: "drag a box prompt",
                            points: "click: foreground · shift+click: background" }[S.mode] || "";
}

function mark(cls, vpRect) {
  const el = document.createElement("div"); el.className = cls;
  viewer.addOverlay(el, vpRect); S.marks.push(el); return el;
}

viewer.addHandler("canvas-press", (e) => {
  if (!S.image || (S.mode !== "region" && S.mode !== "box")) return;
  e.preventDefaultAction = true;
  const p = viewer.viewport.pointFromPixel(e.position);
  S.drag = { start: p, el: mark(S.mode === "box" ? "boxprompt" : "region", new OpenSeadragon.Rect(p.x, p.y, 0, 0)) };
});
viewer.addHandler("canvas-drag", (e) => {
  if (!S.drag) return;
  e.preventDefaultAction = true;
  const p = viewer.viewport.pointFromPixel(e.position), s = S.drag.start;
  viewer.updateOverlay(S.drag.el, new OpenSeadragon.Rect(Math.min(s.x, p.x), Math.min(s.y, p.y),
                                                         Math.abs(p.x - s.x), Math.abs(p.y - s.y)));
});
viewer.addHandler("canvas-release", (e) => {
  if (!S.drag) return;
  const p = viewer.viewport.pointFromPixel(e.position), s = S.drag.start;
  S.drag = null;
  const rect = imageRect(new OpenSeadragon.Rect(Math.min(s.x, p.x), Math.min(s.y, p.y),
                                                Math.abs(p.x - s.x), Math.abs(p.y - s.y)));
  const mode = S.mode; setMode(mode);
  if (mode === "region") run(() => segment(rect));
  else run(() => segment(promptWindow(rect.x, rect.y, rect.x + rect.w, rect.y + rect.h),
                         { box: [rect.x, rect.y, rect.x + rect.w, rect.y + rect.h] }));
});
viewer.addHandler("canvas-click", (e) => {
  if (!S.image || S.mode !== "points" || !e.quick) return;
  e.preventDefaultAction = true;
  const vp = viewer.viewport.pointFromPixel(e.position), ip = viewer.viewport.viewportToImageCoordinates(vp);
  const label = e.originalEvent.shiftKey ? 0 : 1;
  S.points.push([ip.x, ip.y, label]);
  mark(label ? "point" : "point bg", new OpenSeadragon.Point(vp.x, vp.y));
  const xs = S.points.map((q) => q[0]), ys = S.points.map((q) => q[1]);
  run(() => segment(promptWindow(Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)),
                    { points: S.points }));
});

async function startJob() {
  if (!S.image) throw new Error("open a slide first");
  const job = await api("POST", "/api/jobs", { image: S.image.id, prompts: prompts() });
  S.job = job.id; $("job-cancel").disabled = false; $("job-files").innerHTML = "";
  pollJob();
}

async function pollJob() {
  let job;
  try { job = await api("GET", `/api/jobs/${S.job}`); } catch (e) { showError(e.message); return; }
  $("job-progress").value = job.progress;
  const total = job.bands_total ? `/${job.bands_total}` : "";
  $("job-status").textContent = `job ${job.id}: ${job.state} · ${job.bands_done}${total} bands · ${job.elapsed_s.toFixed(1)} s`;
  if (job.state === "queued" || job.state === "running") { setTimeout(pollJob, 500); return; }
  $("job-cancel").disabled = true;
  if (job.state === "error") showError(`whole-slide job failed: ${job.error}`);
  if (job.state !== "done") return;
  clearLayers(S.jobLayers);
  job.masks.forEach((m) => {
    const layer = { index: m.index, item: null };
    S.jobLayers.push(layer);
    viewer.addTiledImage({ tileSource: m.dzi, x: 0, y: 0, width: 1, opacity: opacity(),
                           success: (ev) => { layer.item = ev.item; } });
  });
  $("job-files").innerHTML = job.files.map((u) => `<a href="${u}" download>${u.split("/").pop()}</a>`).join("");
}

$("open").addEventListener("click", () => run(openFile));
$("segment-view").addEventListener("click", () => run(() => segment(viewRegion())));
$("draw-region").addEventListener("click", () => setMode("region"));
$("draw-box").addEventListener("click", () => setMode("box"));
$("points-mode").addEventListener("click", () => setMode("points"));
$("clear").addEventListener("click", () => { clearMarks(); clearLayers(S.layers); $("legend").innerHTML = ""; });
$("prompts").addEventListener("keydown", (e) => { if (e.key === "Enter") run(() => segment(viewRegion())); });
$("opacity").addEventListener("input", () => {
  for (const l of S.layers.concat(S.jobLayers)) if (l.item) l.item.setOpacity(l.visible === false ? 0 : opacity());
});
$("job-start").addEventListener("click", () => run(startJob));
$("job-cancel").addEventListener("click", () => run(() => api("DELETE", `/api/jobs/${S.job}`)));
busy(false);
run(loadFiles);
