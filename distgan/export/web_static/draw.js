// What a request draws, as distgan.runtime.OnnxGenerator.sample / .interpolate do: the model's inputs (latents
// of seeds s .. s + n - 1, classes, truncation, style mixing) and the PNG text, file name and distgan-sample
// arguments of the result. No DOM here: tests run it under node beside the Python.

import { latent } from "./latents.js";

export const MAX_SEED = 2 ** 32 - 1;
export const LIMITS = { n: 64, steps: 32 };  // what one page draws at once (a visitor's CPU does the work)

export class InputError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.field = field;
    this.detail = message;
  }
}

/** An integer in low .. high from text, or an InputError naming `field`. */
export function checkInt(field, text, low, high, why = "") {
  const value = Number(String(text).trim());
  if (String(text).trim() === "" || !Number.isInteger(value)) throw new InputError(field, `${text} is not an integer`);
  if (value < low || value > high) throw new InputError(field, `${value} is out of range; valid: ${low}..${high}${why}`);
  return value;
}

export function checkPsi(text) {
  const value = Number(String(text).trim());
  if (String(text).trim() === "" || !(value >= 0 && value <= 2)) {
    throw new InputError("psi", `${text} is out of range; valid: a number in 0..2`);
  }
  return value;
}

/** Python's repr() of a float, for the numbers a page takes (psi in 0..2). */
export function pyFloat(value) {
  if (Number.isInteger(value)) return `${value}.0`;
  const text = String(value);
  return Math.abs(value) < 1e-4 ? value.toExponential().replace(/e([+-])(\d)$/, "e$10$2") : text;
}

const slug = (text) => text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "") || "class";
const quote = (arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\"'\"'")}'`);

/** Seeds, labels (or null), columns and the class as text, as OnnxGenerator._rows: `klass` "" (each in turn),
 * an index, or "all". */
export function rows(model, seed, n, klass) {
  const k = model.classes.length;
  const seeds = Array.from({ length: n }, (_, i) => seed + i);
  const square = Math.ceil(Math.sqrt(n));
  if (!k) return { seeds, labels: null, columns: square, described: "" };
  if (klass === "") return { seeds, labels: seeds.map((s) => s % k), columns: square,
    described: `every class in turn (seed mod ${k})` };
  if (klass === "all") return { seeds: seeds.flatMap((s) => Array(k).fill(s)),
    labels: seeds.flatMap(() => [...Array(k).keys()]), columns: k, described: "all" };
  const label = checkInt("class", klass, 0, k - 1);
  return { seeds, labels: seeds.map(() => label), columns: square, described: model.classes[label] };
}

/** Spherical interpolation of two latents (float64, then float32): exactly a at t = 0 and b at t = 1. */
export function slerp(a, b, t) {
  if (t === 0 || t === 1) return Float32Array.from(t === 0 ? a : b);
  const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  const na = norm(a);
  const nb = norm(b);
  const cos = Math.min(1, Math.max(-1, a.reduce((s, x, i) => s + (x / na) * (b[i] / nb), 0)));
  const omega = Math.acos(cos);
  const so = Math.sin(omega);
  return Float32Array.from(a, (x, i) => (so < 1e-6 ? (1 - t) * x + t * b[i]
    : (Math.sin((1 - t) * omega) * x + Math.sin(t * omega) * b[i]) / so));
}

const truncate = (z, psi) => (psi === 1 ? z : z.map((x) => Math.fround(x * Math.fround(psi))));

/** The drawing a request asks for: {z: [Float32Array], labels, columns, psi, styled, z2?, mixLayer?, text, name,
 * args, command}. Style mixing (models with z2 and mix_layer inputs) applies to samples, as distgan-sample's. */
export function plan(model, request) {
  const { mode, seed, n, klass, psi, seedB, steps } = request;
  const styled = model.inputs.includes("psi");  // truncation in W, in the graph: z goes in as drawn
  const { seeds, labels, columns, described } = rows(model, seed, n, klass);
  let z = seeds.map((s) => latent(s, model.nz));
  let drawing = { labels, columns, psi, styled };
  let req = { seed, n };
  let name = n === 1 ? `seed${seed}` : `seed${seed}-${seed + n - 1}`;
  if (mode === "walk") {
    const zb = seeds.map((s) => latent(s - seed + seedB, model.nz));
    z = z.flatMap((za, r) => Array.from({ length: steps }, (_, i) => slerp(za, zb[r], i / (steps - 1))));
    drawing = { ...drawing, labels: labels && labels.flatMap((l) => Array(steps).fill(l)), columns: steps };
    req = { seed_a: seed, n, seed_b: seedB, steps };
    name = `walk${seed}-${seedB}_steps${steps}${n > 1 ? `_n${n}` : ""}`;
  } else if (request.mixSeed !== null && request.mixSeed !== undefined) {
    drawing.z2 = seeds.map((s) => latent(s - seed + request.mixSeed, model.nz));
    drawing.mixLayer = request.mixLayer;
    req = { ...req, mix_seed: request.mixSeed, mix_layer: request.mixLayer };
    name += `_mix${request.mixSeed}-at${request.mixLayer}`;
  }
  drawing.z = styled ? z : z.map((v) => truncate(v, psi));
  return { ...drawing, ...describe(model, req, name, described, psi) };
}

/** The PNG text, file name and distgan-sample arguments, as OnnxGenerator._drawing writes them. */
function describe(model, req, name, described, psi) {
  const text = { "distgan.model_sha256": model.sha256 };
  for (const [key, value] of Object.entries(req)) text[`distgan.${key}`] = String(value);
  const flags = { seed: "--seed", seed_a: "--seed", n: "--n", seed_b: "--interpolate", steps: "--steps",
    mix_seed: "--mix-seed", mix_layer: "--mix-layer" };
  const args = Object.entries(req).flatMap(([key, value]) => [flags[key], String(value)]);
  const parts = [model.sha256.slice(0, 12), name];
  if (described) {
    text["distgan.class"] = described;
    const every = described.startsWith("every");
    parts.push(every ? "every-class" : slug(described));
    if (!every) args.push("--class", described);
  }
  text["distgan.psi"] = pyFloat(psi);
  parts.push(`psi${pyFloat(psi)}`);
  if (psi !== 1) args.push("--psi", pyFloat(psi));
  const file = `${parts.join("_")}.png`;
  return { text, name: file, args, command: ["distgan-sample", "--onnx", model.file, ...args, "--grid", file]
    .map(quote).join(" ") };
}

/** uint8 [H * W * C] images from the model's output tensor (float NCHW in [-1, 1] or uint8 NHWC). */
export function toImages(data, batch, model) {
  const { channels: c, height: h, width: w } = model;
  const size = h * w * c;
  return Array.from({ length: batch }, (_, b) => {
    const out = new Uint8Array(size);
    if (model.output_dtype === "uint8") {
      out.set(data.subarray(b * size, (b + 1) * size));
      return out;
    }
    for (let ch = 0; ch < c; ch++) {
      for (let p = 0; p < h * w; p++) {
        const v = Math.fround(Math.fround(data[b * size + ch * h * w + p] + 1) * 127.5);
        out[p * c + ch] = roundHalfEven(Math.min(255, Math.max(0, v)));
      }
    }
    return out;
  });
}

/** numpy's round(): halves to the even neighbour. */
function roundHalfEven(v) {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
}
