// The view in the page's URL: ?model=&seed=&n=&class=&psi= for the grid, and seed_a=&seed_b=&steps=&walk_class=
// once a walk is shown. Opening such a link fills the controls and renders the same images (the same pixels:
// the server draws them from these values alone). The names are the API's, so a link reads like its requests.

import { $ } from "./lib.js";

const SAMPLE_FIELDS = { seed: "seed", n: "n", psi: "psi" };
const WALK_FIELDS = { seed_a: "seed-a", seed_b: "seed-b", steps: "steps" };

// A class as the URL gives it (an index, "all", or a name in any case) -> the select's value.
function classValue(select, given, classes) {
  if ([...select.options].some((o) => o.value === given)) return given;
  const index = classes.findIndex((name) => name.toLowerCase() === given.toLowerCase());
  return index >= 0 ? String(index) : given;
}

function setClass(select, given, classes) {
  const value = classValue(select, given, classes);
  if (![...select.options].some((o) => o.value === value)) select.append(new Option(value, value)); // the server
  select.value = value;                                                                              // names it
}

export function readView(modelIds) {
  const query = new URLSearchParams(location.search);
  const model = modelIds.includes(query.get("model")) ? query.get("model") : modelIds[0];
  const walk = ["seed_a", "seed_b", "steps", "walk_class"].some((key) => query.has(key));
  return {
    model,
    walk,
    fill() {  // after the model's controls exist
      for (const [key, id] of Object.entries({ ...SAMPLE_FIELDS, ...WALK_FIELDS })) {
        if (query.has(key)) $(id).value = query.get(key);
      }
      if (query.has("psi")) $("psi-range").value = query.get("psi");
      const classes = [...$("walk-class").options].slice(0, -1).map((o) => o.text);
      if (query.has("class")) setClass($("class"), query.get("class"), classes);
      if (query.has("walk_class")) setClass($("walk-class"), query.get("walk_class"), classes);
    },
  };
}

// The current view as the page's URL (relative: the proxy's prefix stays), replacing the history entry.
export function writeView(state) {
  const params = new URLSearchParams({ model: state.model.id });
  for (const [key, value] of Object.entries(state.gridParams || {})) {
    if (key !== "model" && value !== undefined) params.set(key, value);
  }
  if (state.walk) {
    for (const key of ["seed_a", "seed_b", "steps"]) params.set(key, state.walk.params[key]);
    if (state.walk.params.class !== undefined) params.set("walk_class", state.walk.params.class);
  }
  history.replaceState(null, "", `?${params}`);
}
