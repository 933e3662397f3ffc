// The frame pump: whenever flow control allows, take the newest picture from the current source, encode it and
// send it. Webcam-like sources stream continuously; a sketch or text prompt is sent when it changes, plus a slow
// refresh that the server answers from its cache (REUSED, no inference).

import { Format } from "./protocol.js";

const REFRESH_MS = 1000;
const JPEG_QUALITY = 0.85;

export class Pump {
  constructor({ session, metrics, video, sketch }) {
    this.session = session;
    this.metrics = metrics;
    this.video = video;
    this.sketch = sketch;
    this.source = "camera"; // camera | screen | file | sketch | text
    this.textOnly = false; // the mode takes no input image
    this.size = 512;
    this.canvas = document.createElement("canvas");
    this.busy = false;
    this.dirty = true; // parameters changed since the last frame
    this.lastSent = 0;
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

  loop() {
    requestAnimationFrame(this.loop);
    if (this.busy || document.hidden || !this.session.canSend) return;
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

  /** The next frame to send, or null when there is nothing new. */
  async #next() {
    const due = this.dirty || performance.now() - this.lastSent > REFRESH_MS;
    if (this.textOnly || this.source === "text") return due ? { format: Format.NONE, bytes: null } : null;
    if (this.source === "sketch") {
      const changed = this.sketch.version !== this.sketchCache.version || this.size !== this.sketchCache.size;
      return changed || due ? { format: Format.JPEG, bytes: await this.#sketchBytes() } : null;
    }
    if (!this.video.ready) return null;
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
