// The readout visitors asked for: input FPS, output FPS, end-to-end latency and the server's share of it.
// FPS counts events in a sliding window; latencies are medians of the last few frames. Answers the server took from
// its cache (REUSED: same input and parameters, no inference, ~0 ms) are counted apart, never as output or latency.
// While nothing streams (not started, queued, reconnecting) every readout is blank: no stale number stays up.

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
  /** `fields`: elements to write numbers into: {inFps, outFps, cached, latency, server}. */
  constructor(fields) {
    this.fields = fields;
    this.framesOut = 0;
    this.reset();
    this.blank();
    this.timer = setInterval(() => this.render(), 500);
  }

  frameSent() {
    this.input.tick(performance.now());
  }

  /** An output frame: `clientTs` is performance.now() when its input left, `serverMs` the server's own time. */
  frameReceived({ clientTs, serverMs, reused }) {
    const now = performance.now();
    if (reused) return this.cached.tick(now);
    this.output.tick(now);
    this.framesOut += 1;
    if (clientTs == null) return;
    this.#keep(this.latencies, now - clientTs);
    if (serverMs != null) this.#keep(this.serverShares, serverMs);
  }

  /** Start counting afresh and show numbers. */
  reset() {
    this.blanked = false;
    this.input = new Rate();
    this.output = new Rate();
    this.cached = new Rate();
    this.latencies = [];
    this.serverShares = [];
    this.render();
  }

  /** Show dashes until the next reset. */
  blank() {
    this.blanked = true;
    this.render();
  }

  snapshot() {
    const now = performance.now();
    return {
      inFps: this.input.perSecond(now),
      outFps: this.output.perSecond(now),
      cachedFps: this.cached.perSecond(now),
      latencyMs: median(this.latencies),
      serverMs: median(this.serverShares),
      framesOut: this.framesOut,
    };
  }

  render() {
    const s = this.snapshot();
    const f = this.fields;
    const dash = "–";
    f.inFps.textContent = this.blanked ? dash : s.inFps.toFixed(1);
    f.outFps.textContent = this.blanked ? dash : s.outFps.toFixed(1);
    f.cached.textContent = this.blanked || !s.cachedFps ? "" : `+ ${s.cachedFps.toFixed(1)} from cache`;
    f.latency.textContent = this.blanked || s.latencyMs == null ? dash : `${Math.round(s.latencyMs)} ms`;
    if (this.blanked || s.serverMs == null || s.latencyMs == null) {
      f.server.textContent = dash;
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
