// The style-mixing figure of style-based models (StyleGAN2): /api/mixing as JSON (exact pixels and the
// distgan-sample line), drawn here as one image; shown when the model has styles.

import { $, api, blobUrl, setStatus, showCommand, tilesCanvas } from "./lib.js";

let current = null; // the shown figure's object URL

export function showMixing(meta) {
  $("mixing-card").hidden = !(meta.num_ws > 0);
  $("mix-layer").max = String(meta.num_ws || 0);
  $("mixing-hint").textContent = `style layers 0..${meta.num_ws}: from this layer on, a column's styles`;
}

export async function renderMixing(state) {
  const params = {
    model: state.model.id, row_seed: $("mix-row-seed").value.trim(), rows: $("mix-rows").value.trim(),
    col_seed: $("mix-col-seed").value.trim(), cols: $("mix-cols").value.trim(),
    mix_layer: $("mix-layer").value.trim(), psi: $("psi").value.trim(), format: "json",
  };
  $("mixing-error").hidden = true;
  try {
    const answer = await (await api("api/mixing", params)).json();
    const url = await blobUrl(tilesCanvas(answer));
    if (current) URL.revokeObjectURL(current);
    current = url;
    $("mixing-image").src = current;
    showCommand($("mixing-command"), answer.command);
    setStatus("style-mixing grid rendered");
  } catch (error) {
    $("mixing-error").textContent = error.message;
    $("mixing-error").hidden = false;
  }
}
