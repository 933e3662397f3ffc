// What visitors take away: a PNG snapshot that carries prompt and seed (tEXt chunks), a WebM recording of the
// output canvas, and full screen.

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A PNG tEXt chunk: Latin-1 keyword, NUL, Latin-1 text (non-Latin-1 characters become "?"). */
function textChunk(keyword, text) {
  const latin1 = (s) => Array.from(s, (ch) => (ch.charCodeAt(0) < 256 ? ch.charCodeAt(0) : 63));
  const data = Uint8Array.from([...latin1("tEXt"), ...latin1(keyword), 0, ...latin1(text)]);
  const out = new Uint8Array(12 + data.length - 4);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length - 4);
  out.set(data, 4);
  view.setUint32(out.length - 4, crc32(data));
  return out;
}

/** Insert tEXt chunks right after IHDR (8-byte signature + 25-byte IHDR chunk). */
export function addPngText(pngBytes, entries) {
  const head = pngBytes.subarray(0, 33);
  const chunks = Object.entries(entries).map(([k, v]) => textChunk(k, String(v)));
  return new Blob([head, ...chunks, pngBytes.subarray(33)], { type: "image/png" });
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 2000);
}

export async function snapshot(canvas, params) {
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const meta = { Software: "SDXS real-time demo", prompt: params.prompt ?? "", seed: params.seed ?? "" };
  save(addPngText(bytes, meta), `sdxs-${params.seed ?? "frame"}.png`);
}

export class Recorder {
  constructor(canvas) {
    this.canvas = canvas;
    this.recorder = null;
    this.chunks = [];
  }

  get recording() {
    return this.recorder?.state === "recording";
  }

  static supported() {
    return typeof MediaRecorder !== "undefined" && !!HTMLCanvasElement.prototype.captureStream;
  }

  start() {
    const type = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"].find((t) =>
      MediaRecorder.isTypeSupported(t),
    );
    this.chunks = [];
    this.recorder = new MediaRecorder(this.canvas.captureStream(30), type ? { mimeType: type } : {});
    this.recorder.ondataavailable = (e) => e.data.size && this.chunks.push(e.data);
    this.recorder.onstop = () => save(new Blob(this.chunks, { type: "video/webm" }), "sdxs-recording.webm");
    this.recorder.start(1000);
  }

  stop() {
    if (this.recording) this.recorder.stop();
  }

  toggle() {
    this.recording ? this.stop() : this.start();
    return this.recording;
  }
}

export function toggleFullscreen(element) {
  if (document.fullscreenElement) return document.exitFullscreen();
  return element.requestFullscreen?.();
}
