// distgan-serve's page: plain JS modules, no build step, no request to any host but the server.
// Images come from the API as npy (exact uint8 pixels) and are drawn here; downloads and
// "copy command" use the server's PNG and its headers, so every file matches distgan-sample's.

import {
  $, api, blobUrl, clearErrors, commandOf, copyText, debounce, imageCanvas, parseNpy, saveBlob, setStatus, showCommand,
  showError,
} from "/static/lib.js";
import { downloadWalk, drawFrame, frameAt, renderWalk, stopWalk, toggleWalk } from "/static/walk.js";
import { renderMixing, showMixing } from "/static/mixing.js";

const state = {
  models: [],
  model: null,    // the chosen model's /api/meta
  limits: null,
  gridUrls: [],   // blob: URLs of the shown tiles
  gridParams: null,
  walk: null,     // walk.js's current walk
  requests: { grid: 0, walk: 0 },
};

const className = (index) => state.model.classes[index];

// --- the model panel ---

function fact(list, term, value, title) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.append(value); else dd.textContent = value;
  if (title) dd.title = title;
  list.append(dt, dd);
}

function showModel(meta) {
  const list = $("model-facts");
  list.replaceChildren();
  fact(list, "Dataset", meta.dataset);
  fact(list, "Architecture", `${meta.family}, nz ${meta.nz}`);
  fact(list, "Images", `${meta.width} × ${meta.height} ${meta.mode === "L" ? "grayscale" : "RGB"}`);
  fact(list, "Training step", meta.step.toLocaleString("en-US"));
  if (meta.conditional) {
    const names = document.createElement("span");
    names.append(`${meta.classes.length}: `);
    const rest = document.createElement("span");
    rest.className = "classes";
    rest.textContent = meta.classes.join(", ");
    names.append(rest);
    fact(list, "Classes", names);
  } else {
    fact(list, "Classes", "none (unconditional)");
  }
  if (meta.quantization !== "none") fact(list, "Quantization", meta.quantization);
  fact(list, "File", meta.file, meta.path);
  const hash = document.createElement("span");
  hash.className = "mono";
  hash.textContent = meta.sha256.slice(0, 12);
  fact(list, "SHA-256", hash, meta.sha256);

  for (const [select, withEvery] of [[$("class"), true], [$("walk-class"), false]]) {
    select.replaceChildren();
    const add = (value, label) => select.append(new Option(label, value));
    if (withEvery) add("", `each in turn (seed mod ${meta.classes.length})`);
    meta.classes.forEach((name, i) => add(String(i), name));
    add("all", "all classes (a row per seed)");
  }
  $("class-field").hidden = !meta.conditional;
  $("walk-class-field").hidden = !meta.conditional;
  document.title = `${meta.file} · distgan-serve`;
}

// --- the grid ---

function sampleParams() {
  const params = {
    model: state.model.id, seed: $("seed").value.trim(), n: $("n").value.trim(), psi: $("psi").value.trim(),
  };
  if (state.model.conditional && $("class").value !== "") params.class = $("class").value;
  return params;
}

function describeRequest(params, count) {
  const seed = Number(params.seed);
  const n = Number(params.n);
  const seeds = n === 1 ? `seed ${seed}` : `seeds ${seed}–${seed + n - 1}`;
  let cls = "";
  if (state.model.conditional) {
    if (params.class === undefined) cls = " · every class in turn";
    else if (params.class === "all") cls = " · all classes";
    else cls = ` · ${className(Number(params.class))}`;
  }
  return `${count} image${count === 1 ? "" : "s"} · ${seeds}${cls} · ψ ${params.psi}`;
}

