// What the model's notes ask of the page (`model.sketch`, `model.display` in config.json and welcome; docs/protocol.md
// section 1): the sketch canvas's default pen width, the prompt and control scale sketch mode starts with, and how
// the output is enlarged (pixelated: each model pixel a sharp square).

const SKETCH_PARAMS = { prompt: "prompt", control_scale: "control_scale" }; // note -> parameter

export class ModelNotes {
  constructor({ sketch, controls, output, brush }) {
    this.sketch = sketch;
    this.controls = controls;
    this.output = output; // the output <canvas>
    this.brush = brush; // the brush-size slider (screen pixels)
    this.notes = null; // model.sketch, or null
    this.saved = null; // the visitor's values of the parameters sketch mode sets, while it shows the model's
    window.addEventListener("resize", () => this.syncBrush());
  }

  /** The model is known (config.json or welcome); `source` is the current input source. */
  apply(model, source) {
    this.notes = model.sketch || null;
    this.output.style.imageRendering = model.display?.upscale === "pixelated" ? "pixelated" : "";
    this.sketch.setDefaultPen(this.notes?.pen_width ?? null);
    this.sourceChanged(source);
  }

  /** Entering the sketch sets the model's sketch prompt and control scale (the visitor's are kept); leaving it puts
   * back each one the visitor did not change meanwhile. */
  sourceChanged(source) {
    this.syncBrush();
    const wanted = this.#wanted();
    if (!Object.keys(wanted).length) return;
    if (source === "sketch" && this.saved === null) {
      this.saved = Object.fromEntries(Object.keys(wanted).map((k) => [k, this.#value(k)]));
      for (const [name, value] of Object.entries(wanted)) this.controls.change(name, value);
    } else if (source !== "sketch" && this.saved !== null) {
      for (const [name, value] of Object.entries(this.saved)) {
        if (String(this.#value(name)) === String(wanted[name])) this.controls.change(name, value);
      }
      this.saved = null;
    }
  }

  /** The slider shows the model's default pen in screen pixels until the visitor picks a size. */
  syncBrush() {
    const pixels = this.sketch.defaultPenPixels();
    if (pixels) this.brush.value = String(pixels);
  }

  #wanted() {
    const out = {};
    for (const [note, param] of Object.entries(SKETCH_PARAMS)) {
      if (this.notes?.[note] != null && this.controls.inputs.has(param)) out[param] = this.notes[note];
    }
    return out;
  }

  #value(name) {
    return this.controls.inputs.get(name).input.value;
  }
}
