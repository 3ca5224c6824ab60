// A pyramid model's (LAPGAN's) stages of one sample, coarse to fine: /api/stages as JSON (exact pixels, each
// stage enlarged to the image's size, and the distgan-sample line), drawn side by side; shown when the model
// has stages. The class and psi are the sample form's.

import { $, api, blobUrl, setStatus, showCommand, tilesCanvas } from "./lib.js";

let current = null; // the shown stages' object URL

export function showStages(meta) {
  $("stages-card").hidden = !(meta.stages > 0);
  $("stages-hint").textContent = `${meta.stages} stages, coarse to fine (the last is the sample); the class and ` +
    "ψ are the sample form's";
}

export async function renderStages(state) {
  const params = { model: state.model.id, seed: $("stages-seed").value.trim(), psi: $("psi").value.trim(),
    format: "json" };
  const chosen = $("class").value;
  if (state.model.conditional && chosen !== "" && chosen !== "all") params.class = chosen;
  $("stages-error").hidden = true;
  try {
    const answer = await (await api("api/stages", params)).json();
    const url = await blobUrl(tilesCanvas(answer));
    if (current) URL.revokeObjectURL(current);
    current = url;
    $("stages-image").src = current;
    const sizes = (answer.text["distgan.stages"] || "").split(",").map((size) => size.replace("x", "×"));
    $("stages-caption").textContent = `seed ${answer.seeds[0]}: ${sizes.join(" → ")}`;
    showCommand($("stages-command"), answer.command);
    setStatus("pyramid stages rendered");
  } catch (error) {
    $("stages-error").textContent = error.message;
    $("stages-error").hidden = false;
  }
}
