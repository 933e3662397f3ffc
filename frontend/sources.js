// The input side of the page: source tabs (webcam, sketch, screen, video file, text only) and their toolbars.
// Switching source starts/stops the camera and picks the mode that fits, unless the visitor chose one that fits.

const $ = (id) => document.getElementById(id);

/** Modes each source can feed; the first one is the default. */
export const SOURCE_MODES = {
  camera: ["image", "edges", "text"],
  screen: ["image", "edges", "text"],
  file: ["image", "edges", "text"],
  sketch: ["sketch", "image", "text"],
  text: ["text"],
};

export class Sources {
  constructor({ video, sketch, pump, onSourceChange, onError }) {
    this.video = video;
    this.sketch = sketch;
    this.pump = pump;
    this.onSourceChange = onSourceChange; // (source) => void
    this.onError = onError; // (message) => void
    this.current = null;
    this.#bindTabs();
    this.#bindCamera();
    this.#bindSketch();
  }

  async select(source) {
    this.current = source;
    this.pump.source = source;
    const isVideo = ["camera", "screen", "file"].includes(source);
    $("video").hidden = !isVideo;
    $("sketch").hidden = source !== "sketch";
    $("guide").hidden = source !== "sketch" || !this.sketch.hasGuide;
    $("text-hint").hidden = source !== "text";
    $("camera-tools").hidden = source !== "camera";
    $("file-tools").hidden = source !== "file";
    $("sketch-tools").hidden = source !== "sketch";
    document.querySelector(`input[name="source"][value="${source}"]`).checked = true;
    this.onSourceChange(source);
    if (!isVideo) return this.video.stop();
    try {
      if (source === "camera") await this.#startCamera();
      if (source === "screen") await this.video.startScreen();
      if (source === "file") this.video.stop();
    } catch (err) {
      const what = source === "camera" ? "Camera" : "Screen share";
      this.onError(`${what} unavailable (${err.message}). Switched to the sketch canvas.`);
      if (this.current === source) return this.select("sketch");
    }
    this.#mirrorUi();
  }

  async #startCamera(deviceId = null) {
    await this.video.startCamera(deviceId);
    const select = $("camera-select");
    const cameras = await this.video.listCameras();
    const chosen = this.video.stream?.getVideoTracks()[0]?.getSettings().deviceId;
    select.replaceChildren(...cameras.map((c) => new Option(c.label, c.id, false, c.id === chosen)));
    $("flip").hidden = cameras.length < 2;
  }

  #mirrorUi() {
    $("mirror").checked = this.video.mirror;
    $("video").classList.toggle("mirrored", this.video.mirror);
  }

  #bindTabs() {
    for (const radio of document.querySelectorAll('input[name="source"]')) {
      radio.addEventListener("change", () => radio.checked && this.select(radio.value));
    }
  }

  #bindCamera() {
    const guard = (fn) => () => fn().then(() => this.#mirrorUi(), (err) => this.onError(err.message));
    $("camera-select").addEventListener("change", guard(() => this.#startCamera($("camera-select").value)));
    $("flip").addEventListener("click", guard(() => this.video.flip()));
    $("mirror").addEventListener("change", () => {
      this.video.mirror = $("mirror").checked;
      this.#mirrorUi();
    });
    $("video-file").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (file) this.video.startFile(file).catch((err) => this.onError(`Cannot play that video: ${err.message}`));
    });
  }

  #bindSketch() {
    const s = this.sketch;
    for (const radio of document.querySelectorAll('input[name="tool"]')) {
      radio.addEventListener("change", () => radio.checked && s.setTool(radio.value));
    }
    $("brush-size").addEventListener("input", (e) => s.setSize(e.target.value));
    $("undo").addEventListener("click", () => s.undo());
    $("redo").addEventListener("click", () => s.redo());
    $("clear").addEventListener("click", () => s.clear());
    $("download-sketch").addEventListener("click", () => s.download());
    $("trace-file").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (file) s.loadGuide(file).catch(() => this.onError("That file is not an image this browser can read."));
    });
    document.addEventListener("keydown", (e) => {
      if (this.current !== "sketch" || !(e.ctrlKey || e.metaKey) || e.target.closest("input, textarea")) return;
      const key = e.key.toLowerCase();
      if (key === "z" && !e.shiftKey) s.undo();
      else if (key === "y" || (key === "z" && e.shiftKey)) s.redo();
      else return;
      e.preventDefault();
    });
  }
}
