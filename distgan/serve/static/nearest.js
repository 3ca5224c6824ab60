// "Is it memorised?": the enlarged image's nearest training images (distgan-serve --data), with their distances.

import { $, api, setStatus, tileUrls } from "./lib.js";

const K = 8;

export function hideNearest(state) {
  state.requests.nearest++;
  $("nearest").hidden = true;
  for (const img of $("nearest-grid").querySelectorAll("img")) URL.revokeObjectURL(img.src);
  $("nearest-grid").replaceChildren();
}

// `params`: the enlarged image's request (model, seed, class, psi).
export async function showNearest(state, params) {
  const ticket = ++state.requests.nearest;
  $("nearest").hidden = false;
  $("nearest-caption").textContent = "searching…";
  try {
    const { model, seed, psi } = params;
    const query = { model, seed, psi, k: K, class: params.class === undefined ? undefined : params.class };
    const answer = await (await api("api/nearest", query)).json();
    const { urls } = await tileUrls(answer.neighbours);
    if (ticket !== state.requests.nearest) { urls.forEach((u) => URL.revokeObjectURL(u)); return; }
    const cells = urls.map((url, i) => {
      const figure = document.createElement("figure");
      figure.className = "tile";
      const img = document.createElement("img");
      img.src = url;
      const label = answer.classes.length ? ` · ${answer.classes[answer.neighbours.labels[i]]}` : "";
      const distance = answer.neighbours.distances[i].toFixed(3);
      img.alt = `training image ${answer.neighbours.indices[i]}${label}, distance ${distance}`;
      const caption = document.createElement("figcaption");
      caption.textContent = `#${answer.neighbours.indices[i]}${label} · d ${distance}`;
      figure.append(img, caption);
      return figure;
    });
    $("nearest-grid").replaceChildren(...cells);
    $("nearest-caption").textContent = `${answer.count.toLocaleString("en-US")} ${answer.split} images of `
      + `${answer.dataset}; ${answer.features}; distance: ${answer.distance}`;
  } catch (error) {
    if (ticket === state.requests.nearest) $("nearest-caption").textContent = `cannot search: ${error.message}`;
    setStatus(error.message, true);
  }
}
