// A wait the page shows in seconds (next reconnect, next try at a full server, time left in the session): rendered
// when it starts and four times a second after, so the number on screen is never a second stale and always counts.

const TICK_MS = 250;

/** 75 -> "1:15". */
export function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export class Countdown {
  /** `render(seconds)`: the whole seconds left (rounded up; 0 at the end, the last call). */
  constructor(render = () => {}) {
    this.render = render;
    this.timer = null;
  }

  /** Count `ms` down; `render` replaces the constructor's for this wait. */
  start(ms, render = this.render) {
    this.stop();
    this.render = render;
    const end = performance.now() + ms;
    const tick = () => {
      const left = Math.max(0, Math.ceil((end - performance.now()) / 1000));
      if (!left) this.stop();
      this.render(left);
    };
    this.timer = setInterval(tick, TICK_MS);
    tick();
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}
