// What the model's notes ask of the page (`model.sketch`, `model.display` in config.json and welcome; docs/protocol.md
// section 1): the sketch canvas's default pen width, the prompt sketch mode starts with, and how the output is
// enlarged (pixelated: each model pixel a sharp square).

export class ModelNotes {
  constructor({ sketch, controls, output, brush }) {
    this.sketch = sketch;
    this.controls = controls;
    this.output = output; // the output <canvas>
    this.brush = brush; // the brush-size slider (screen pixels)
    this.notes = null; // model.sketch, or null
    this.saved = null; // the visitor's prompt while sketch mode shows the model's
    window.addEventListener("resize", () => this.syncBrush());
  }

  /** The model is known (config.json or welcome); `source` is the current input source. */
  apply(model, source) {
    this.notes = model.sketch || null;
    this.output.style.imageRendering = model.display?.upscale === "pixelated" ? "pixelated" : "";
    this.sketch.setDefaultPen(this.notes?.pen_width ?? null);
    this.sourceChanged(source);
  }

  /** Entering the sketch puts the model's sketch prompt in the prompt box (the visitor's is kept); leaving it puts
   * the visitor's back, unless they changed the sketch prompt meanwhile. */
  sourceChanged(source) {
    this.syncBrush();
    const prompt = this.notes?.prompt;
    const input = this.controls.inputs.get("prompt")?.input;
    if (!prompt || !input) return;
    if (source === "sketch" && input.value !== prompt && this.saved === null) {
      this.saved = input.value;
      this.controls.change("prompt", prompt);
    } else if (source !== "sketch" && this.saved !== null) {
      if (input.value === prompt) this.controls.change("prompt", this.saved);
      this.saved = null;
    }
  }

  /** The slider shows the model's default pen in screen pixels until the visitor picks a size. */
  syncBrush() {
    const pixels = this.sketch.defaultPenPixels();
    if (pixels) this.brush.value = String(pixels);
  }
}
