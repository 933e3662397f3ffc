// The frame pump: whenever flow control allows, send the source's newest picture if it is new. A video source sends
// each picture it shows once (a 2 fps camera sends 2 frames a second); a sketch or text prompt is sent when it
// changes, plus a slow refresh that the server answers from its cache (REUSED, no inference). Nothing goes out while
// a mode change is under way, so no frame meets parameters that do not fit it.

import { Format } from "./protocol.js";

const REFRESH_MS = 1000;
const JPEG_QUALITY = 0.85;
const STALL_MS = 3000; // a video source without a new picture this long is waiting, not live
export const VIDEO_SOURCES = ["camera", "screen", "file"];

export class Pump {
  /** `settled()`: true when the parameters in force on the server are the ones the controls show (mode included). */
  constructor({ session, metrics, video, sketch, settled }) {
    this.session = session;
    this.metrics = metrics;
    this.video = video;
    this.sketch = sketch;
    this.settled = settled;
    this.source = "camera"; // camera | screen | file | sketch | text
    this.textOnly = false; // the mode in force takes no input image
    this.size = 512;
    this.canvas = document.createElement("canvas");
    this.busy = false;
    this.dirty = true; // parameters changed since the last frame
    this.lastSent = 0;
    this.sentVideoFrame = -1; // video.frames when the last video picture was taken
    this.sketchCache = { version: -1, size: 0, bytes: null };
    this.loop = this.loop.bind(this);
    requestAnimationFrame(this.loop);
  }

  setSize(size) {
    this.size = size;
    this.canvas.width = this.canvas.height = size;
  }

  touch() {
    this.dirty = true;
  }

  /** True while the source should stream pictures but none came lately: no file chosen yet, or a camera (screen,
   * file) that gave no new picture for STALL_MS since it was asked for (a permission prompt, a stalled device). */
  get starved() {
    if (this.textOnly || !VIDEO_SOURCES.includes(this.source)) return false;
    if (this.source === "file" && this.video.kind !== "file") return true;
    return performance.now() - Math.max(this.video.lastFrameAt, this.video.startedAt) > STALL_MS;
  }

  /** The source needs no picture, or gave one since it was (re)started: the stream is really live. */
  get feeding() {
    if (this.textOnly || !VIDEO_SOURCES.includes(this.source)) return true;
    return this.video.lastFrameAt >= this.video.startedAt;
  }

  loop() {
    requestAnimationFrame(this.loop);
    if (this.busy || document.hidden || !this.session.canSend || !this.settled()) return;
    this.busy = true;
    this.#next()
      .then((frame) => {
        if (frame && this.session.sendFrame(frame.format, frame.bytes)) {
          this.metrics.frameSent();
          this.lastSent = performance.now();
          this.dirty = false;
        }
      })
      .catch((err) => console.warn("frame skipped:", err))
      .finally(() => (this.busy = false));
  }

  /** Draw what the current source shows now onto ctx (size x size), e.g. a preview while queued. */
  drawInput(ctx, size) {
    if (this.source === "sketch") return ctx.drawImage(this.sketch.canvas, 0, 0, size, size);
    if (VIDEO_SOURCES.includes(this.source) && this.video.ready) return this.video.drawSquare(ctx, size);
    ctx.clearRect(0, 0, size, size);
  }

  /** The next frame to send, or null when there is nothing new. */
  async #next() {
    const due = this.dirty || performance.now() - this.lastSent > REFRESH_MS;
    if (this.textOnly || this.source === "text") return due ? { format: Format.NONE, bytes: null } : null;
    if (this.source === "sketch") {
      const changed = this.sketch.version !== this.sketchCache.version || this.size !== this.sketchCache.size;
      return changed || due ? { format: Format.JPEG, bytes: await this.#sketchBytes() } : null;
    }
    if (!this.video.ready || this.video.frames === this.sentVideoFrame) return null; // no new picture yet
    this.sentVideoFrame = this.video.frames;
    this.video.drawSquare(this.canvas.getContext("2d"), this.size);
    return { format: Format.JPEG, bytes: await this.#encode() };
  }

  /** Same sketch -> the very same bytes, so the server can recognise it and skip inference. */
  async #sketchBytes() {
    const { version } = this.sketch;
    if (version === this.sketchCache.version && this.size === this.sketchCache.size) return this.sketchCache.bytes;
    const ctx = this.canvas.getContext("2d");
    ctx.drawImage(this.sketch.canvas, 0, 0, this.size, this.size);
    this.sketchCache = { version, size: this.size, bytes: await this.#encode() };
    return this.sketchCache.bytes;
  }

  async #encode() {
    const blob = await new Promise((resolve) => this.canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
    return blob.arrayBuffer();
  }
}