async function generate() {
  const ticket = ++state.requests.grid;
  const params = sampleParams();
  clearErrors("sample");
  $("grid").setAttribute("aria-busy", "true");
  setStatus("rendering…");
  try {
    const response = await api("/api/sample", { ...params, format: "npy" });
    const { shape, data } = parseNpy(await response.arrayBuffer());
    const [count, height, width, channels] = shape;
    const urls = [];
    const size = height * width * channels;
    for (let i = 0; i < count; i++) urls.push(await blobUrl(imageCanvas(data, i * size, height, width, channels)));
    if (ticket !== state.requests.grid) { urls.forEach((u) => URL.revokeObjectURL(u)); return; }
    const seeds = response.headers.get("x-distgan-seeds").split(",").map(Number);
    const labelsText = response.headers.get("x-distgan-labels");
    const labels = labelsText ? labelsText.split(",").map(Number) : null;
    showGrid(urls, seeds, labels, Number(response.headers.get("x-distgan-columns")), width, params);
    showCommand($("command"), commandOf(response));
    $("grid-caption").textContent = describeRequest(params, count);
    $("copy-command").disabled = false;
    $("download-grid").disabled = false;
    setStatus(`${count} image${count === 1 ? "" : "s"} rendered`);
  } catch (error) {
    if (ticket === state.requests.grid) showError("sample", error);
  } finally {
    if (ticket === state.requests.grid) $("grid").setAttribute("aria-busy", "false");
  }
}

function tileFigure(url, seed, label, caption, shortCaption) {
  const figure = document.createElement("figure");
  figure.className = "tile";
  const button = document.createElement("button");
  button.type = "button";
  button.setAttribute("aria-label", `enlarge ${caption}`);
  const img = document.createElement("img");
  img.src = url;
  img.alt = caption;
  button.append(img);
  button.addEventListener("click", () => openLightbox(url, seed, label, caption));
  const figcaption = document.createElement("figcaption");
  figcaption.textContent = shortCaption;
  figcaption.title = caption;
  figure.append(button, figcaption);
  return figure;
}

function showGrid(urls, seeds, labels, columns, width, params) {
  state.gridUrls.forEach((u) => URL.revokeObjectURL(u));
  state.gridUrls = urls;
  state.gridParams = params;
  const byRow = params.class === "all"; // a row per seed, a column per class: label the rows, caption the class
  const grid = $("grid");
  const room = (grid.clientWidth || 800) - (byRow ? 72 : 0);
  const tile = Math.max(40, Math.min(width * 6, 168, Math.floor((room - 8 * (columns - 1)) / columns)));
  grid.style.setProperty("--tile", `${tile}px`);
  grid.style.gridTemplateColumns = `${byRow ? "auto " : ""}repeat(${columns}, ${tile}px)`;
  const cells = [];
  urls.forEach((url, i) => {
    if (byRow && i % columns === 0) {
      const rowLabel = document.createElement("div");
      rowLabel.className = "row-label";
      rowLabel.textContent = `seed ${seeds[i]}`;
      cells.push(rowLabel);
    }
    const label = labels ? className(labels[i]) : null;
    const caption = label ? `seed ${seeds[i]} · ${label}` : `seed ${seeds[i]}`;
    cells.push(tileFigure(url, seeds[i], labels ? labels[i] : null, caption, byRow ? label : caption));
  });
  grid.replaceChildren(...cells);
}

async function downloadGrid() {
  try {
    const response = await api("/api/sample", { ...state.gridParams, format: "png" });
    saveBlob(await response.blob(), response.headers.get("x-distgan-filename"));
  } catch (error) {
    showError("sample", error);
  }
}

// --- one image, enlarged ---

async function openLightbox(tileUrl, seed, label, caption) {
  const params = { model: state.model.id, seed, n: 1, psi: state.gridParams.psi };
  // The tile's class as the grid asked for it: no class keeps "every class in turn" in the file's text.
  if (label !== null && state.gridParams.class !== undefined) params.class = label;
  $("lightbox-image").src = tileUrl;
  $("lightbox-image").alt = caption;
  $("lightbox-caption").textContent = `${caption} · ψ ${params.psi}`;
  $("lightbox-command").textContent = "";
  const dialog = $("lightbox");
  dialog.dataset.seed = seed;
  dialog.dataset.label = label === null ? "" : label;
  $("lightbox-download").disabled = true;
  if (!dialog.open) dialog.showModal();
  try {
    const response = await api("/api/sample", params);
    const blob = await response.blob();
    dialog.file = { blob, name: response.headers.get("x-distgan-filename") };
    showCommand($("lightbox-command"), commandOf(response));
    $("lightbox-download").disabled = false;
  } catch (error) {
    setStatus(error.message, true);
  }
}

