// distgan-export --web's page: the generator runs here, in the visitor's browser (onnxruntime-web, loaded by
// index.html as the global `ort`). Every URL is relative, so the folder works under any path of any static host.

import { InputError, LIMITS, MAX_SEED, checkInt, checkPsi, plan, toImages } from "./draw.js";
import { gridImage, pngWithText } from "./png.js";

const $ = (id) => document.getElementById(id);
const FIELDS = ["seed", "n", "seed_b", "steps", "psi", "mix_seed", "mix_layer"];
const INPUT_OF = { seed: "seed", n: "n", seed_b: "seed-b", steps: "steps", psi: "psi", mix_seed: "mix-seed",
  mix_layer: "mix-layer" };
const state = { model: null, session: null, mode: "sample", drawing: null, busy: false, mixable: false };

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

function fatal(message) {
  $("fatal").textContent = message;
  $("fatal").hidden = false;
  setStatus("cannot draw", true);
  $("generate").disabled = true;
}

// --- loading ---

async function fetchOk(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  return response;
}

async function checkSha256(bytes, expected) {
  if (!crypto.subtle) return;  // only secure contexts (https, localhost) have it; onnxruntime still checks the file
  const hex = [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  if (hex !== expected) {
    throw new Error(`model.onnx is not the exported model (sha256 ${hex.slice(0, 12)}…, site.json says `
      + `${expected.slice(0, 12)}…): the file is corrupt or was replaced; export the site again`);
  }
}

/** WebGPU when the browser has an adapter (and ?backend=wasm does not ask otherwise), else WASM. */
async function createSession(bytes) {
  const wanted = new URLSearchParams(location.search).get("backend");
  const gpu = wanted !== "wasm" && navigator.gpu && await navigator.gpu.requestAdapter().catch(() => null);
  if (gpu) {
    try {
      return { session: await ort.InferenceSession.create(bytes, { executionProviders: ["webgpu"] }), name: "WebGPU" };
    } catch (error) {
      console.warn(`WebGPU could not run the model, using WASM: ${error.message}`);
    }
  }
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const threads = ort.env.wasm.numThreads;
  if (!crossOriginIsolated) {
    $("backend").title = "WebAssembly on 1 thread: more need the server to send the headers "
      + "Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp";
  }
  return { session, name: `WASM, ${threads} thread${threads === 1 ? "" : "s"}` };
}

async function load() {
  const model = await (await fetchOk("site.json")).json();
  if (typeof ort === "undefined") throw new Error("onnxruntime-web did not load (see the browser console)");
  const wasm = await (await fetchOk(model.ort.wasm, { integrity: model.ort.wasm_integrity })).arrayBuffer();
  ort.env.wasm.wasmBinary = wasm;
  ort.env.wasm.wasmPaths = { mjs: new URL(model.ort.glue, location.href).href };
  ort.env.wasm.numThreads = crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const bytes = new Uint8Array(await (await fetchOk(model.model)).arrayBuffer());
  await checkSha256(bytes, model.sha256);
  let created;
  try {
    created = await createSession(bytes);
  } catch (error) {
    throw new Error(`onnxruntime-web cannot load model.onnx (${error.message || error}): the file is corrupt or `
      + "not a model; export the site again");
  }
  state.model = model;
  state.session = created.session;
  $("backend").textContent = created.name;
  showModel(model);
}

function showModel(model) {
  const facts = $("model-facts");
  const add = (term, value) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    facts.append(dt, dd);
  };
  add("Dataset", model.dataset);
  add("Architecture", `${model.family}, nz ${model.nz}`);
  add("Images", `${model.width} × ${model.height} ${model.channels === 1 ? "grayscale" : "RGB"}`);
  add("Training step", model.step.toLocaleString("en-US"));
  add("Classes", model.classes.length ? `${model.classes.length}: ${model.classes.join(", ")}` : "none (unconditional)");
  if (model.quantization !== "none") add("Quantization", model.quantization);
  add("File", `${model.file} (${(model.bytes / 1e6).toFixed(2)} MB)`);
  add("SHA-256", model.sha256.slice(0, 12));
  const select = $("class");
  select.append(new Option(`each in turn (seed mod ${model.classes.length})`, ""));
  model.classes.forEach((name, i) => select.append(new Option(name, String(i))));
  select.append(new Option("all classes (a row per seed)", "all"));
  $("class-field").hidden = !model.classes.length;
  state.mixable = model.inputs.includes("z2") && model.inputs.includes("mix_layer");
  $("mix-fields").hidden = !state.mixable;
  document.title = `${model.file} · distgan`;
}

