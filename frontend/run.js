// Start and Stop, and a truthful pill while started. Nothing is asked of the camera or the server before Start; Stop
// releases the camera, the server slot and the queue place. While started, the pill says "Live" only while pictures
// flow; a session the server ended because none came (idle timeout) waits quietly and rejoins when they do.

import { Reason } from "./protocol.js";
import { Phase } from "./status.js";

const CHECK_MS = 300;

export class Runner {
  constructor({ session, sources, pump, status, button }) {
    this.session = session;
    this.sources = sources;
    this.pump = pump;
    this.status = status;
    this.button = button;
    this.running = false;
    this.parked = false; // the server closed an idle session while the source had no pictures
    button.addEventListener("click", () => (this.running ? this.stop() : this.start()));
    setInterval(() => this.#check(), CHECK_MS);
  }

  start() {
    this.#setRunning(true);
    this.status.connecting();
    this.session.attempt = 0;
    this.session.start();
    this.sources.start();
  }

  /** The visitor pressed Stop. */
  stop() {
    this.#halt();
    this.status.ended("Stopped: the camera is off and your place on the server is free. Press Start to go on.");
  }

  /** The server ended the session for good (time limit, idle, abuse, ...): show why and offer to start again. */
  ended(reason, text) {
    if (reason === Reason.IDLE_TIMEOUT && this.pump.starved) {
      this.parked = true; // nothing to send anyway: no "Stopped", just wait for pictures
      this.status.waiting(this.sources.current);
      return this.status.timeLeft(null); // that session is over; a new one gets its own time
    }
    this.#halt();
    const again = () => this.start();
    if ([Reason.TIME_LIMIT, Reason.IDLE_TIMEOUT, Reason.CLIENT].includes(reason)) {
      this.status.ended(text, reason === Reason.IDLE_TIMEOUT ? "Resume" : "Start again", again);
    } else {
      this.status.error(text, "Try again", again);
    }
  }

  /** Called when the session becomes active. */
  activated() {
    this.#check(true);
  }

  #halt() {
    this.#setRunning(false);
    this.session.stop();
    this.sources.stop();
  }

  #setRunning(on) {
    this.running = on;
    this.parked = false;
    this.button.textContent = on ? "Stop" : "Start";
    this.button.setAttribute("aria-pressed", String(on));
  }

  /** While active: "Live" once the source gives pictures, "Waiting for ..." when it gives none; while parked:
   * rejoin once it does. */
  #check(force = false) {
    if (!this.running) return;
    const starved = this.pump.starved;
    if (this.parked) {
      if (starved) return;
      this.parked = false;
      this.status.connecting();
      return this.session.start();
    }
    if (!this.session.active) return;
    const phase = starved ? Phase.WAITING : this.pump.feeding ? Phase.STREAMING : null; // null: a source starting
    if (!phase || (!force && this.status.phase === phase)) return;
    if (starved) this.status.waiting(this.sources.current);
    else this.status.streaming();
  }
}
