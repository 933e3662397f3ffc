// Live video settings that come from the schema but read as one choice or follow the source: the "Stability"
// picker (off / smooth / steady: the server's `stability_presets` of `feedback` and `bank`; "custom" once one is
// moved by hand), the values a live page starts with (each field's `live_default`: stability and the skip filter
// on), and the fields marked `video`, which serve moving pictures only: a sketch or a prompt repeats its input
// exactly (the server answers it from its cache), so there they take their plain defaults (off), and each kind of
// source gets back the values the visitor last chose for it.

import { el } from "./controls.js";
import { VIDEO_SOURCES } from "./pump.js";

/** The parameters a live page starts with: each field's `live_default`, else its `default`. */
export function liveDefaults(schema) {
  return Object.fromEntries(Object.entries(schema.properties).map(([k, v]) => [k, v.live_default ?? v.default]));
}

export class LiveSettings {
  constructor(controls, schema) {
    this.controls = controls;
    const video = Object.entries(schema.properties).filter(([, p]) => p.video);
    this.saved = { // per kind of source: the values of the `video` fields
      video: Object.fromEntries(video.map(([k, p]) => [k, p.live_default ?? p.default])),
      still: Object.fromEntries(video.map(([k, p]) => [k, p.default])),
    };
    this.kind = "video"; // what the controls were built with (liveDefaults)
    this.#addPicker(schema.stability_presets || {});
  }

  /** The source changed: its kind's values for the `video` fields. */
  fit(source) {
    const kind = VIDEO_SOURCES.includes(source) ? "video" : "still";
    if (kind === this.kind) return;
    const values = this.controls.values;
    this.saved[this.kind] = Object.fromEntries(Object.keys(this.saved[kind]).map((k) => [k, values[k]]));
    this.kind = kind;
    for (const [field, value] of Object.entries(this.saved[kind])) {
      if (values[field] !== value) this.controls.change(field, value);
    }
  }

  /** The "Stability" picker above the first field it sets; it follows those fields whoever changes them. */
  #addPicker(presets) {
    const fields = Object.keys(Object.values(presets)[0] || {});
    const first = fields.length && this.controls.inputs.get(fields[0]);
    if (!first) return;
    const names = Object.keys(presets);
    const select = el("select", { id: "stability", title: "How much each picture holds on to the ones before" },
      ...names.map((name) => el("option", { value: name }, name)), el("option", { value: "custom" }, "custom"));
    const current = () => {
      const values = this.controls.values;
      return names.find((n) => fields.every((f) => Math.abs(values[f] - presets[n][f]) < 1e-6)) || "custom";
    };
    select.addEventListener("change", () => {
      if (select.value === "custom") return;
      for (const [field, value] of Object.entries(presets[select.value])) this.controls.change(field, value);
    });
    const sync = () => (select.value = current());
    const form = this.controls.form;
    form.addEventListener("input", (e) => e.target !== select && sync()); // a field moved by hand
    form.addEventListener("values", sync); // values set from the server (welcome, params_ok) or by fit()
    const field = first.row.parentElement;
    const label = el("label", { className: "field" }, el("span", {}, "Stability"), select);
    Object.assign(label.dataset, { field: "stability", ...(field.dataset.modes && { modes: field.dataset.modes }) });
    field.before(label);
    sync();
  }
}