// --- the form and the URL ---

function setMode(mode) {
  state.mode = mode;
  $("mode-sample").setAttribute("aria-pressed", String(mode === "sample"));
  $("mode-walk").setAttribute("aria-pressed", String(mode === "walk"));
  $("walk-fields").hidden = mode !== "walk";
  $("mix-fields").hidden = mode === "walk" || !state.mixable;
  $("generate").textContent = mode === "walk" ? "Render walk" : "Generate";
}

function clearErrors() {
  for (const field of FIELDS) {
    $(`${field}-error`).hidden = true;
    $(INPUT_OF[field]).removeAttribute("aria-invalid");
  }
}

function showError(error) {
  const box = $(`${error.field}-error`);
  box.textContent = error.detail;
  box.hidden = false;
  $(INPUT_OF[error.field]).setAttribute("aria-invalid", "true");
  $(INPUT_OF[error.field]).focus();
  setStatus(error.message, true);
}

/** The request in the form, checked; an InputError names the first bad field. */
function readRequest() {
  const value = (id) => $(id).value.trim();
  const n = checkInt("n", value("n"), 1, LIMITS.n, " (this page draws at most 64 at once)");
  const why = n > 1 ? ` (n = ${n} images use seeds up to seed + ${n - 1})` : "";
  const seed = checkInt("seed", value("seed"), 0, MAX_SEED - n + 1, why);
  const request = { mode: state.mode, seed, n, psi: checkPsi(value("psi")), klass: $("class").value, mixSeed: null };
  if (state.mode === "walk") {
    request.seedB = checkInt("seed_b", value("seed-b"), 0, MAX_SEED - n + 1, why);
    request.steps = checkInt("steps", value("steps"), 2, LIMITS.steps);
  }
  const mixing = !$("mix-fields").hidden && (value("mix-seed") !== "" || value("mix-layer") !== "");
  if (state.mode === "sample" && mixing) {
    request.mixSeed = checkInt("mix_seed", value("mix-seed"), 0, MAX_SEED - n + 1, why);
    request.mixLayer = checkInt("mix_layer", value("mix-layer"), 0, state.model.num_ws,
      ` (0: every style from the mix seed; ${state.model.num_ws}: none)`);
  }
  return request;
}

function writeUrl(request) {
  const params = new URLSearchParams(location.search);
  for (const key of ["mode", "seed", "n", "psi", "class", "seed_b", "steps", "mix_seed", "mix_layer"]) params.delete(key);
  if (request.mode === "walk") params.set("mode", "walk");
  params.set("seed", request.seed);
  params.set("n", request.n);
  if (request.klass !== "" && state.model.classes.length) params.set("class", request.klass);
  params.set("psi", request.psi);
  if (request.mode === "walk") {
    params.set("seed_b", request.seedB);
    params.set("steps", request.steps);
  }
  if (request.mixSeed !== null && request.mode === "sample") {
    params.set("mix_seed", request.mixSeed);
    params.set("mix_layer", request.mixLayer);
  }
  history.replaceState(null, "", `?${params}`);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  setMode(params.get("mode") === "walk" ? "walk" : "sample");
  for (const [key, id] of Object.entries(INPUT_OF)) if (params.has(key)) $(id).value = params.get(key);
  if (params.has("psi")) $("psi-range").value = params.get("psi");
  if (params.has("class") && [...$("class").options].some((o) => o.value === params.get("class"))) {
    $("class").value = params.get("class");
  }
  return params.has("seed");
}

// --- drawing ---

