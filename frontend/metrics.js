// The readout visitors asked for: input FPS, output FPS, end-to-end latency and the server's share of it.
// FPS counts events in a sliding window; latencies are medians of the last few frames.

const WINDOW_MS = 2000;
const KEEP = 30;

class Rate {
  constructor() {
    this.times = [];
  }
  tick(now) {
    this.times.push(now);
    this.#trim(now);
  }
  perSecond(now) {
    this.#trim(now);
    if (this.times.length < 2) return 0;
    return (this.times.length - 1) / ((now - this.times[0]) / 1000 || 1);
  }
  #trim(now) {
    while (this.times.length && now - this.times[0] > WINDOW_MS) this.times.shift();
  }
}

function median(values) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

export class Metrics {
  /** `fields`: elements to write numbers into: {inFps, outFps, latency, server}. */
  constructor(fields) {
    this.fields = fields;
    this.input = new Rate();
    this.output = new Rate();
    this.latencies = [];
    this.serverShares = [];
    this.framesOut = 0;
    this.timer = setInterval(() => this.render(), 500);
  }

  frameSent() {
    this.input.tick(performance.now());
  }

  /** `sentAt`: performance.now() when the input frame left; `serverMs`: the server's own time for it, if known. */
  frameReceived(sentAt, serverMs) {
    const now = performance.now();
    this.output.tick(now);
    this.framesOut += 1;
    if (sentAt == null) return;
    this.#keep(this.latencies, now - sentAt);
    if (serverMs != null) this.#keep(this.serverShares, serverMs);
  }

  reset() {
    this.input = new Rate();
    this.output = new Rate();
    this.latencies = [];
    this.serverShares = [];
    this.render();
  }

  snapshot() {
    const now = performance.now();
    return {
      inFps: this.input.perSecond(now),
      outFps: this.output.perSecond(now),
      latencyMs: median(this.latencies),
      serverMs: median(this.serverShares),
      framesOut: this.framesOut,
    };
  }

  render() {
    const s = this.snapshot();
    const f = this.fields;
    f.inFps.textContent = s.inFps.toFixed(1);
    f.outFps.textContent = s.outFps.toFixed(1);
    f.latency.textContent = s.latencyMs == null ? "–" : `${Math.round(s.latencyMs)} ms`;
    if (s.serverMs == null || s.latencyMs == null) {
      f.server.textContent = "–";
    } else {
      const share = Math.min(100, (100 * s.serverMs) / Math.max(1, s.latencyMs));
      f.server.textContent = `${Math.round(s.serverMs)} ms (${Math.round(share)}%)`;
    }
  }

  #keep(list, value) {
    list.push(value);
    if (list.length > KEEP) list.shift();
  }
}
