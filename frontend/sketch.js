// Sketch canvas: pen, eraser, brush size, undo/redo, clear, an image to trace (shown under the strokes, never sent)
// and download. Strokes are kept as point lists in canvas pixels so undo is exact; `version` changes on every edit.

const INK = "#000000";
const PAPER = "#ffffff";

export class Sketch {
  constructor(canvas, guide) {
    this.canvas = canvas; // the strokes: black on white, what gets sent
    this.guide = guide; // a faint image to trace, layered under the canvas by CSS
    this.ctx = canvas.getContext("2d");
    this.strokes = [];
    this.redoStack = [];
    this.tool = "pen";
    this.size = 6; // screen pixels (the slider's)
    this.defaultPen = null; // the model's default pen, a fraction of the side (ModelNotes)
    this.userSized = false;
    this.version = 0;
    this.hasGuide = false;
    this.onchange = () => {};
    this.#bindPointer();
    this.redraw();
  }

  setTool(tool) {
    this.tool = tool;
  }

  /** The visitor's brush size, in screen pixels (the slider's). */
  setSize(size) {
    this.size = Number(size);
    this.userSized = true;
  }

  /** The model's default pen, a fraction of the canvas side (null: the slider's size), until the visitor picks one. */
  setDefaultPen(fraction) {
    this.defaultPen = fraction;
  }

  /** The default pen in screen pixels at the canvas's current size; null when the visitor chose a size, the model
   * gave no pen, or the canvas is hidden. */
  defaultPenPixels() {
    const width = this.canvas.getBoundingClientRect().width;
    if (!this.defaultPen || this.userSized || !width) return null;
    return Math.max(1, Math.round(this.defaultPen * width));
  }

  undo() {
    if (!this.strokes.length) return;
    this.redoStack.push(this.strokes.pop());
    this.#changed();
  }

  redo() {
    if (!this.redoStack.length) return;
    this.strokes.push(this.redoStack.pop());
    this.#changed();
  }

  clear() {
    if (!this.strokes.length) return;
    // Clearing is one undoable step: push the whole set as a single "clear" marker.
    this.strokes.push({ clear: true });
    this.redoStack = [];
    this.#changed();
  }

  /** Show an image under the strokes to trace over; it is not part of the sent sketch. */
  async loadGuide(file) {
    const bitmap = await createImageBitmap(file);
    const g = this.guide.getContext("2d");
    const { width: W, height: H } = this.guide;
    const scale = Math.min(W / bitmap.width, H / bitmap.height);
    const w = bitmap.width * scale;
    const h = bitmap.height * scale;
    g.clearRect(0, 0, W, H);
    g.drawImage(bitmap, (W - w) / 2, (H - h) / 2, w, h);
    this.hasGuide = true;
    this.guide.hidden = false;
  }

  clearGuide() {
    this.guide.getContext("2d").clearRect(0, 0, this.guide.width, this.guide.height);
    this.hasGuide = false;
    this.guide.hidden = true;
  }

  download() {
    this.canvas.toBlob((blob) => {
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "sketch.png";
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    }, "image/png");
  }

  redraw() {
    const { ctx, canvas } = this;
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const lastClear = this.strokes.map((s) => !!s.clear).lastIndexOf(true);
    for (const stroke of this.strokes.slice(lastClear + 1)) this.#paint(stroke);
  }

  #paint(stroke) {
    const { ctx } = this;
    ctx.strokeStyle = stroke.tool === "eraser" ? PAPER : INK;
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineWidth = stroke.size;
    ctx.lineCap = ctx.lineJoin = "round";
    const [first, ...rest] = stroke.points;
    ctx.beginPath();
    if (!rest.length) {
      ctx.arc(first[0], first[1], stroke.size / 2, 0, Math.PI * 2);
      ctx.fill();
      return;
    }
    ctx.moveTo(first[0], first[1]);
    for (const [x, y] of rest) ctx.lineTo(x, y);
    ctx.stroke();
  }

  #changed() {
    this.version += 1;
    this.redraw();
    this.onchange();
  }

  #point(event) {
    const r = this.canvas.getBoundingClientRect();
    return [
      ((event.clientX - r.left) / r.width) * this.canvas.width,
      ((event.clientY - r.top) / r.height) * this.canvas.height,
    ];
  }

  #bindPointer() {
    let current = null;
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => {
      c.setPointerCapture(e.pointerId);
      const size = this.defaultPen && !this.userSized
        ? this.defaultPen * c.width
        : (this.size * c.width) / Math.max(1, c.getBoundingClientRect().width);
      current = { tool: this.tool, size, points: [this.#point(e)] };
      this.strokes.push(current);
      this.redoStack = [];
      this.#changed();
    });
    c.addEventListener("pointermove", (e) => {
      if (!current) return;
      current.points.push(this.#point(e));
      this.#changed();
    });
    const end = () => {
      current = null;
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
  }
}
