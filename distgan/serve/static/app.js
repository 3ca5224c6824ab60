// distgan-serve's page: plain JS modules, no build step, no request to any host but the server.
// Every URL is relative, so the page works under a proxy's path prefix (/gan/). Images come from the API as
// JSON (exact uint8 pixels, seeds, labels, the command) and are drawn here; downloads are the server's PNG,
// byte for byte what the copied command writes. The view lives in the page's URL (view.js): a link reproduces it.
//
// The page's blocks: this file (model panel, grid, enlarged image), walk.js, nearest.js, mixing.js, upscale.js.
// A new block is a module with its own <section> in index.html, wired up in start() below. A server with
// super-resolution models only has no generator blocks: the page is the upscale card alone.

import {
  $, api, clearErrors, clearOnEdit, copyText, debounce, markFresh, saveBlob, setStatus, showCommand, showError,
  tileUrls,
} from "./lib.js";
import { downloadWalk, drawFrame, frameAt, renderWalk, stopWalk, toggleWalk } from "./walk.js";
import { hideNearest, showNearest } from "./nearest.js";
import { readView, writeView } from "./view.js";

const GRID_STALE = { box: "grid", note: "grid-stale" };
import { renderMixing, showMixing } from "./mixing.js";
import { renderStages, showStages } from "./stages.js";
import { runUpscale, showUpscalers } from "./upscale.js";

const state = {
  models: [],
  model: null,    // the chosen model's /api/meta
  limits: null,
  gridUrls: [],   // blob: URLs of the shown tiles
  gridParams: null,
  walk: null,     // walk.js's current walk
  requests: { grid: 0, walk: 0, nearest: 0, upscale: 0 },
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
  if (meta.nearest) fact(list, "Training set", `${meta.nearest.dataset}, ${meta.nearest.count.toLocaleString("en-US")} images`);

  for (const [select, withEvery] of [[$("class"), true], [$("walk-class"), false]]) {
    select.replaceChildren();
    const add = (value, label) => select.append(new Option(label, value));
    if (withEvery) add("", `each in turn (seed mod ${meta.classes.length})`);
    meta.classes.forEach((name, i) => add(String(i), name));
    add("all", "all classes (a row per seed)");
  }
  $("class-field").hidden = !meta.conditional;
  $("walk-class-field").hidden = !meta.conditional;
  $("lightbox-nearest").hidden = !meta.nearest;
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
    const answer = await (await api("api/sample", { ...params, format: "json" })).json();
    const { urls, width } = await tileUrls(answer);
    if (ticket !== state.requests.grid) { urls.forEach((u) => URL.revokeObjectURL(u)); return; }
    showGrid(urls, answer.seeds, answer.labels, answer.columns, width, params);
    showCommand($("command"), answer.command);
    $("grid-caption").textContent = describeRequest(params, urls.length);
    $("copy-command").disabled = false;
    $("copy-link").disabled = false;
    $("download-grid").disabled = false;
    markFresh(GRID_STALE);
    writeView(state);
    setStatus(`${urls.length} image${urls.length === 1 ? "" : "s"} rendered`);
  } catch (error) {
    if (ticket === state.requests.grid) showError("sample", error, state.gridParams ? GRID_STALE : null);
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
  const tile = Math.max(32, Math.min(width * 6, 168, Math.floor((room - 8 * (columns - 1)) / columns)));
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
    const response = await api("api/sample", { ...state.gridParams, format: "png" });
    saveBlob(await response.blob(), response.headers.get("x-distgan-filename"));
  } catch (error) {
    showError("sample", error, GRID_STALE);
  }
}

// --- one image, enlarged ---

function lightboxParams(seed, label) {
  const params = { model: state.model.id, seed, n: 1, psi: state.gridParams.psi };
  // The tile's class as the grid asked for it: no class keeps "every class in turn" in the file's text.
  if (label !== null && state.gridParams.class !== undefined) params.class = label;
  return params;
}

