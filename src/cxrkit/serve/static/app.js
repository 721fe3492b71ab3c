// cxrkit page: upload -> POST /predict -> sorted bar chart; pick a finding -> POST /explain.
// Plain JS, no libraries, nothing loaded from the internet.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { info: null, file: null, results: null, selected: null, request: 0 };

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text || "";
  el.className = "status" + (kind ? " " + kind : "");
}

function mib(bytes) {
  return (bytes / (1024 * 1024)).toFixed(bytes < 10 * 1024 * 1024 ? 1 : 0) + " MiB";
}

async function loadInfo() {
  try {
    const r = await fetch("/info");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const info = await r.json();
    state.info = info;
    $("model").textContent = `${info.model} · ${info.checkpoint} · ${info.checkpoint_sha256.slice(0, 12)}`;
    $("model").title = `input ${info.input_size} px, TTA ${info.tta}` +
      (info.thresholds_source ? `, thresholds from ${info.thresholds_source}` : "");
    const mpx = (info.max_pixels / (1024 * 1024)).toFixed(0);  // 2^20 pixels, as the CLI
    $("limits").textContent = `PNG, JPEG or DICOM · up to ${mib(info.max_upload_bytes)} and ${mpx} megapixels`;
    if (info.warning) showWarning(info.warning);
    $("patient").hidden = !info.takes_metadata;
  } catch (e) {
    $("model").textContent = "model information unavailable";
    setStatus(`Could not reach the service: ${e.message}`, "error");
  }
}

function showWarning(text) {
  const el = $("warning");
  el.textContent = "Note: " + text;
  el.hidden = false;
}

function patientFields() {
  // age, sex and view for a model trained with them; empty ones are not sent
  if (!state.info || !state.info.takes_metadata) return {};
  const out = {};
  for (const k of ["age", "sex", "view"]) {
    const v = $(k).value.trim();
    if (v) out[k] = v;
  }
  return out;
}

function metadataText(res) {
  const m = res.metadata;
  if (!m) return "";
  if (!m.missing.length) return " Patient metadata: all given.";
  return ` Patient metadata missing (training defaults used): ${m.missing.join(", ")}.`;
}

async function post(path, file, extra) {
  const form = new FormData();
  form.append("file", file, file.name || "upload");
  for (const [k, v] of Object.entries({ ...patientFields(), ...(extra || {}) })) form.append(k, v);
  const r = await fetch(path, { method: "POST", body: form });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const detail = body && body.detail;
    const text = typeof detail === "string" ? detail : JSON.stringify(detail || r.statusText);
    throw new Error(`${r.status}: ${text}`);
  }
  return body;
}

async function handleFile(file) {
  if (!file) return;
  const req = ++state.request;
  state.file = file;
  state.results = null;
  $("chart").toggleAttribute("hidden", true);  // an SVG element has no .hidden property
  $("legend").hidden = true;
  $("overlay-fig").hidden = true;
  $("finding").disabled = true;
  $("pick").hidden = true;
  $("ood-alert").hidden = true;
  hidePreview();  // no stale or broken preview while this file is checked
  if (state.info && file.size > state.info.max_upload_bytes) {
    setStatus(`${file.name}: ${mib(file.size)} is over the upload limit of ${mib(state.info.max_upload_bytes)}.`, "error");
    return;
  }
  showPreview(file);
  setStatus(`Analysing ${file.name}…`, "busy");
  try {
    const res = await post("/predict", file);
    if (req !== state.request) return;  // a newer upload replaced this one
    state.results = res;
    showOod(res);
    drawChart(res);
    if (res.warning) showWarning(res.warning);
    const positives = res.findings.filter((f) => f.positive).length;
    setStatus(`${res.image.filename}: ${res.image.width}×${res.image.height} ${res.image.format}, ` +
      `${positives} of ${res.findings.length} findings at or above threshold.` + metadataText(res), "ok");
    const top = [...res.findings].sort((a, b) => b.probability - a.probability)[0];
    await explain(top.finding);
  } catch (e) {
    if (req === state.request) {
      hidePreview();  // a rejected upload leaves no preview of what was refused
      setStatus(e.message, "error");
    }
  }
}

function showOod(res) {
  const box = $("ood-alert");
  box.textContent = res.ood_flag ? res.ood_warning : "";
  box.hidden = !res.ood_flag;
}

function showPreview(file) {
  hidePreview();
  const isDicom = /\.dcm$/i.test(file.name) || file.type === "application/dicom";
  if (isDicom) return;  // browsers cannot draw DICOM
  const img = $("preview");
  const url = URL.createObjectURL(file);
  img.dataset.url = url;
  // shown once the browser has drawn it: a file it cannot draw never shows a broken box
  img.onload = () => { if (img.dataset.url === url) $("preview-fig").hidden = false; };
  img.onerror = () => { if (img.dataset.url === url) hidePreview(); };
  img.src = url;
  $("preview-caption").textContent = file.name;
}