function tensors(drawing, start, end) {
  const { model } = state;
  const batch = end - start;
  const flat = (rows) => {
    const out = new Float32Array(batch * model.nz);
    rows.slice(start, end).forEach((row, i) => out.set(row, i * model.nz));
    return out;
  };
  const feeds = { z: new ort.Tensor("float32", flat(drawing.z), [batch, model.nz]) };
  if (drawing.labels) {
    feeds.labels = new ort.Tensor("int64", BigInt64Array.from(drawing.labels.slice(start, end), BigInt), [batch]);
  }
  if (drawing.styled) {
    feeds.psi = new ort.Tensor("float32", new Float32Array(batch).fill(drawing.psi), [batch]);
  }
  if (model.inputs.includes("z2")) {
    feeds.z2 = new ort.Tensor("float32", flat(drawing.z2 || drawing.z), [batch, model.nz]);
    const layer = drawing.z2 ? drawing.mixLayer : model.num_ws;
    feeds.mix_layer = new ort.Tensor("int64", new BigInt64Array(batch).fill(BigInt(layer)), [batch]);
  }
  return feeds;
}

async function render(drawing) {
  const images = [];
  const started = performance.now();
  for (let start = 0; start < drawing.z.length; start += LIMITS.n) {
    const end = Math.min(drawing.z.length, start + LIMITS.n);
    const output = (await state.session.run(tensors(drawing, start, end))).images;
    images.push(...toImages(output.data, end - start, state.model));
  }
  const { height, width, channels } = state.model;
  const pixels = gridImage(images, height, width, channels, drawing.columns);
  const canvas = $("grid");
  canvas.width = pixels.width;
  canvas.height = pixels.height;
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  const scale = Math.max(1, Math.floor(Math.min(640, 112 * drawing.columns) / pixels.width));
  canvas.style.width = `${pixels.width * scale}px`;
  return { count: images.length, ms: performance.now() - started };
}

async function generate() {
  if (state.busy || !state.session) return;
  clearErrors();
  let request;
  try {
    request = readRequest();
  } catch (error) {
    if (error instanceof InputError) return showError(error);
    throw error;
  }
  state.busy = true;
  $("grid").setAttribute("aria-busy", "true");
  setStatus("drawing…");
  try {
    const drawing = plan(state.model, request);
    const { count, ms } = await render(drawing);
    state.drawing = drawing;
    writeUrl(request);
    $("caption").textContent = drawing.text["distgan.class"] ? `class: ${drawing.text["distgan.class"]}` : "";
    $("command").textContent = drawing.command;
    $("download").disabled = false;
    $("copy-command").disabled = false;
    setStatus(`${count} image${count === 1 ? "" : "s"} in ${ms.toFixed(0)} ms`);
    document.body.dataset.drawn = String(Number(document.body.dataset.drawn || 0) + 1);
  } catch (error) {
    setStatus(`drawing failed: ${error.message || error}`, true);
  } finally {
    state.busy = false;
    $("grid").setAttribute("aria-busy", "false");
  }
}

async function download() {
  const blob = await pngWithText($("grid"), state.drawing.text);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = state.drawing.name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function copyCommand() {
  try {
    await navigator.clipboard.writeText(state.drawing.command);
    setStatus("command copied");
  } catch (_) {
    getSelection().selectAllChildren($("command"));
    setStatus("command selected: press Ctrl+C to copy");
  }
}

function wire() {
  $("form").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
  $("mode-sample").addEventListener("click", () => setMode("sample"));
  $("mode-walk").addEventListener("click", () => setMode("walk"));
  $("random").addEventListener("click", () => {
    $("seed").value = String(crypto.getRandomValues(new Uint32Array(1))[0] % (MAX_SEED - LIMITS.n));
    generate();
  });
  $("psi-range").addEventListener("input", () => { $("psi").value = $("psi-range").value; });
  $("psi-range").addEventListener("change", generate);
  $("psi").addEventListener("change", () => { $("psi-range").value = $("psi").value; });
  $("class").addEventListener("change", generate);
  $("download").addEventListener("click", download);
  $("copy-command").addEventListener("click", copyCommand);
}

async function main() {
  if (location.protocol === "file:") return;  // index.html's banner says why
  wire();
  const started = performance.now();
  try {
    await load();
  } catch (error) {
    $("backend").textContent = "none";
    fatal(`${error.message || error}`);
    return;
  }
  $("generate").disabled = false;
  setStatus(`model loaded in ${(performance.now() - started).toFixed(0)} ms`);
  readUrl();
  await generate();
  document.body.dataset.firstImageMs = String(Math.round(performance.now()));
}

main();