async function openLightbox(tileUrl, seed, label, caption) {
  const params = lightboxParams(seed, label);
  $("lightbox-image").src = tileUrl;
  $("lightbox-image").alt = caption;
  $("lightbox-caption").textContent = `${caption} · ψ ${params.psi}`;
  $("lightbox-command").textContent = "";
  hideNearest(state);
  const dialog = $("lightbox");
  dialog.dataset.seed = seed;
  dialog.dataset.label = label === null ? "" : label;
  dialog.params = { ...params, class: label === null ? undefined : label };
  $("lightbox-download").disabled = true;
  if (!dialog.open) dialog.showModal();
  try {
    const [png, answer] = await Promise.all([api("api/sample", params),
      api("api/sample", { ...params, format: "json" }).then((r) => r.json())]);
    dialog.file = { blob: await png.blob(), name: png.headers.get("x-distgan-filename") };
    showCommand($("lightbox-command"), answer.command);
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

// --- start ---

async function chooseModel(id, view = null) {
  const response = await api("api/meta", { model: id });
  state.model = await response.json();
  showModel(state.model);
  showMixing(state.model);
  showStages(state.model);
  $("walk-card").hidden = true;
  stopWalk(state);
  state.walk = null;
  if (view) view.fill();
  await generate();
  if (view && view.walk) await renderWalk(state);
}

function wireSample() {
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
  $("copy-link").addEventListener("click", () => copyText(location.href, "command", "link"));
  clearOnEdit("sample");
}

function wireMixing() {
  $("mixing-form").addEventListener("submit", (event) => { event.preventDefault(); renderMixing(state); });
}

function wireStages() {
  $("stages-form").addEventListener("submit", (event) => { event.preventDefault(); renderStages(state); });
}

function wireWalk() {
  $("walk-form").addEventListener("submit", (event) => { event.preventDefault(); renderWalk(state); });
  $("walk-slider").addEventListener("input", () => {
    stopWalk(state);
    drawFrame(state, Number($("walk-slider").value));
  });
  $("play").addEventListener("click", () => toggleWalk(state));
  $("walk-strip").addEventListener("click", (event) => { stopWalk(state); drawFrame(state, frameAt(state, event)); });
  $("download-walk").addEventListener("click", () => downloadWalk(state));
  $("copy-walk-command").addEventListener("click", () => copyText($("walk-command").textContent, "walk-command"));
  $("copy-walk-link").addEventListener("click", () => copyText(location.href, "walk-command", "link"));
  clearOnEdit("walk");
}

function wireLightbox() {
  $("lightbox-close").addEventListener("click", () => $("lightbox").close());
  $("lightbox").addEventListener("click", (event) => { if (event.target === $("lightbox")) $("lightbox").close(); });
  $("lightbox-download").addEventListener("click", () => saveBlob($("lightbox").file.blob, $("lightbox").file.name));
  $("lightbox-copy").addEventListener("click", () => copyText($("lightbox-command").textContent, "lightbox-command"));
  $("lightbox-walk-from").addEventListener("click", () => walkFromLightbox("seed-a"));
  $("lightbox-walk-to").addEventListener("click", () => walkFromLightbox("seed-b"));
  $("lightbox-nearest").addEventListener("click", () => showNearest(state, $("lightbox").params));
}

function wireUpscale() {
  $("upscale-form").addEventListener("submit", (event) => { event.preventDefault(); runUpscale(state); });
  $("upscale-file").addEventListener("change", () => runUpscale(state));
}

async function start() {
  const listing = await (await api("api/models")).json();
  state.models = listing.models;
  state.limits = listing.limits;
  showUpscalers(listing.upscalers, listing.limits);
  wireUpscale();
  if (listing.models.length === 0) {  // super-resolution models only
    document.querySelectorAll("[data-generator]").forEach((element) => { element.hidden = true; });
    $("layout").classList.add("upscale-only");
    document.title = "upscale · distgan-serve";
    return;
  }
  const view = readView(listing.models.map((m) => m.id));
  const picker = $("model");
  listing.models.forEach((m) => picker.append(new Option(`${m.id} (${m.family}, ${m.width}×${m.height})`, m.id)));
  $("model-pick").hidden = listing.models.length < 2;
  picker.value = view.model;
  picker.addEventListener("change", () => chooseModel(picker.value).catch((e) => setStatus(e.message, true)));
  wireSample();
  wireWalk();
  wireMixing();
  wireStages();
  wireLightbox();
  await chooseModel(view.model, view);
}

start().catch((error) => setStatus(`cannot start: ${error.message}`, true));
