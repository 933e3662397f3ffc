// The readout visitors asked for: input FPS, output FPS, end-to-end latency and the server's share of it, skipped
// frames, and how much the picture changes. FPS counts events in a sliding window; latencies and changes are medians
// of the frames of the last few seconds. Answers without inference are never output or latency: REUSED (same input
// and parameters, from the server's cache) and SKIPPED (an input nearly the same as the last generated one: its
// picture again) are counted apart, and when they are all that comes the output reads "unchanged". While nothing
// streams (not started, queued, reconnecting) every readout is blank; while waiting for video the counts start
// afresh: no stale number stays up.

const WINDOW_MS = 2000;
const LATENCY_WINDOW_MS = 5000; // latencies of older frames no longer describe the stream
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
    if (this.times.length < 2) return this.times.length / (WINDOW_MS / 1000); // one in the window: its average
    return (this.times.length - 1) / ((now - this.times[0]) / 1000 || 1);
  }
  count(now) {
    this.#trim(now);
    return this.times.length;
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
  /** `fields`: elements to write into: {inFps, outFps, outUnit, latency, server, skipped, change}. */
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
  frameReceived({ clientTs, serverMs, reused, skipped }) {
    const now = performance.now();
    if (reused) return this.cached.tick(now);
    if (skipped) return this.skipped.tick(now);
    this.output.tick(now);
    this.framesOut += 1;
    if (clientTs == null || this.waiting) return; // a late answer to a picture from before the wait
    this.recent.push({ at: now, latencyMs: now - clientTs, serverMs });
    if (this.recent.length > KEEP) this.recent.shift();
  }

  /** Start counting afresh and show numbers; `waiting`: the source gives no pictures, so no latency to show. */
  reset(waiting = false) {
    this.blanked = false;
    this.waiting = waiting;
    this.input = new Rate();
    this.output = new Rate();
    this.cached = new Rate();
    this.skipped = new Rate();
    this.recent = []; // {at, latencyMs, serverMs} of the latest generated frames
    this.changes = []; // {at, value} of the latest generated frames: mean change from the picture before (change.js)
    this.render();
  }

  /** A generated picture differs from the one before by `value` (mean grey levels of a small copy). */
  changed(value) {
    this.changes.push({ at: performance.now(), value });
    if (this.changes.length > KEEP) this.changes.shift();
  }

  /** Show dashes until the next reset. */
  blank() {
    this.blanked = true;
    this.render();
  }

  snapshot() {
    const now = performance.now();
    const recent = this.recent.filter((f) => now - f.at <= LATENCY_WINDOW_MS);
    return {
      inFps: this.input.perSecond(now),
      outFps: this.output.perSecond(now),
      cachedFps: this.cached.perSecond(now),
      cachedRecently: this.cached.count(now) + this.skipped.count(now) > 0,
      skippedFps: this.skipped.perSecond(now),
      change: median(this.changes.filter((c) => now - c.at <= LATENCY_WINDOW_MS).map((c) => c.value)),
      latencyMs: median(recent.map((f) => f.latencyMs)),
      serverMs: median(recent.filter((f) => f.serverMs != null).map((f) => f.serverMs)),
      framesOut: this.framesOut,
    };
  }

  render() {
    const s = this.snapshot();
    const f = this.fields;
    const dash = "–";
    const unchanged = !this.blanked && !s.outFps && s.cachedRecently; // the picture shown is current, from cache
    f.inFps.textContent = this.blanked ? dash : s.inFps.toFixed(1);
    f.outFps.textContent = this.blanked ? dash : unchanged ? "unchanged" : s.outFps.toFixed(1);
    f.outUnit.hidden = unchanged;
    f.latency.textContent = this.blanked || s.latencyMs == null ? dash : `${Math.round(s.latencyMs)} ms`;
    f.skipped.textContent = this.blanked ? dash : s.skippedFps.toFixed(1);
    f.change.textContent = this.blanked || s.change == null ? dash : s.change.toFixed(1);
    if (this.blanked || s.serverMs == null || s.latencyMs == null) {
      f.server.textContent = dash;
    } else {
      const share = Math.min(100, (100 * s.serverMs) / Math.max(1, s.latencyMs));
      f.server.textContent = `${Math.round(s.serverMs)} ms (${Math.round(share)}%)`;
    }
  }
}