function walkFromLightbox(field) {
  const dialog = $("lightbox");
  $(field).value = dialog.dataset.seed;
  if (dialog.dataset.label !== "") $("walk-class").value = dialog.dataset.label;
  dialog.close();
  $("walk-form").scrollIntoView({ behavior: "smooth", block: "nearest" });
  renderWalk(state);
}

// --- the walk ---

// --- start ---

async function chooseModel(id) {
  const response = await api("/api/meta", { model: id });
  state.model = await response.json();
  showModel(state.model);
  showMixing(state.model);
  $("walk-card").hidden = true;
  stopWalk(state);
  await generate();
}

async function start() {
  const listing = await (await api("/api/models")).json();
  state.models = listing.models;
  state.limits = listing.limits;
  const picker = $("model");
  listing.models.forEach((m) => picker.append(new Option(`${m.id} (${m.family}, ${m.width}×${m.height})`, m.id)));
  $("model-pick").hidden = listing.models.length < 2;
  picker.addEventListener("change", () => chooseModel(picker.value).catch((e) => setStatus(e.message, true)));

  const regenerate = debounce(generate, 150);
  const generateNow = () => { regenerate.cancel(); generate(); };
  $("sample-form").addEventListener("submit", (event) => { event.preventDefault(); generateNow(); });
  $("random").addEventListener("click", () => {
    const n = Math.max(1, Number($("n").value) || 1);
    const top = state.limits.seed[1] - n + 1;
    $("seed").value = String(crypto.getRandomValues(new Uint32Array(1))[0] % (top + 1));
    generateNow();
  });
  for (const id of ["seed", "n", "psi"]) $(id).addEventListener("change", regenerate);
  $("class").addEventListener("change", regenerate);
  $("psi-range").addEventListener("input", () => { $("psi").value = $("psi-range").value; regenerate(); });
  $("psi").addEventListener("input", () => {
    const value = Number($("psi").value);
    if ($("psi").value.trim() !== "" && Number.isFinite(value)) $("psi-range").value = String(value);
  });
  $("download-grid").addEventListener("click", downloadGrid);
  $("copy-command").addEventListener("click", () => copyText($("command").textContent, "command"));

  $("mixing-form").addEventListener("submit", (event) => { event.preventDefault(); renderMixing(state); });
  $("walk-form").addEventListener("submit", (event) => { event.preventDefault(); renderWalk(state); });
  $("walk-slider").addEventListener("input", () => {
    stopWalk(state);
    drawFrame(state, Number($("walk-slider").value));
  });
  $("play").addEventListener("click", () => toggleWalk(state));
  $("walk-strip").addEventListener("click", (event) => { stopWalk(state); drawFrame(state, frameAt(state, event)); });
  $("download-walk").addEventListener("click", () => downloadWalk(state));
  $("copy-walk-command").addEventListener("click", () => copyText($("walk-command").textContent, "walk-command"));

  $("lightbox-close").addEventListener("click", () => $("lightbox").close());
  $("lightbox").addEventListener("click", (event) => { if (event.target === $("lightbox")) $("lightbox").close(); });
  $("lightbox-download").addEventListener("click", () => saveBlob($("lightbox").file.blob, $("lightbox").file.name));
  $("lightbox-copy").addEventListener("click", () => copyText($("lightbox-command").textContent, "lightbox-command"));
  $("lightbox-walk-from").addEventListener("click", () => walkFromLightbox("seed-a"));
  $("lightbox-walk-to").addEventListener("click", () => walkFromLightbox("seed-b"));

  await chooseModel(listing.models[0].id);
}

start().catch((error) => setStatus(`cannot start: ${error.message}`, true));
