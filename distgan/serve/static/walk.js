// The walk between two seeds: frames the server renders in one request, a slider, a strip, a player.
// Every function takes the page's `state` (the chosen model, request tickets) and keeps the walk in `state.walk`.

import {
  $, api, clearErrors, imageCanvas, markFresh, pixelsOf, saveBlob, setStatus, showCommand, showError,
} from "./lib.js";
import { writeView } from "./view.js";

const GAP = 2; // pixels between the frames of a walk's sheet
const WALK_STALE = { box: "walk-view", note: "walk-stale" };

function walkParams(state) {
  const params = {
    model: state.model.id, seed_a: $("seed-a").value.trim(), seed_b: $("seed-b").value.trim(),
    steps: $("steps").value.trim(), psi: $("psi").value.trim(),
  };
  if (state.model.conditional) params.class = $("walk-class").value;
  return params;
}

export async function renderWalk(state) {
  const ticket = ++state.requests.walk;
  const params = walkParams(state);
  clearErrors("walk");
  stopWalk(state);
  setStatus("rendering the walk…");
  try {
    const answer = await (await api("api/interpolate", { ...params, format: "json" })).json();
    const { shape, data } = pixelsOf(answer);
    const [rows, steps, height, width, channels] = shape;
    const size = height * width * channels;
    // The sheet: a row per walk, a column per frame, as in the PNG the server writes.
    const sheet = document.createElement("canvas");
    sheet.width = steps * (width + GAP) - GAP;
    sheet.height = rows * (height + GAP) - GAP;
    const context = sheet.getContext("2d");
    for (let r = 0; r < rows; r++) {
      for (let t = 0; t < steps; t++) {
        context.drawImage(imageCanvas(data, (r * steps + t) * size, height, width, channels),
          t * (width + GAP), r * (height + GAP));
      }
    }
    if (ticket !== state.requests.walk) return;
    state.walk = { sheet, rows, steps, width, height, params, timer: null, direction: 1 };
    // The current frame: every walk's image side by side, as large as fits.
    const frame = $("walk-canvas");
    const scale = Math.max(1, Math.floor(Math.min(256 / height, (860 - (rows - 1) * 8) / (rows * width))));
    frame.width = rows * width * scale + (rows - 1) * 8;
    frame.height = height * scale;
    const strip = $("walk-strip");
    const stripScale = Math.max(1, Math.min(3, 860 / sheet.width));
    strip.width = Math.round(sheet.width * stripScale);
    strip.height = Math.round(sheet.height * stripScale);
    $("walk-slider").max = String(steps - 1);
    $("walk-slider").value = "0";
    showCommand($("walk-command"), answer.command);
    showLegend(state, answer.labels, rows, steps, frame.width);
    $("walk-card").hidden = false;
    markFresh(WALK_STALE);
    drawFrame(state, 0);
    writeView(state);
    setStatus(`walk of ${steps} frames rendered`);
  } catch (error) {
    if (ticket === state.requests.walk) showError("walk", error, state.walk ? WALK_STALE : null);
  }
}

// Under the frame: each walk's class (a walk per class with class=all), so the rows of the frame are named.
function showLegend(state, labels, rows, steps, frameWidth) {
  const legend = $("walk-legend");
  legend.replaceChildren();
  if (!labels) return;
  legend.style.maxWidth = `${frameWidth}px`;
  legend.style.gridTemplateColumns = `repeat(${rows}, 1fr)`;
  for (let r = 0; r < rows; r++) {
    const name = document.createElement("span");
    name.textContent = state.model.classes[labels[r * steps]];
    legend.append(name);
  }
}

export function drawFrame(state, t) {
  const { sheet, rows, steps, width, height, params } = state.walk;
  const frame = $("walk-canvas");
  const context = frame.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.clearRect(0, 0, frame.width, frame.height);
  const wide = (frame.width - (rows - 1) * 8) / rows;
  for (let r = 0; r < rows; r++) {
    const [x, y] = [t * (width + GAP), r * (height + GAP)];
    context.drawImage(sheet, x, y, width, height, r * (wide + 8), 0, wide, frame.height);
  }
  const strip = $("walk-strip");
  const strokes = strip.getContext("2d");
  strokes.imageSmoothingEnabled = false;
  strokes.clearRect(0, 0, strip.width, strip.height);
  strokes.drawImage(sheet, 0, 0, strip.width, strip.height);
  const scale = strip.width / sheet.width;
  strokes.strokeStyle = "#3f4bd1";
  strokes.lineWidth = 3;
  strokes.strokeRect(t * (width + GAP) * scale + 1.5, 1.5, width * scale - 3, strip.height - 3);
  $("walk-slider").value = String(t);
  const position = `frame ${t + 1} / ${steps} · t = ${(t / (steps - 1)).toFixed(2)}`;
  $("walk-label").textContent = `${position} · seed ${params.seed_a} → ${params.seed_b}`;
}

export function frameAt(state, event) {
  const { sheet, steps, width } = state.walk;
  const x = (event.offsetX / $("walk-strip").clientWidth) * sheet.width;
  return Math.max(0, Math.min(steps - 1, Math.floor(x / (width + GAP))));
}

export function stopWalk(state) {
  if (state.walk && state.walk.timer) clearInterval(state.walk.timer);
  if (state.walk) state.walk.timer = null;
  $("play").textContent = "Play";
  $("play").setAttribute("aria-pressed", "false");
}

export function toggleWalk(state) {
  const walk = state.walk;
  if (walk.timer) { stopWalk(state); return; }
  $("play").textContent = "Pause";
  $("play").setAttribute("aria-pressed", "true");
  walk.timer = setInterval(() => {
    let t = Number($("walk-slider").value) + walk.direction;
    if (t < 0 || t >= walk.steps) { walk.direction = -walk.direction; t += 2 * walk.direction; }
    drawFrame(state, Math.max(0, Math.min(walk.steps - 1, t)));
  }, 80);
}

export async function downloadWalk(state) {
  try {
    const response = await api("api/interpolate", { ...state.walk.params, format: "png" });
    saveBlob(await response.blob(), response.headers.get("x-distgan-filename"));
  } catch (error) {
    showError("walk", error, WALK_STALE);
  }
}
