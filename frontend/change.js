// How much the output picture changes from one generated frame to the next: the mean absolute difference of small
// grey copies (32 x 32, levels of 255). On a still scene this is flicker; the "Change" readout shows it, so a visitor
// can see what the stability setting does. Answers without inference (REUSED, SKIPPED) repeat a picture: not measured.

const SIDE = 32;

export class ChangeMeter {
  constructor() {
    this.canvas = document.createElement("canvas");
    this.canvas.width = this.canvas.height = SIDE;
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.previous = null; // Float32Array of SIDE * SIDE grey levels
  }

  /** Forget the last picture (a new stream, another source): the next one has nothing to differ from. */
  reset() {
    this.previous = null;
  }

  /** `image`: a drawable (ImageBitmap, canvas). Returns the mean change from the previous picture, or null. */
  measure(image) {
    this.ctx.drawImage(image, 0, 0, SIDE, SIDE);
    const rgba = this.ctx.getImageData(0, 0, SIDE, SIDE).data;
    const grey = new Float32Array(SIDE * SIDE);
    for (let i = 0; i < grey.length; i += 1) {
      grey[i] = 0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2];
    }
    const previous = this.previous;
    this.previous = grey;
    if (!previous) return null;
    let sum = 0;
    for (let i = 0; i < grey.length; i += 1) sum += Math.abs(grey[i] - previous[i]);
    return sum / grey.length;
  }
}
