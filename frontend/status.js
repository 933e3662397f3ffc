// What the visitor reads: one status pill (not started, connecting, loading, queued, live, waiting for pictures,
// reconnecting, full, stopped, error), a notice line for details and actions, a hint over the output, the
// model banner and the time left. `onPhase(phase)` lets the rest of the page follow the pill.

export const Phase = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  LOADING: "loading",
  QUEUED: "queued",
  STREAMING: "streaming",
  WAITING: "waiting",
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
    this.hint = $(ids.hint);
    this.onPhase = () => {};
    this.phase = null;
    this.deadline = null;
    this.action.addEventListener("click", () => this.onAction?.());
    setInterval(() => this.#tickTimeLeft(), 1000);
  }

  set(phase, text, hint = "") {
    const changed = phase !== this.phase;
    this.phase = phase;
    this.pill.dataset.state = phase;
    this.pill.textContent = text;
    this.hint.textContent = hint;
    this.hint.hidden = !hint;
    if (phase !== Phase.STREAMING && phase !== Phase.WAITING) this.timeLeft(null);
    if (changed) this.onPhase(phase);
  }

  idle() {
    this.set(Phase.IDLE, "Not started", "Press Start to begin.");
    this.hide();
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

  /** `limits`: the welcome's; each session ends within its time limit, which bounds the wait. */
  queued(position, length, { session_time_limit_s: limit, max_sessions: slots } = {}) {
    const wait = limit && slots ? `at most ${clock(Math.ceil(position / slots) * limit)}` : "unknown (no time limit)";
    this.set(Phase.QUEUED, `In line: ${position} of ${length}`, `Preview. Your stream starts here by itself.`);
    this.show(`All places are taken. You are number ${position} in line; estimated wait ${wait}. ` +
      "The stream starts by itself.");
  }

  streaming() {
    this.set(Phase.STREAMING, "Live");
    this.hide();
  }

  /** Started, but the source gives no pictures: nothing is generated, and the pill says so. */
  waiting(source) {
    const what = { camera: "camera", screen: "screen share" }[source] || "video";
    const why = { camera: "The camera sends no pictures yet (is it allowed and connected?).",
      screen: "The screen share sends no pictures." }[source] || "Choose or drop a video file.";
    this.set(Phase.WAITING, `Waiting for ${what}`);
    this.show(`${why} The stream goes on by itself when pictures come.`);
  }

  reconnecting(delayMs, why) {
    this.set(Phase.RECONNECTING, `Reconnecting in ${Math.ceil(delayMs / 1000)} s…`);
    this.show(why || "Connection lost. Reconnecting…");
  }

  full(text, delayMs) {
    this.set(Phase.FULL, "Server full");
    this.show(`${text} (next try in ${Math.ceil(delayMs / 1000)} s)`);
  }

  ended(text, actionLabel = null, onAction = null) {
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

  /** What the server says about its model (`model.notice`: the shipped miniature, random weights), or nothing. */
  modelNotice({ notice, is_random: isRandom }) {
    if (notice) this.banner.textContent = notice;
    this.banner.hidden = !notice && !isRandom;
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
