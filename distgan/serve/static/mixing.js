// The style-mixing grid of style-based models (StyleGAN2): /api/mixing as one PNG, shown when the model has styles.

import { $, api, commandOf, setStatus, showCommand } from "/static/lib.js";

let current = null; // the shown grid's object URL

export function showMixing(meta) {
  $("mixing-card").hidden = !(meta.num_ws > 0);
  $("mix-layer").max = String(meta.num_ws || 0);
  $("mixing-hint").textContent = `style layers 0..${meta.num_ws}: from this layer on, a column's styles`;
}

export async function renderMixing(state) {
  const params = {
    model: state.model.id, row_seed: $("mix-row-seed").value.trim(), rows: $("mix-rows").value.trim(),
    col_seed: $("mix-col-seed").value.trim(), cols: $("mix-cols").value.trim(),
    mix_layer: $("mix-layer").value.trim(), psi: $("psi").value.trim(),
  };
  $("mixing-error").hidden = true;
  try {
    const response = await api("/api/mixing", params);
    if (current) URL.revokeObjectURL(current);
    current = URL.createObjectURL(await response.blob());
    $("mixing-image").src = current;
    showCommand($("mixing-command"), commandOf(response));
    setStatus("style-mixing grid rendered");
  } catch (error) {
    $("mixing-error").textContent = error.message;
    $("mixing-error").hidden = false;
  }
}
