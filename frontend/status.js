// What the visitor reads: one status pill (not started, connecting, loading, queued, live, waiting for pictures,
// reconnecting, full, stopped, error), a notice line for details and actions (notice.js), a hint over the output,
// the model banner and the time left. `onPhase(phase)` lets the rest of the page follow the pill. Every number shown
// stays true: waits count down, and a notice goes when what it says stops being so.

import { Kind, Notice } from "./notice.js";
import { Countdown, clock } from "./countdown.js";

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

export class Status {
  constructor(ids) {
    const $ = (id) => document.getElementById(id);
    this.pill = $(ids.pill);
    this.notice = new Notice({ box: $(ids.notice), text: $(ids.noticeText), progress: $(ids.progress),
      action: $(ids.action) });
    this.banner = $(ids.banner);
    this.hint = $(ids.hint);
    this.onPhase = () => {};
    this.phase = null;
    this.wait = new Countdown(); // the phase's own wait (reconnecting, server full); ends with the phase
    this.timeLeftEl = $(ids.timeLeft);
    this.timeLeftClock = new Countdown((s) => {
      this.timeLeftEl.textContent = `Time left in this session: ${clock(s)}`;
      this.timeLeftEl.classList.toggle("soon", s < 30);
    });
  }

  set(phase, text, hint = "") {
    const changed = phase !== this.phase;
    this.wait.stop();
    this.phase = phase;
    this.pill.dataset.state = phase;
    this.pill.textContent = text;
    this.hint.textContent = hint;
    this.hint.hidden = !hint;
    if (phase !== Phase.STREAMING && phase !== Phase.WAITING) this.timeLeft(null);
    if (!changed) return;
    this.notice.phaseChanged();
    this.onPhase(phase);
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
    this.set(Phase.RECONNECTING, "Reconnecting…");
    this.show(why || "Connection lost. Reconnecting…");
    this.wait.start(delayMs, (s) => (this.pill.textContent = s ? `Reconnecting in ${s} s…` : "Reconnecting…"));
  }

  full(text, delayMs) {
    this.set(Phase.FULL, "Server full");
    this.show(text);
    this.wait.start(delayMs, (s) => (this.notice.text.textContent = s ? `${text} (next try in ${s} s)` : text));
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
    this.notice.flash(text, ms, () => this.phase === Phase.STREAMING);
  }

  /** A condition that holds until the visitor acts (e.g. the camera was refused): no phase change hides it. */
  note(text) {
    this.notice.show(text, { kind: Kind.NOTE });
  }

  clearNote() {
    this.notice.clearNote();
  }

  /** A notice of the current phase, with an optional progress bar or action. */
  show(text, options = {}) {
    this.notice.show(text, options);
  }

  hide() {
    this.notice.hide();
  }

  /** What the server says about its model (`model.notice`: the shipped miniature, random weights), or nothing. */
  modelNotice({ notice, is_random: isRandom }) {
    if (notice) this.banner.textContent = notice;
    this.banner.hidden = !notice && !isRandom;
  }

  timeLeft(seconds) {
    this.timeLeftClock.stop();
    if (seconds == null || seconds <= 0) this.timeLeftEl.textContent = "";
    else this.timeLeftClock.start(seconds * 1000);
  }
}
