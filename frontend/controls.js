// Parameter controls built from the server's JSON schema of GenerationParams: one field per property, so a new
// parameter needs no change here, and a field shows in the modes its schema lists (`modes`; every mode without).
// Edits are sent after a short debounce; the server's `params_ok` is the truth.

const MAX_SLIDER_STEPS = 1000;

function resolve(schema, prop) {
  if (prop.$ref) return { ...schema.$defs?.[prop.$ref.split("/").pop()], ...prop };
  const options = prop.anyOf?.filter((p) => p.type !== "null");
  if (options?.length === 1) return { ...options[0], ...prop, nullable: true };
  return prop;
}

export function el(tag, attrs = {}, ...children) {
  const node = Object.assign(document.createElement(tag), attrs);
  node.append(...children);
  return node;
}

export class Controls {
  constructor(form, { onChange, debounceMs = 200 }) {
    this.form = form;
    this.onChange = onChange; // called with an object of changed fields
    this.debounceMs = debounceMs;
    this.inputs = new Map(); // name -> {input, prop, row}
    this.modeInfo = { inputs: {}, control: [] }; // the schema's `mode`: each mode's input kind, the ControlNet modes
    this.pending = {};
    this.timer = null;
  }

  /** `choices`: field -> allowed values (e.g. mode -> the modes the model has loaded, style -> loaded styles). */
  build(schema, values, choices = {}) {
    this.form.replaceChildren();
    this.inputs.clear();
    const mode = schema.properties.mode ? resolve(schema, schema.properties.mode) : {};
    this.modeInfo = { inputs: mode.inputs || {}, control: mode.control || [] };
    for (const [name, raw] of Object.entries(schema.properties)) {
      const prop = resolve(schema, raw);
      const input = Object.assign(this.#input(prop, choices[name]), { id: `p-${name}`, name });
      input.addEventListener("input", () => this.#edited(name));
      const row = el("div", { className: "row" }, input);
      if (input.type === "range") row.append(el("output", { htmlFor: input.id }));
      const label = el("label", { className: "field", title: prop.description || "" },
        el("span", {}, prop.title || name), row, el("span", { className: "error", id: `e-${name}` }));
      label.dataset.field = name;
      if (prop.modes) label.dataset.modes = prop.modes.join(","); // the modes it applies in, from the schema
      label.hidden = choices[name]?.length === 0 && !prop.enum; // e.g. no style adapters loaded: nothing to pick
      this.inputs.set(name, { input, prop, row });
      this.form.append(label);
    }
    this.set(values);
  }

  get values() {
    const out = {};
    for (const [name, { input, prop }] of this.inputs) out[name] = this.#read(input, prop);
    return out;
  }

  /** Show values from the server without sending them back (the prompt being typed is left alone). */
  set(values) {
    for (const [name, value] of Object.entries(values)) {
      const entry = this.inputs.get(name);
      if (!entry || (name in this.pending) || (document.activeElement === entry.input && name === "prompt")) continue;
      entry.input.value = value ?? "";
      const output = entry.row.querySelector("output");
      if (output) output.value = entry.input.value;
      this.showError(name, "");
    }
    this.#relevance();
    this.form.dispatchEvent(new Event("values")); // e.g. the stability picker follows (stability.js)
  }

  /** Change a value as if the visitor had (e.g. the mode when the source changes). */
  change(name, value) {
    const entry = this.inputs.get(name);
    if (!entry) return;
    entry.input.value = value;
    this.#edited(name);
  }

  /** Limit an enum field to `allowed` values (e.g. the modes that fit the current source). */
  restrict(name, allowed) {
    const entry = this.inputs.get(name);
    if (!entry?.prop.enum) return;
    for (const option of entry.input.options) option.hidden = !allowed.includes(option.value);
  }

  showError(name, message) {
    const node = this.form.querySelector(`#e-${name}`);
    if (node) node.textContent = message;
  }

  flush() {
    clearTimeout(this.timer);
    const changed = this.pending;
    this.pending = {};
    if (Object.keys(changed).length) this.onChange(changed);
  }

  #input(prop, allowed) {
    const options = prop.enum ? prop.enum.filter((v) => !allowed || allowed.includes(v)) : allowed;
    if (options && (prop.enum || prop.type === "string")) {
      const none = prop.nullable ? [el("option", { value: "" }, "none")] : [];
      return el("select", {}, ...none, ...options.map((v) => el("option", { value: v }, v)));
    }
    if (prop.type === "string" && (prop.maxLength ?? 0) > 200) return el("textarea", { maxLength: prop.maxLength, rows: 3 });
    if (prop.type === "string") return el("input", { type: "text", maxLength: prop.maxLength ?? 256, placeholder: "none" });
    const step = prop.type === "integer" ? 1 : 0.01;
    const span = (prop.maximum ?? Infinity) - (prop.minimum ?? -Infinity);
    const type = span / step <= MAX_SLIDER_STEPS ? "range" : "number";
    return el("input", { type, min: prop.minimum ?? "", max: prop.maximum ?? "", step });
  }

  #read(input, prop) {
    const v = input.value;
    if (prop.type === "integer") return Number.parseInt(v, 10);
    if (prop.type === "number") return Number.parseFloat(v);
    if (prop.nullable && v.trim() === "") return null;
    return v;
  }

  #edited(name) {
    const { input, prop, row } = this.inputs.get(name);
    this.pending[name] = this.#read(input, prop);
    const output = row.querySelector("output");
    if (output) output.value = input.value;
    if (name === "mode") this.#relevance();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), this.debounceMs);
  }

  #relevance() {
    const mode = this.inputs.get("mode")?.input.value;
    for (const label of this.form.querySelectorAll("[data-modes]")) {
      label.hidden = !!mode && !label.dataset.modes.split(",").includes(mode);
    }
  }
}
