// What the page's parts share: the API client and its errors, field messages, npy -> pixels, files.

export const $ = (id) => document.getElementById(id);

export class ApiError extends Error {
  constructor(message, field) {
    super(message);
    this.field = field;
  }
}

// Every URL is relative ("api/sample", never "/api/sample"): the page works under any path prefix a proxy adds.
export function queryOf(params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) query.set(key, value);
  }
  return query;
}

// `init`: fetch's options, for the one request with a body (POST api/upscale).
export async function api(path, params = {}, init = undefined) {
  const response = await fetch(`${path}?${queryOf(params)}`, init);
  if (!response.ok) {
    let body = { error: `${response.status} ${response.statusText}`, field: null };
    try { body = await response.json(); } catch (_) { /* not JSON: keep the status line */ }
    throw new ApiError(body.error, body.field);
  }
  return response;
}

export function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

// --- field errors, shown next to the field the server named ---

const FIELD_INPUTS = {
  sample: { seed: "seed", n: "n", class: "class", psi: "psi", model: "model" },
  walk: { seed_a: "seed-a", seed_b: "seed-b", steps: "steps", class: "walk-class", psi: "psi", model: "model" },
};
const ERROR_BOXES = {
  sample: { seed: "seed-error", n: "n-error", class: "class-error", psi: "psi-error" },
  walk: {
    seed_a: "seed_a-error", seed_b: "seed_b-error", steps: "steps-error", class: "walk-class-error", psi: "psi-error",
  },
};

function clearField(form, field) {
  const box = ERROR_BOXES[form][field];
  if (box) { $(box).hidden = true; $(box).textContent = ""; }
  if (FIELD_INPUTS[form][field]) $(FIELD_INPUTS[form][field]).removeAttribute("aria-invalid");
}

export function clearErrors(form) {
  for (const field of Object.keys(FIELD_INPUTS[form])) clearField(form, field);
}

// Editing a field clears its message: the value that caused it is gone.
export function clearOnEdit(form) {
  for (const [field, input] of Object.entries(FIELD_INPUTS[form])) {
    for (const type of ["input", "change"]) $(input).addEventListener(type, () => clearField(form, field));
  }
}

// The server's message next to the field it names (or in `fallback`, the block's own message line), and the
// result it did not replace marked stale with the reason.
export function showError(form, error, stale) {
  const box = ERROR_BOXES[form][error.field];
  if (error instanceof ApiError && box) {
    $(box).textContent = error.message;
    $(box).hidden = false;
    $(FIELD_INPUTS[form][error.field]).setAttribute("aria-invalid", "true");
  }
  markStale(stale, error instanceof ApiError && box ? `not updated: ${error.message}` : error.message);
  setStatus(error.message, true);
}

// `target`: { box, note } ids; a result shown dimmed, with why it is old.
export function markStale(target, reason) {
  if (!target) return;
  $(target.box).classList.add("stale");
  $(target.note).textContent = reason;
  $(target.note).hidden = false;
}

export function markFresh(target) {
  $(target.box).classList.remove("stale");
  $(target.note).hidden = true;
  $(target.note).textContent = "";
}

// --- npy -> pixels ---

// The API's JSON images: { shape, pixels: base64 of the uint8 values, row-major }.
export function pixelsOf(images) {
  const text = atob(images.pixels);
  const data = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) data[i] = text.charCodeAt(i);
  return { shape: images.shape, data };
}

export function imageCanvas(data, offset, height, width, channels) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  for (let i = 0, p = offset; i < width * height; i++, p += channels) {
    const o = 4 * i;
    pixels.data[o] = data[p];
    pixels.data[o + 1] = data[channels === 1 ? p : p + 1];
    pixels.data[o + 2] = data[channels === 1 ? p : p + 2];
    pixels.data[o + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

// An answer's tiles ([rows, cols, H, W, C]: a mixing grid, a pyramid's stages) side by side on one canvas, as
// the PNG lays them out.
export function tilesCanvas(answer) {
  const { shape, data } = pixelsOf(answer);
  const [rows, cols, height, width, channels] = shape;
  const canvas = document.createElement("canvas");
  canvas.width = cols * width;
  canvas.height = rows * height;
  const context = canvas.getContext("2d");
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const offset = (r * cols + c) * height * width * channels;
      context.drawImage(imageCanvas(data, offset, height, width, channels), c * width, r * height);
    }
  }
  return canvas;
}

export function blobUrl(canvas) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(URL.createObjectURL(blob)) : reject(new Error("cannot encode a tile"))));
  });
}

export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// `where`: an element holding the text, selected for Ctrl+C where the clipboard API is refused (plain http).
export async function copyText(text, where, what = "command") {
  try {
    await navigator.clipboard.writeText(text);
    setStatus(`${what} copied`);
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($(where));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    setStatus(`${what} selected: press Ctrl+C to copy`);
  }
}

// A blob: URL per image of a JSON images answer ([count, H, W, C], any leading dimensions flattened).
export async function tileUrls(images) {
  const { shape, data } = pixelsOf(images);
  const [height, width, channels] = shape.slice(-3);
  const count = data.length / (height * width * channels);
  const urls = [];
  for (let i = 0; i < count; i++) {
    urls.push(await blobUrl(imageCanvas(data, i * height * width * channels, height, width, channels)));
  }
  return { urls, height, width };
}

// The command in `element`, a span per word so that lines break between words only (its text is unchanged).
export function showCommand(element, command) {
  element.replaceChildren();
  command.split(" ").forEach((word, i) => {
    if (i) element.append(" ");
    const span = document.createElement("span");
    span.textContent = word;
    element.append(span);
  });
}

export function debounce(fn, ms) {
  let timer = null;
  const call = (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  call.cancel = () => clearTimeout(timer);
  return call;
}
