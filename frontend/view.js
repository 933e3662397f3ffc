// The output side: draws generated frames (newest only), and owns snapshot, recording, full screen and the
// control image overlay. It follows the status pill's phase: while queued it shows a preview of the input (not a
// black square), while not live the last picture is dimmed, and Snapshot/Record wait for a generated frame.

import { snapshot, Recorder, toggleFullscreen } from "./output.js";
import { ChangeMeter } from "./change.js";
import { Feature } from "./protocol.js";

const $ = (id) => document.getElementById(id);
const CONTROL_EVERY_MS = 500;
const PREVIEW_EVERY_MS = 100;

export class OutputView {
  /** `preview(ctx, size)`: draws the current input, shown while queued; `onChange(value)`: a generated picture
   * differs from the one before by `value` (change.js). */
  constructor({ session, sketch, controls, preview, onError, onChange = () => {} }) {
    this.session = session;
    this.sketch = sketch;
    this.controls = controls;
    this.preview = preview;
    this.onError = onError;
    this.onChange = onChange;
    this.meter = new ChangeMeter();
    this.hasFrame = false; // the canvas shows a generated picture (not a preview, not empty)
    this.canvas = $("output");
    this.ctx = this.canvas.getContext("2d");
    this.recorder = new Recorder(this.canvas);
    this.params = {};
    this.frames = 0;
    this.drawing = null; // the frame being decoded; newer ones replace `next`
    this.next = null;
    this.#bind();
  }

  setSize(size) {
    if (this.canvas.width === size) return;
    this.canvas.width = this.canvas.height = size;
  }

  /** The status phase (status.js Phase values) decides dimming and the queued preview. */
  setPhase(phase) {
    $("output-view").dataset.phase = phase;
    clearInterval(this.previewTimer);
    this.meter.reset();
    if (phase !== "queued") return;
    const draw = () => {
      if (this.drawing || this.next) return;
      this.preview(this.ctx, this.canvas.width);
      this.#setHasFrame(false);
    };
    draw();
    this.previewTimer = setInterval(draw, PREVIEW_EVERY_MS);
  }

  show(frame) {
    this.next = frame;
    if (!this.drawing) this.#drawNext();
  }

  async #drawNext() {
    const frame = this.next;
    this.next = null;
    this.drawing = frame;
    try {
      const bitmap = await createImageBitmap(frame.image);
      this.ctx.drawImage(bitmap, 0, 0, this.canvas.width, this.canvas.height);
      const change = frame.reused || frame.skipped ? null : this.meter.measure(bitmap);
      if (change != null) this.onChange(change);
      bitmap.close();
      this.frames += 1;
      this.#setHasFrame(true);
      Object.assign(this.canvas.dataset, { frames: this.frames, frameId: frame.frameId, reused: frame.reused,
        skipped: frame.skipped });
    } catch {
      // An undecodable frame is skipped; the next one replaces it.
    }
    this.drawing = null;
    if (this.next) this.#drawNext();
  }

  async showControl(frame) {
    const img = $("control-image");
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(frame.image);
  }

  #setHasFrame(on) {
    this.hasFrame = on;
    $("snapshot").disabled = !on;
    $("record").disabled = !on && !this.recorder.recording;
  }

  stopRecording() {
    this.recorder.stop();
    $("record").setAttribute("aria-pressed", "false");
    $("record").textContent = "Record";
    $("record").disabled = !this.hasFrame;
  }

  /** The control image: the server's while the stream runs (feature "control", listed in config.json before Start
   * and in the welcome), else the inverted sketch the page computes itself; the edge map only comes from the server. */
  #refreshControl(explain = false) {
    const img = $("control-image");
    if (!$("show-control").checked) return;
    const mode = (this.session.active && this.params.mode) || this.controls.values.mode;
    const fromServer = this.session.features.includes(Feature.CONTROL);
    let why = null;
    const control = this.controls.modeInfo.control;
    if (!control.includes(mode)) why = `The control image exists in ${control.join(" and ")} modes only.`;
    else if (mode === "edges" && !fromServer) why = "This server does not send the edge map.";
    else if (mode === "edges" && !this.session.active) why = "The edge map comes from the server once you press Start.";
    img.hidden = !!why;
    if (why) return explain && this.onError(why);
    if (fromServer && this.session.active) return this.session.requestControl();
    const c = document.createElement("canvas");
    c.width = c.height = this.sketch.canvas.width;
    const ctx = c.getContext("2d");
    ctx.filter = "invert(1)";
    ctx.drawImage(this.sketch.canvas, 0, 0);
    img.src = c.toDataURL("image/png");
  }

  #bind() {
    $("snapshot").addEventListener("click", () => snapshot(this.canvas, { ...this.controls.values, ...this.params }));
    const record = $("record");
    record.hidden = !Recorder.supported();
    record.addEventListener("click", () => {
      const on = this.recorder.toggle();
      record.setAttribute("aria-pressed", String(on));
      record.textContent = on ? "Stop recording" : "Record";
    });
    $("fullscreen").addEventListener("click", () => toggleFullscreen($("output-view")));
    $("show-control").addEventListener("change", (e) => {
      if (!e.target.checked) $("control-image").hidden = true;
      this.#refreshControl(true);
    });
    setInterval(() => this.#refreshControl(), CONTROL_EVERY_MS);
  }
}
