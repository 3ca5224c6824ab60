// What the page's parts share: the API client and its errors, field messages, npy -> pixels, files.

export const $ = (id) => document.getElementById(id);

export class ApiError extends Error {
  constructor(message, field) {
    super(message);
    this.field = field;
  }
}

export async function api(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) query.set(key, value);
  }
  const response = await fetch(`${path}?${query}`);
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

export function clearErrors(form) {
  for (const box of Object.values(ERROR_BOXES[form])) {
    $(box).hidden = true;
    $(box).textContent = "";
  }
  for (const input of Object.values(FIELD_INPUTS[form])) $(input).removeAttribute("aria-invalid");
}

export function showError(form, error) {
  const box = ERROR_BOXES[form][error.field];
  if (!(error instanceof ApiError) || !box) {
    setStatus(error.message, true);
    return;
  }
  $(box).textContent = error.message;
  $(box).hidden = false;
  $(FIELD_INPUTS[form][error.field]).setAttribute("aria-invalid", "true");
  setStatus("see the message next to the field", true);
}

// --- npy -> pixels ---

export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.subarray(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("the server's answer is not an npy array");
  const view = new DataView(buffer);
  const [start, length] = bytes[6] === 1 ? [10, view.getUint16(8, true)] : [12, view.getUint32(8, true)];
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + length));
  if (!/'descr':\s*'\|u1'/.test(header)) throw new Error(`unexpected npy dtype: ${header}`);
  const shape = header.match(/'shape':\s*\(([^)]*)\)/)[1].split(",").filter((s) => s.trim()).map(Number);
  return { shape, data: bytes.subarray(start + length) };
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

export async function copyText(text, where) {
  try {
    await navigator.clipboard.writeText(text);
    setStatus("command copied");
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($(where));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    setStatus("command selected: press Ctrl+C to copy");
  }
}

export const commandOf = (response) => decodeURIComponent(response.headers.get("x-distgan-command") || "");

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
