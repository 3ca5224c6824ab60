// The upscale card (served super-resolution models): a PNG/JPEG POSTed to api/upscale, answered with the bicubic
// and SR PNGs of the same size and the output's centre box; shown side by side with that centre of both zoomed
// (nearest neighbour, so the pixels stay visible). The download is the server's SR PNG as it came.

import { $, api, blobUrl, setStatus } from "./lib.js";

let shown = []; // the object URLs on the page now

function pngBlob(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return new Blob([bytes], { type: "image/png" });
}

function loaded(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("cannot decode the server's PNG"));
    image.src = url;
  });
}

// The crop of both images, each enlarged `zoom` times, side by side with a gap.
async function zoomedCrop(bicubicUrl, srUrl, crop) {
  const { x, y, width, height, zoom } = crop;
  const gap = 2 * zoom;
  const canvas = document.createElement("canvas");
  canvas.width = 2 * width * zoom + gap;
  canvas.height = height * zoom;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.fillStyle = "#ffffff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  const images = await Promise.all([loaded(bicubicUrl), loaded(srUrl)]);
  images.forEach((image, i) => {
    context.drawImage(image, x, y, width, height, i * (width * zoom + gap), 0, width * zoom, height * zoom);
  });
  return blobUrl(canvas);
}

function showUpscaleError(message) {
  $("upscale-error").textContent = message;
  $("upscale-error").hidden = false;
  $("upscale-file").setAttribute("aria-invalid", "true");
  setStatus(message, true);
}

function clearUpscaleError() {
  $("upscale-error").hidden = true;
  $("upscale-error").textContent = "";
  $("upscale-file").removeAttribute("aria-invalid");
}

export function showUpscalers(upscalers, limits) {
  $("upscale-card").hidden = upscalers.length === 0;
  const picker = $("upscaler");
  const label = (m) => `${m.id} (×${m.scale}, ${m.family}, step ${m.step})`;
  picker.replaceChildren(...upscalers.map((m) => new Option(label(m), m.id)));
  const megabytes = (limits.max_upload_bytes / 1e6).toLocaleString("en-US", { maximumFractionDigits: 1 });
  const output = limits.max_upscale_pixels.toLocaleString("en-US");
  $("upscale-hint").textContent = `at most ${megabytes} MB; the upscaled image at most ${output} pixels`;
}

export async function runUpscale(state) {
  const file = $("upscale-file").files[0];
  clearUpscaleError();
  if (!file) { showUpscaleError("image: choose a PNG or JPEG file first"); return; }
  const ticket = ++state.requests.upscale;
  const model = $("upscaler").value;
  $("upscale-views").setAttribute("aria-busy", "true");
  $("upscale-caption").textContent = `upscaling ${file.name}…`;
  setStatus("upscaling…");
  try {
    const init = { method: "POST", body: file, headers: { "content-type": file.type || "application/octet-stream" } };
    const answer = await (await api("api/upscale", { model, name: file.name }, init)).json();
    const sr = pngBlob(answer.sr);
    const urls = [URL.createObjectURL(pngBlob(answer.bicubic)), URL.createObjectURL(sr)];
    urls.push(await zoomedCrop(urls[0], urls[1], answer.crop));
    if (ticket !== state.requests.upscale) { urls.forEach((u) => URL.revokeObjectURL(u)); return; }
    shown.forEach((u) => URL.revokeObjectURL(u));
    shown = urls;
    [$("upscale-bicubic").src, $("upscale-sr").src, $("upscale-crop").src] = urls;
    const { input, output, crop, scale } = answer;
    $("upscale-sr-caption").textContent = `${model} (×${scale})`;
    $("upscale-crop-caption").textContent = `Centre ${crop.width} × ${crop.height}, zoomed ×${crop.zoom}: `
      + "bicubic | SRGAN";
    $("upscale-caption").textContent = `${file.name}: ${input.width} × ${input.height} → `
      + `${output.width} × ${output.height}`;
    const link = $("upscale-download");
    link.href = urls[1];
    link.download = answer.filename;
    link.hidden = false;
    $("upscale-views").hidden = false;
    setStatus(`${file.name} upscaled ×${scale}`);
  } catch (error) {
    if (ticket !== state.requests.upscale) return;
    $("upscale-caption").textContent = shown.length ? "the images below are the last good upscale" : "";
    showUpscaleError(error.message);
  } finally {
    if (ticket === state.requests.upscale) $("upscale-views").setAttribute("aria-busy", "false");
  }
}