function hidePreview() {
  const img = $("preview");
  $("preview-fig").hidden = true;
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  delete img.dataset.url;
  img.onload = img.onerror = null;
  img.removeAttribute("src");
}

async function explain(finding) {
  if (!state.file) return;
  const req = state.request;
  state.selected = finding;
  $("finding").value = finding;
  highlight(finding);
  $("overlay-caption").textContent = `Computing Grad-CAM for ${finding}…`;
  try {
    const res = await post("/explain", state.file, { finding });
    if (req !== state.request || state.selected !== finding) return;
    const img = $("overlay");
    img.src = "data:image/png;base64," + res.overlay_png_base64;
    img.alt = `Grad-CAM overlay for ${res.finding}`;
    $("overlay-caption").textContent =
      `Grad-CAM: ${res.finding}, p = ${res.probability.toFixed(3)} ` +
      `(threshold ${res.threshold.toFixed(3)}), on the ${res.cache_size}×${res.cache_size} px ` +
      "image the model saw — where it looked, not a diagnosis";
    $("overlay-fig").hidden = false;
  } catch (e) {
    if (req === state.request) {
      $("overlay-caption").textContent = "";
      setStatus(`Grad-CAM failed: ${e.message}`, "error");
    }
  }
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(res) {
  const rows = [...res.findings].sort((a, b) => b.probability - a.probability);
  const W = 640, rowH = 30, top = 28, left = 178, barW = 372;
  const H = top + rows.length * rowH + 6;
  const svg = $("chart");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    const x = left + t * barW;
    svg.append(el("line", { x1: x, x2: x, y1: top - 6, y2: H - 4, class: "gridline" }));
    svg.append(el("text", { x, y: top - 12, class: "axis", "text-anchor": "middle" }, `${t * 100}%`));
  }
  rows.forEach((f, i) => {
    const y = top + i * rowH;
    const g = el("g", { class: "bar" + (f.positive ? " pos" : ""), "data-finding": f.finding,
                        tabindex: "0", role: "button" });
    g.append(el("title", {}, `${f.finding}: probability ${f.probability.toFixed(4)}, ` +
      `threshold ${f.threshold.toFixed(4)}${f.positive ? " (positive)" : ""}`));
    g.append(el("rect", { x: 0, y, width: W, height: rowH, class: "hit" }));
    g.append(el("text", { x: left - 10, y: y + rowH / 2 + 5, class: "name", "text-anchor": "end" },
      f.finding.replace(/_/g, " ")));
    g.append(el("rect", { x: left, y: y + 7, width: barW, height: rowH - 14, rx: 3, class: "track" }));
    g.append(el("rect", { x: left, y: y + 7, width: Math.max(1.5, f.probability * barW),
                          height: rowH - 14, rx: 3, class: "fill" }));
    const tx = left + f.threshold * barW;
    g.append(el("line", { x1: tx, x2: tx, y1: y + 3, y2: y + rowH - 3, class: "thr" }));
    g.append(el("text", { x: left + barW + 10, y: y + rowH / 2 + 5, class: "value" },
      `${(f.probability * 100).toFixed(1)}%`));
    g.addEventListener("click", () => explain(f.finding));
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") explain(f.finding); });
    svg.append(g);
  });
  svg.setAttribute("aria-label", "Probability per finding, sorted: " +
    rows.map((f) => `${f.finding} ${(f.probability * 100).toFixed(1)}%`).join(", "));
  svg.toggleAttribute("hidden", false);
  $("legend").hidden = false;
  $("chart-hint").textContent = "Sorted by probability. Click a bar for its Grad-CAM overlay.";

  const select = $("finding");
  select.replaceChildren(...rows.map((f) => {
    const o = document.createElement("option");
    o.value = f.finding;
    o.textContent = `${f.finding.replace(/_/g, " ")} (${(f.probability * 100).toFixed(1)}%)`;
    return o;
  }));
  select.disabled = false;
  $("pick").hidden = false;
}

function highlight(finding) {
  for (const g of $("chart").querySelectorAll("g.bar")) {
    g.classList.toggle("selected", g.dataset.finding === finding);
  }
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => handleFile(ev.target.files[0]));
  $("finding").addEventListener("change", (ev) => explain(ev.target.value));
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => handleFile(e.dataTransfer.files[0]));
  for (const k of ["age", "sex", "view"]) {
    $(k).addEventListener("change", () => { if (state.file) handleFile(state.file); });
  }
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setup);
