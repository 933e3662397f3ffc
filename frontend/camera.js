// Video sources: webcam (picker, front/rear, mirror), screen share and a local video file.
// Every source ends up in one <video> element; `drawSquare` copies its centre square onto a canvas. `frames` counts
// the new pictures the element has shown, so a 2 fps camera gives 2 new pictures a second however often one looks.

export class VideoSource {
  constructor(video) {
    this.video = video;
    this.stream = null;
    this.objectUrl = null;
    this.mirror = false;
    this.facing = "user";
    this.kind = null; // "camera" | "screen" | "file"
    this.frames = 0; // new pictures shown so far (never reset)
    this.lastFrameAt = -Infinity; // performance.now() of the newest one
    this.startedAt = -Infinity; // when the current source was asked for (a camera may wait for permission)
    this.#countFrames();
  }

  /** One count per picture the element presents: requestVideoFrameCallback, else the decoder's frame counter (or the
   * playback time, for files) polled once per animation frame. */
  #countFrames() {
    const seen = () => {
      this.frames += 1;
      this.lastFrameAt = performance.now();
    };
    if ("requestVideoFrameCallback" in this.video) {
      const onFrame = () => {
        seen();
        this.video.requestVideoFrameCallback(onFrame);
      };
      return this.video.requestVideoFrameCallback(onFrame);
    }
    let last = null;
    const poll = () => {
      requestAnimationFrame(poll);
      if (!this.ready) return;
      const mark = this.video.getVideoPlaybackQuality?.().totalVideoFrames || this.video.currentTime;
      if (mark !== last) seen();
      last = mark;
    };
    requestAnimationFrame(poll);
  }

  get ready() {
    return this.video.readyState >= 2 && this.video.videoWidth > 0;
  }

  /** Labels only appear once the visitor has given camera permission. */
  async listCameras() {
    if (!navigator.mediaDevices?.enumerateDevices) return [];
    const devices = await navigator.mediaDevices.enumerateDevices();
    return devices
      .filter((d) => d.kind === "videoinput")
      .map((d, i) => ({ id: d.deviceId, label: d.label || `Camera ${i + 1}` }));
  }

  async startCamera(deviceId = null) {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error("This browser gives no camera access here. Webcam needs HTTPS or localhost.");
    }
    this.startedAt = performance.now();
    const video = deviceId ? { deviceId: { exact: deviceId } } : { facingMode: this.facing };
    Object.assign(video, { width: { ideal: 640 }, height: { ideal: 480 } });
    const stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
    this.mirror = this.facing === "user";
    await this.#play(stream, "camera");
  }

  /** Phones: switch between the front ("user") and rear ("environment") camera. */
  async flip() {
    this.facing = this.facing === "user" ? "environment" : "user";
    await this.startCamera(null);
  }

  async startScreen() {
    if (!navigator.mediaDevices?.getDisplayMedia) throw new Error("Screen sharing is not supported here.");
    this.startedAt = performance.now();
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    this.mirror = false;
    await this.#play(stream, "screen");
  }

  async startFile(file) {
    this.stop();
    this.objectUrl = URL.createObjectURL(file);
    Object.assign(this.video, { srcObject: null, src: this.objectUrl, loop: true, muted: true });
    this.mirror = false;
    this.kind = "file";
    this.startedAt = performance.now();
    await this.video.play();
  }

  async #play(stream, kind) {
    this.stop();
    this.stream = stream;
    this.kind = kind;
    // A screen share can be ended from the browser's own bar.
    stream.getVideoTracks()[0]?.addEventListener("ended", () => this.stop());
    Object.assign(this.video, { src: "", srcObject: stream, muted: true });
    this.video.playsInline = true;
    await this.video.play();
  }

  /** Stop: a file pauses (it is no device), cameras and screen shares are released. */
  pause() {
    if (this.kind === "file") this.video.pause();
    else this.stop();
  }

  resume() {
    if (this.kind !== "file") return;
    this.startedAt = performance.now();
    return this.video.play();
  }

  stop() {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = null;
    this.video.srcObject = null;
    this.video.removeAttribute("src");
    this.kind = null;
  }

  /** Draw the centred square of the current frame onto ctx (size x size), mirrored when asked. */
  drawSquare(ctx, size) {
    const { videoWidth: w, videoHeight: h } = this.video;
    const side = Math.min(w, h);
    ctx.save();
    if (this.mirror) {
      ctx.translate(size, 0);
      ctx.scale(-1, 1);
    }
    ctx.drawImage(this.video, (w - side) / 2, (h - side) / 2, side, side, 0, 0, size, size);
    ctx.restore();
  }
}
