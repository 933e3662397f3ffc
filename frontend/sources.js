// The input side of the page: source tabs (webcam, sketch, screen, video file, text only) and their toolbars.
// Switching source picks the mode that fits; the camera or screen share is asked for only while started (Start),
// and released on Stop. The video tab is a drop zone until a file plays.

const $ = (id) => document.getElementById(id);
const VIDEO = ["camera", "screen", "file"];

/** What each source yields: a photo, a drawing, or nothing (the kinds of the schema's `mode.inputs`). */
const YIELDS = { camera: "photo", screen: "photo", file: "photo", sketch: "drawing", text: "none" };
/** The mode a source starts in. */
const STARTS_IN = { camera: "image", screen: "image", file: "image", sketch: "sketch", text: "text" };

/** The modes `source` can feed, from the schema's `inputs` (mode -> "none", "picture", "photo" or "drawing"): its own
 * starting mode first.  A picture mode takes any source that yields a picture; "none" takes every source. */
export function fittingModes(source, inputs) {
  const kind = YIELDS[source];
  const fits = (mode) => inputs[mode] === "none" || (kind !== "none" && [kind, "picture"].includes(inputs[mode]));
  const modes = Object.keys(inputs).filter(fits);
  return [STARTS_IN[source], ...modes.filter((m) => m !== STARTS_IN[source])].filter((m) => modes.includes(m));
}

export class Sources {
  constructor({ video, sketch, pump, onSourceChange, onError, onUnavailable }) {
    this.video = video;
    this.sketch = sketch;
    this.pump = pump;
    this.onSourceChange = onSourceChange; // (source) => void
    this.onError = onError; // (message) => void: something failed once
    this.onUnavailable = onUnavailable; // (message) => void: the camera or screen cannot be had (it stays so)
    this.current = null;
    this.running = false;
    this.#bindTabs();
    this.#bindCamera();
    this.#bindFile();
  }

  async select(source) {
    this.current = source;
    this.pump.source = source;
    const isVideo = VIDEO.includes(source);
    $("stage").dataset.source = source;
    $("stage").classList.toggle("swapped", source === "sketch"); // phones: draw on the big picture
    $("video").hidden = !isVideo;
    $("sketch").hidden = source !== "sketch";
    $("guide").hidden = source !== "sketch" || !this.sketch.hasGuide;
    $("text-hint").hidden = source !== "text";
    $("camera-tools").hidden = source !== "camera";
    $("file-tools").hidden = source !== "file";
    $("sketch-tools").hidden = source !== "sketch";
    document.querySelector(`input[name="source"][value="${source}"]`).checked = true;
    this.onSourceChange(source);
    this.#hints();
    if (!isVideo || source !== this.video.kind) this.video.stop();
    if (this.running) await this.#startMedia();
  }

  /** Start: turn on what the current source needs (a file, already chosen, plays on). */
  start() {
    this.running = true;
    this.video.resume()?.catch(() => {});
    return this.#startMedia();
  }

  /** Stop: release the camera or screen share; a video file pauses. */
  stop() {
    this.running = false;
    this.video.pause();
    this.#hints();
  }

  async #startMedia() {
    const source = this.current;
    try {
      if (source === "camera" && this.video.kind !== "camera") await this.#startCamera();
      if (source === "screen" && this.video.kind !== "screen") await this.video.startScreen();
    } catch (err) {
      if (!this.running || this.current !== source) return; // stopped, or another source chosen, meanwhile
      await this.select("sketch");
      const [what, tab] = source === "camera" ? ["Camera", "Webcam"] : ["Screen share", "Screen"];
      return this.onUnavailable(`${what} unavailable (${err.message}). Switched to the sketch canvas; choose ` +
        `${tab} to try again.`);
    }
    this.#hints();
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

  /** What the input view says when it has no picture: the drop zone, or what Start will turn on. */
  #hints() {
    const source = this.current;
    $("drop-zone").hidden = source !== "file" || this.video.kind === "file";
    const off = (source === "camera" || source === "screen") && this.video.kind !== source;
    const what = source === "camera" ? "The camera" : "Screen sharing";
    $("input-hint").hidden = !off;
    $("input-hint").textContent = this.running ? `${what} is starting…` : `${what} starts when you press Start.`;
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
  }

  /** A video file from the picker or dropped anywhere on the input view. */
  #bindFile() {
    const play = (file) => {
      if (this.current !== "file") this.select("file");
      this.video.startFile(file).then(
        () => this.#hints(),
        (err) => this.onError(`Cannot play that video: ${err.message}`),
      );
      this.#hints();
    };
    $("video-file").addEventListener("change", (e) => e.target.files[0] && play(e.target.files[0]));
    const view = $("input-view");
    view.addEventListener("dragover", (e) => {
      e.preventDefault();
      view.classList.add("dragging");
    });
    view.addEventListener("dragleave", () => view.classList.remove("dragging"));
    view.addEventListener("drop", (e) => {
      e.preventDefault();
      view.classList.remove("dragging");
      const file = [...(e.dataTransfer?.files || [])].find((f) => !f.type || f.type.startsWith("video/"));
      if (file) play(file);
      else this.onError("Drop a video file (for example .webm or .mp4).");
    });
  }
}
