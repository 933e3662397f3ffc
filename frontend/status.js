// What the visitor reads: one status pill (connecting, loading, queued, streaming, reconnecting, full, error),
// a notice line for details and actions, the random-weights banner and the time left.

export const Phase = Object.freeze({
  CONNECTING: "connecting",
  LOADING: "loading",
  QUEUED: "queued",
  STREAMING: "streaming",
  RECONNECTING: "reconnecting",
  FULL: "full",
  ENDED: "ended",
  ERROR: "error",
});

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export class Status {
  constructor(ids) {
    const $ = (id) => document.getElementById(id);
    this.pill = $(ids.pill);
    this.notice = $(ids.notice);
    this.text = $(ids.noticeText);
    this.progress = $(ids.progress);
    this.action = $(ids.action);
    this.banner = $(ids.banner);
    this.timeLeftEl = $(ids.timeLeft);
    this.phase = null;
    this.deadline = null;
    this.action.addEventListener("click", () => this.onAction?.());
    setInterval(() => this.#tickTimeLeft(), 1000);
  }

  set(phase, text) {
    this.phase = phase;
    this.pill.dataset.state = phase;
    this.pill.textContent = text;
    if (phase !== Phase.STREAMING) this.timeLeft(null);
  }

  connecting() {
    this.set(Phase.CONNECTING, "Connecting…");
  }

  loading({ stage, progress, error }) {
    if (stage === "failed") return this.error(`The model could not be loaded: ${error || "unknown error"}`);
    this.set(Phase.LOADING, `Loading model… ${Math.round((progress || 0) * 100)}%`);
    this.show(`The model is ${stage.replace("_", " ")}. This page starts by itself when it is ready.`,
      { progress: progress || 0 });
  }

  queued(position, length) {
    this.set(Phase.QUEUED, `In line: ${position} of ${length}`);
    this.show(`All places are taken. You are number ${position} in line; the stream starts by itself.`);
  }

  streaming() {
    this.set(Phase.STREAMING, "Live");
    this.hide();
  }

  reconnecting(delayMs, why) {
    this.set(Phase.RECONNECTING, `Reconnecting in ${Math.ceil(delayMs / 1000)} s…`);
    this.show(why || "Connection lost. Reconnecting…");
  }

  full(text, delayMs) {
    this.set(Phase.FULL, "Server full");
    this.show(`${text} (next try in ${Math.ceil(delayMs / 1000)} s)`);
  }

  ended(text, actionLabel, onAction) {
    this.set(Phase.ENDED, "Stopped");
    this.show(text, { action: actionLabel, onAction });
  }

  error(text, actionLabel, onAction) {
    this.set(Phase.ERROR, "Error");
    this.show(text, { action: actionLabel, onAction });
  }

  /** A passing message that leaves the pill as it is (e.g. a refused parameter). */
  flash(text, ms = 4000) {
    this.show(text);
    clearTimeout(this.flashTimer);
    this.flashTimer = setTimeout(() => this.phase === Phase.STREAMING && this.hide(), ms);
  }

  show(text, { progress = null, action = null, onAction = null } = {}) {
    this.notice.hidden = false;
    this.text.textContent = text;
    this.progress.hidden = progress == null;
    if (progress != null) this.progress.value = progress;
    this.action.hidden = !action;
    this.action.textContent = action || "";
    this.onAction = onAction;
  }

  hide() {
    this.notice.hidden = true;
  }

  randomWeights(isRandom) {
    this.banner.hidden = !isRandom;
  }

  timeLeft(seconds) {
    this.deadline = seconds == null || seconds <= 0 ? null : performance.now() + seconds * 1000;
    this.#tickTimeLeft();
  }

  #tickTimeLeft() {
    if (this.deadline == null) {
      this.timeLeftEl.textContent = "";
      return;
    }
    const left = (this.deadline - performance.now()) / 1000;
    this.timeLeftEl.textContent = `Time left in this session: ${clock(left)}`;
    this.timeLeftEl.classList.toggle("soon", left < 30);
  }
}
